# The shapes dataset (SPEC §5): rendering and detector, caption text encoder, HDF5 file
# and loader.
target_sources(rehyat PRIVATE shapes.cpp text_encoder.cpp shapes_dataset.cpp)
