# The shapes dataset: rendering, detector, text encoder, HDF5 file and loader.
rehyat_test(test_shapes data/test_shapes.cpp)
