# Teacher activation cache: the C++ round-trip, resume and corruption cases, and the same
# files read back with h5py (the Python test runs the C++ binary's WritesFilesForPython
# case to get them, so it needs no CLI).
rehyat_test(test_activation_cache data/test_activation_cache.cpp)

add_test(NAME activation_cache_py
         COMMAND python3 -m pytest -q -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/../tools/test_activation_cache_py.py)
set_tests_properties(activation_cache_py PROPERTIES
                     ENVIRONMENT "REHYAT_CACHE_TEST_BIN=$<TARGET_FILE:test_activation_cache>;PYTHONDONTWRITEBYTECODE=1")
