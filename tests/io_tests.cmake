# File formats and the CLI: safetensors, configs and HDF5 helpers (test_io), and the
# `rehyat` binary driven from Python against the reference safetensors/numpy readers
# (cli_py). Included from tests/CMakeLists.txt, which defines rehyat_test().
rehyat_test(test_io core/test_safetensors.cpp core/test_config.cpp data/test_hdf5_file.cpp)

add_test(NAME cli_py COMMAND python3 -m pytest -q -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/tools/test_cli.py)
set_tests_properties(cli_py PROPERTIES ENVIRONMENT "REHYAT_BIN=$<TARGET_FILE:rehyat_cli>;PYTHONDONTWRITEBYTECODE=1")

# `rehyat forward` against an independent numpy Wan2.1 (tests/tools/wan_numpy.py):
# velocities and finite-difference gradients; CUDA cases run when a GPU is present.
add_test(NAME forward_parity_py COMMAND python3 -m pytest -q -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/tools/test_forward.py)
set_tests_properties(forward_parity_py PROPERTIES ENVIRONMENT "REHYAT_BIN=$<TARGET_FILE:rehyat_cli>;PYTHONDONTWRITEBYTECODE=1" TIMEOUT 900)

# `rehyat forward` with ReHyAt attention (rehyat causal/non-causal, linear, uniform_hybrid)
# against an independent numpy model (tests/tools/hybrid_numpy.py) and its finite differences.
add_test(NAME forward_hybrid_py COMMAND python3 -m pytest -q -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/tools/test_forward_hybrid.py)
set_tests_properties(forward_hybrid_py PROPERTIES ENVIRONMENT "REHYAT_BIN=$<TARGET_FILE:rehyat_cli>;PYTHONDONTWRITEBYTECODE=1" TIMEOUT 900)
