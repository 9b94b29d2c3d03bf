# The model description in checkpoint metadata and the safetensors export (export/*.h).
target_sources(rehyat PRIVATE model_metadata.cpp export_safetensors.cpp)
