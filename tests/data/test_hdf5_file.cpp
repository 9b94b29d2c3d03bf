// HDF5 helpers: a file written here with the C API (nested groups, chunking and
// compression, f16/bf16 custom floats, a scalar, a string, a hard link, a user block)
// is listed with the right paths, shapes, dtypes and layout; non-HDF5 files are told
// apart by signature and fail with the file named and nothing printed by HDF5.
#include "data/hdf5_file.h"

#include <gtest/gtest.h>

#include <numeric>

#include "temp_dir.h"

namespace rehyat {
namespace {

using testing::error_message;
using testing::expect_contains;
using testing::TempDir;
using testing::write_file;

// A 16-bit float type the way h5py builds float16 (and bf16 with 8 exponent bits).
Hdf5Id half_float_type(size_t exponent_bits, size_t mantissa_bits, size_t exponent_bias) {
  Hdf5Id type(H5Tcopy(H5T_IEEE_F32LE));
  H5Tset_fields(type.get(), 15, mantissa_bits, exponent_bits, 0, mantissa_bits);
  H5Tset_size(type.get(), 2);
  H5Tset_ebias(type.get(), exponent_bias);
  return type;
}

void write_dataset(hid_t parent, const char* name, hid_t type, const std::vector<hsize_t>& dims, const void* data,
                   hid_t create_plist = H5P_DEFAULT) {
  Hdf5Id space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(int(dims.size()), dims.data(), nullptr));
  Hdf5Id dataset(H5Dcreate2(parent, name, type, space.get(), H5P_DEFAULT, create_plist, H5P_DEFAULT));
  ASSERT_TRUE(dataset.valid()) << name;
  ASSERT_GE(H5Dwrite(dataset.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0) << name;
}

void write_sample_file(const std::string& path, hsize_t user_block_bytes = 0) {
  Hdf5Id create_plist(H5Pcreate(H5P_FILE_CREATE));
  if (user_block_bytes) H5Pset_userblock(create_plist.get(), user_block_bytes);
  Hdf5Id file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, create_plist.get(), H5P_DEFAULT));
  ASSERT_TRUE(file.valid());

  std::vector<float> x(12);
  std::iota(x.begin(), x.end(), 0.0f);
  write_dataset(file.get(), "x", H5T_NATIVE_FLOAT, {3, 4}, x.data());

