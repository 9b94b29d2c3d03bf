# Attention kernel tests (rehyat_test from tests/CMakeLists.txt).
rehyat_test(test_attention attention/test_softmax_attention.cpp)
