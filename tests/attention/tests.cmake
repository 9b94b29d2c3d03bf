# Attention kernel tests (rehyat_test from tests/CMakeLists.txt).
rehyat_test(test_attention attention/test_softmax_attention.cpp)
rehyat_test(test_hybrid_attention attention/test_hybrid_attention.cpp)
# Analytic FLOP counter (attention/flops.h).
rehyat_test(test_flops attention/test_flops.cpp)
# `rehyat flops --json` against an independent Python count (tests/tools/test_flops_cli.py).
add_test(NAME flops_cli_py COMMAND python3 -m pytest -q -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/../tools/test_flops_cli.py)
set_tests_properties(flops_cli_py PROPERTIES ENVIRONMENT "REHYAT_BIN=$<TARGET_FILE:rehyat_cli>;PYTHONDONTWRITEBYTECODE=1")
