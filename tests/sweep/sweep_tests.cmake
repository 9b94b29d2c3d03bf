# The sweep runner: sweep files (parsing, errors, grid expansion, names), the
# forbidden-key check, the results writers on synthetic run folders, the hard links.
rehyat_test(test_sweep sweep/test_sweep.cpp)
target_compile_definitions(test_sweep PRIVATE REHYAT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")

# `rehyat sweep` end to end on the CPU: a tiny two-variant sweep sharing one teacher, its
# tables and plots, the skip on a second run, a failing variant beside a finishing one.
add_test(NAME sweep_py COMMAND python3 -m pytest -q -s -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/../tools/test_sweep.py)
set_tests_properties(sweep_py PROPERTIES
  ENVIRONMENT "REHYAT_BIN=$<TARGET_FILE:rehyat_cli>;PYTHONDONTWRITEBYTECODE=1;REHYAT_PNG=$<BOOL:${PNG_FOUND}>"
  TIMEOUT 900)

# `rehyat sweep` on a compute-sweep file (sweep/compute_sweep.h) on the CPU: a tiny FLOPs
# and latency sweep, its tables against `rehyat flops`, the device guard, bad files.
add_test(NAME compute_sweep_py COMMAND python3 -m pytest -q -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/../tools/test_compute_sweep.py)
set_tests_properties(compute_sweep_py PROPERTIES
  ENVIRONMENT "REHYAT_BIN=$<TARGET_FILE:rehyat_cli>;PYTHONDONTWRITEBYTECODE=1;REHYAT_PNG=$<BOOL:${PNG_FOUND}>"
  TIMEOUT 300)
