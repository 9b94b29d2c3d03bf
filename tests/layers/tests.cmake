# Layer and model tests (rehyat_test from tests/CMakeLists.txt).
rehyat_test(test_layers layers/test_layer_grads.cpp layers/test_layer_math.cpp layers/test_wan_model.cpp
            layers/test_wan_checkpoint.cpp layers/test_hybrid_core.cpp)
target_compile_definitions(test_layers PRIVATE REHYAT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
# Recurrent (chunk-by-chunk) causal ReHyAt inference, attention level and whole model.
rehyat_test(test_recurrent layers/test_recurrent.cpp)
target_compile_definitions(test_recurrent PRIVATE REHYAT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
