# Layer and model tests (rehyat_test from tests/CMakeLists.txt).
