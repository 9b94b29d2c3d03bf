# Multi-GPU plumbing on the CPU (issue 7): environment detection, Slurm nodelists, the TCP
# and file rendezvous (threads and forked ranks, timeouts, dead and hung peers), the
# collective watchdog with fake collectives, the one-rank communicator.
rehyat_test(test_dist train/test_dist.cpp)

# `rehyat launch` and `rehyat dist-check` end to end on the CPU: three ranks, a dying rank,
# a hung rank, signals, CUDA_VISIBLE_DEVICES, the file rendezvous, no process left behind.
add_test(NAME dist_py COMMAND python3 -m pytest -q -s -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/../tools/test_dist.py)
set_tests_properties(dist_py PROPERTIES ENVIRONMENT "REHYAT_BIN=$<TARGET_FILE:rehyat_cli>;PYTHONDONTWRITEBYTECODE=1"
                                        TIMEOUT 300)

# Data-parallel teacher training and block-parallel distillation on CPU ranks (the host
# backend): 2 ranks track 1 process, ZeRO-1 is bit-identical, a 2-rank checkpoint resumes
# on 1 rank, a killed rank stops the training.
add_test(NAME data_parallel_py
         COMMAND python3 -m pytest -q -s -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/../tools/test_data_parallel.py)
set_tests_properties(data_parallel_py PROPERTIES ENVIRONMENT "REHYAT_BIN=$<TARGET_FILE:rehyat_cli>;PYTHONDONTWRITEBYTECODE=1"
                                                 TIMEOUT 1200)
