# The ONNX export of the recurrent step function (export/onnx_export.h). Optional: built
# when the ONNX and protobuf C++ libraries are found (Debian: libonnx-dev, libprotobuf-dev;
# tools/install_deps.sh installs them), announced to the CLI and the tests by the public
# definition REHYAT_ONNX. Without them rehyat builds without ONNX export and its tests
# skip with a message. Found GLOBAL so the tests can link the ONNX headers too.
find_package(Protobuf QUIET GLOBAL)
if(Protobuf_FOUND)
  find_package(ONNX CONFIG QUIET GLOBAL)
endif()
if(Protobuf_FOUND AND ONNX_FOUND AND TARGET onnx)
  target_sources(rehyat PRIVATE onnx_graph.cpp onnx_export.cpp)
  target_compile_definitions(rehyat PUBLIC REHYAT_ONNX)
  target_link_libraries(rehyat PRIVATE onnx onnx_proto protobuf::libprotobuf)
  message(STATUS "rehyat: ONNX ${ONNX_VERSION} found: building the ONNX export")
else()
  message(STATUS "rehyat: ONNX or protobuf C++ libraries not found (libonnx-dev, libprotobuf-dev): "
                 "building without ONNX export")
endif()
