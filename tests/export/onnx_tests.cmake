# The ONNX export of the recurrent step function (export/onnx_export.h, issue 6). Included
# from tests/CMakeLists.txt, which defines rehyat_test(). Without REHYAT_ONNX (the ONNX /
# protobuf libraries missing) both tests still run and skip with a message saying why.
get_target_property(_rehyat_definitions rehyat INTERFACE_COMPILE_DEFINITIONS)
if("REHYAT_ONNX" IN_LIST _rehyat_definitions)
  set(_rehyat_onnx ON)
else()
  set(_rehyat_onnx OFF)
endif()

# The ModelProto's structure (inputs, outputs, state shapes, initializers = checkpoint keys,
# standard ops, onnx::checker, shape inference), external weights, and the errors.
rehyat_test(test_onnx_export export/test_onnx_export.cpp)
if(_rehyat_onnx)
  target_link_libraries(test_onnx_export PRIVATE onnx onnx_proto)
endif()

# onnxruntime runs the exported step chunk by chunk and matches rehyat's recurrent_forward:
# onnx_reference writes tiny models, their ONNX files and reference outputs.
set(_onnx_py_environment "PYTHONDONTWRITEBYTECODE=1")
if(_rehyat_onnx)
  add_executable(onnx_reference export/onnx_reference.cpp)
  target_link_libraries(onnx_reference PRIVATE rehyat GTest::gtest)
  target_include_directories(onnx_reference PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  list(APPEND _onnx_py_environment "REHYAT_ONNX_REFERENCE=$<TARGET_FILE:onnx_reference>")
endif()
add_test(NAME onnx_export_py
         COMMAND python3 -m pytest -q -s -rs -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/../tools/test_onnx_export.py)
set_tests_properties(onnx_export_py PROPERTIES ENVIRONMENT "${_onnx_py_environment}" TIMEOUT 600
                                               SKIP_REGULAR_EXPRESSION "rehyat was built without ONNX export")
