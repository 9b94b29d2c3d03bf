# Teacher activation cache (data/activation_cache.h); its row checksums are zlib's CRC-32,
# and zlib is already a dependency of HDF5's gzip filter.
target_sources(rehyat PRIVATE activation_cache.cpp)
find_package(ZLIB REQUIRED)
target_link_libraries(rehyat PRIVATE ZLIB::ZLIB)
