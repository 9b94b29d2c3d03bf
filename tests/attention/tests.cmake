# Attention kernel tests (rehyat_test from tests/CMakeLists.txt).