  Hdf5Id group(H5Gcreate2(file.get(), "group", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  Hdf5Id sub(H5Gcreate2(group.get(), "sub", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  std::vector<int64_t> y(100, 7);
  Hdf5Id chunked(H5Pcreate(H5P_DATASET_CREATE));
  const hsize_t chunk = 25;
  H5Pset_chunk(chunked.get(), 1, &chunk);
  H5Pset_shuffle(chunked.get());
  H5Pset_deflate(chunked.get(), 4);
  write_dataset(sub.get(), "y", H5T_NATIVE_INT64, {100}, y.data(), chunked.get());

  const uint16_t half_bits[4] = {0x3c00, 0x4000, 0x4200, 0x4400};  // 1, 2, 3, 4 in f16
  write_dataset(group.get(), "h16", half_float_type(5, 10, 15).get(), {2, 2}, half_bits);
  const uint16_t bf16_bits[2] = {0x3f80, 0x4000};  // 1, 2 in bf16
  write_dataset(group.get(), "bf", half_float_type(8, 7, 127).get(), {2}, bf16_bits);

  const double scalar = 0.5;
  write_dataset(file.get(), "scalar", H5T_NATIVE_DOUBLE, {}, &scalar);
  const int32_t ids[3] = {1, 2, 3};
  write_dataset(file.get(), "ids", H5T_NATIVE_INT32, {3}, ids);
  const uint8_t bytes[4] = {1, 2, 3, 4};
  write_dataset(file.get(), "bytes", H5T_NATIVE_UINT8, {4}, bytes);
  Hdf5Id text_type(H5Tcopy(H5T_C_S1));
  H5Tset_size(text_type.get(), 8);
  const char text[2][8] = {"caption", "prompt"};
  write_dataset(file.get(), "text", text_type.get(), {2}, text);

  ASSERT_GE(H5Lcreate_hard(file.get(), "x", file.get(), "group/alias_of_x", H5P_DEFAULT, H5P_DEFAULT), 0);
}

const Hdf5DatasetInfo* find(const std::vector<Hdf5DatasetInfo>& datasets, const std::string& path) {
  for (const Hdf5DatasetInfo& d : datasets)
    if (d.path == path) return &d;
  return nullptr;
}

TEST(Hdf5File, ListsEveryDatasetWithShapeTypeAndLayout) {
  TempDir dir;
  const std::string path = dir.file("sample.h5");
  write_sample_file(path);
  ASSERT_TRUE(is_hdf5_file(path));

  std::vector<Hdf5DatasetInfo> datasets = list_hdf5_datasets(path);
  EXPECT_EQ(datasets.size(), 8u);  // the hard link to /x is not a second dataset

  const Hdf5DatasetInfo* x = find(datasets, "/x");
  if (!x) x = find(datasets, "/group/alias_of_x");  // whichever name the visit reached first
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->shape, (Shape{3, 4}));
  EXPECT_EQ(x->dtype, DType::F32);
  EXPECT_EQ(x->type_name, "f32");
  EXPECT_EQ(x->element_bytes, 4u);
  EXPECT_EQ(x->logical_bytes(), 48u);
  EXPECT_EQ(x->storage_bytes, 48u);
  EXPECT_TRUE(x->chunk_shape.empty());
  EXPECT_TRUE(x->filters.empty());

  const Hdf5DatasetInfo* y = find(datasets, "/group/sub/y");
  ASSERT_NE(y, nullptr);
  EXPECT_EQ(y->dtype, DType::I64);
  EXPECT_EQ(y->shape, (Shape{100}));
  EXPECT_EQ(y->chunk_shape, (Shape{25}));
  EXPECT_EQ(y->filters, (std::vector<std::string>{"shuffle", "gzip(4)"}));
  EXPECT_GT(y->storage_bytes, 0u);
  EXPECT_LT(y->storage_bytes, y->logical_bytes());  // 100 equal values compress

  struct Expected {
    std::string path;
    Shape shape;
    std::optional<DType> dtype;
    std::string type_name;
  };
  for (const Expected& e : std::vector<Expected>{{"/group/h16", {2, 2}, DType::F16, "f16"},
                                                 {"/group/bf", {2}, DType::BF16, "bf16"},
                                                 {"/scalar", {}, DType::F64, "f64"},
                                                 {"/ids", {3}, DType::I32, "i32"},
                                                 {"/bytes", {4}, std::nullopt, "u8"},
                                                 {"/text", {2}, std::nullopt, "string"}}) {
    SCOPED_TRACE(e.path);
    const Hdf5DatasetInfo* d = find(datasets, e.path);
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(d->shape, e.shape);
    EXPECT_EQ(d->dtype, e.dtype);
    EXPECT_EQ(d->type_name, e.type_name);
  }
}

TEST(Hdf5File, SignatureAfterAUserBlockIsFound) {
  TempDir dir;
  const std::string path = dir.file("with_user_block.h5");
  write_sample_file(path, 1024);
  EXPECT_TRUE(is_hdf5_file(path));
  EXPECT_EQ(list_hdf5_datasets(path).size(), 8u);
}

TEST(Hdf5File, NonHdf5FilesFailNamingTheFileWithoutHdf5Noise) {
  TempDir dir;
  const std::string path = dir.file("not_hdf5.h5");
  write_file(path, std::string(2048, 'x'));
  EXPECT_FALSE(is_hdf5_file(path));
  EXPECT_FALSE(is_hdf5_file(dir.file("absent.h5")));

  ::testing::internal::CaptureStderr();
  std::string message = error_message([&] { list_hdf5_datasets(path); });
  std::string printed = ::testing::internal::GetCapturedStderr();
  expect_contains(message, {path, "cannot open as HDF5", "signature"});
  EXPECT_EQ(printed, "");
  expect_contains(error_message([&] { list_hdf5_datasets(dir.file("absent.h5")); }), {dir.file("absent.h5")});
}

}  // namespace
}  // namespace rehyat
