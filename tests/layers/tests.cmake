# Layer and model tests (rehyat_test from tests/CMakeLists.txt).
rehyat_test(test_layers layers/test_layer_grads.cpp layers/test_layer_math.cpp layers/test_wan_model.cpp
            layers/test_wan_checkpoint.cpp)
target_compile_definitions(test_layers PRIVATE REHYAT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
