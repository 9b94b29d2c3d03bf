// safetensors: round trips in every dtype (contiguous or not), metadata, the on-disk
// layout the reference loader requires, zero-copy views that outlive the file object,
// every malformed-header case (the error names the file and the tensor), and atomic
// saves that leave an existing file untouched on failure.
#include "core/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>

#include "temp_dir.h"

namespace rehyat {
namespace {

using testing::error_message;
using testing::expect_contains;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

constexpr DType kAllDTypes[] = {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::I64};

Tensor sample(const Shape& shape, DType dtype, uint64_t seed) {
  if (is_floating(dtype)) return Tensor::randn(shape, seed, 0, DType::F32).to(dtype);
  std::vector<double> values(size_t(shape_numel(shape)));
  for (size_t i = 0; i < values.size(); ++i) values[i] = double(i * 7919 % 1000) - 500.0;
  return Tensor::from_vector(values, shape, dtype);
}

// A file with the given header text, declared header length and zeroed data section.
std::string raw_file(const std::string& header, size_t data_bytes, uint64_t declared_header_bytes) {
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &declared_header_bytes, 8);
  return bytes + header + std::string(data_bytes, '\0');
}
std::string raw_file(const std::string& header, size_t data_bytes) {
  return raw_file(header, data_bytes, header.size());
}

TEST(Safetensors, RoundTripEveryDType) {
  TempDir dir;
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint64_t seed = 1;
  for (DType dtype : kAllDTypes) {
    tensors.emplace_back(fmt::format("matrix.{}", dtype_name(dtype)), sample({3, 5}, dtype, seed++));
    tensors.emplace_back(fmt::format("scalar.{}", dtype_name(dtype)), sample({}, dtype, seed++));
    tensors.emplace_back(fmt::format("empty.{}", dtype_name(dtype)), sample({0, 4}, dtype, seed++));
  }
  const std::string path = dir.file("all.safetensors");
  save_safetensors(path, tensors);

  SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.path(), path);
  EXPECT_EQ(file.names().size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(file.has(name));
    EXPECT_EQ(file.info(name).dtype, expected.dtype());
    EXPECT_EQ(file.info(name).shape, expected.shape());
    Tensor loaded = file.get(name);
    EXPECT_TRUE(loaded.device().is_cpu());
    EXPECT_EQ(loaded.dtype(), expected.dtype());
    EXPECT_EQ(loaded.shape(), expected.shape());
    EXPECT_EQ(loaded.to_vector(), expected.to_vector());  // bit-exact: same dtype both ways
  }
  EXPECT_FALSE(file.has("missing"));
  expect_contains(error_message([&] { file.get("missing"); }), {path, "missing"});
}

TEST(Safetensors, NonContiguousTensorsAreSavedInLogicalOrder) {
  TempDir dir;
  Tensor base = sample({4, 6}, DType::F32, 3);
  Tensor transposed = base.transpose(0, 1);                  // [6, 4]
  Tensor sliced = sample({5, 8}, DType::BF16, 4).slice(1, 2, 7);  // [5, 5]
  Tensor broadcast = sample({3, 1}, DType::I64, 5).expand({3, 4});
  ASSERT_FALSE(transposed.is_contiguous());
  ASSERT_FALSE(sliced.is_contiguous());
  const std::string path = dir.file("views.safetensors");
  save_safetensors(path, {{"transposed", transposed}, {"sliced", sliced}, {"broadcast", broadcast}});

  auto loaded = load_safetensors(path);
  ASSERT_EQ(loaded.size(), 3u);
  EXPECT_EQ(loaded["transposed"].shape(), (Shape{6, 4}));
  EXPECT_EQ(loaded["transposed"].to_vector(), transposed.to_vector());
  EXPECT_EQ(loaded["sliced"].to_vector(), sliced.to_vector());
  EXPECT_EQ(loaded["broadcast"].to_vector(), broadcast.to_vector());
}

TEST(Safetensors, CudaTensorsAreSavedFromTheDevice) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  TempDir dir;
  const std::string path = dir.file("cuda.safetensors");
  Tensor host = sample({4, 6}, DType::BF16, 11);
  Tensor on_device = host.to(Device::cuda()).transpose(0, 1);  // non-contiguous, on the GPU
  save_safetensors(path, {{"w", on_device}, {"ids", sample({5}, DType::I64, 12).to(Device::cuda())}});
  SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_TRUE(file.get("w").device().is_cpu());
  EXPECT_EQ(file.get("w").to_vector(), host.transpose(0, 1).to_vector());
  EXPECT_EQ(file.get("ids").to_vector(), sample({5}, DType::I64, 12).to_vector());
}

TEST(Safetensors, MetadataRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("meta.safetensors");
  std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "1200"}, {"note", "ünïcode \"quoted\""}};
  save_safetensors(path, {{"w", sample({2}, DType::F32, 1)}}, metadata);
  EXPECT_EQ(SafetensorsFile::open(path).metadata(), metadata);

  save_safetensors(path, {{"w", sample({2}, DType::F32, 1)}});
  EXPECT_TRUE(SafetensorsFile::open(path).metadata().empty());
}

// The reference loader rejects gaps between tensors and trailing bytes; kernels want
// every tensor aligned to its element size.
TEST(Safetensors, LayoutIsGapFreeAlignedAndPadded) {
  TempDir dir;
  const std::string path = dir.file("layout.safetensors");
  save_safetensors(path, {{"half", sample({3}, DType::F16, 1)},
                          {"single", sample({5}, DType::F32, 2)},
                          {"double", sample({1}, DType::F64, 3)},
                          {"index", sample({3}, DType::I32, 4)}});
  SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.header_bytes() % 8, 0u);
  uint64_t expected_begin = 0;
  for (const std::string& name : file.names()) {
    const SafetensorsTensorInfo& info = file.info(name);
    EXPECT_EQ(info.data_begin, expected_begin) << name;
    EXPECT_EQ(info.data_begin % dtype_size(info.dtype), 0u) << name;
    expected_begin = info.data_end;
  }
  EXPECT_EQ(file.file_bytes(), 8 + file.header_bytes() + expected_begin);
  const std::string header = read_file(path).substr(8, file.header_bytes());
  const size_t json_end = header.find_last_not_of(' ') + 1;
  EXPECT_EQ(header[json_end - 1], '}');
  EXPECT_LT(header.size() - json_end, 8u);  // padded with fewer than 8 spaces
}

TEST(Safetensors, TensorsViewTheMappingAndOutliveTheFileObject) {
  TempDir dir;
  const std::string path = dir.file("mapped.safetensors");
  Tensor original = sample({16, 16}, DType::F32, 9);
  save_safetensors(path, {{"w", original}});
  Tensor loaded;
  {
    SafetensorsFile file = SafetensorsFile::open(path);
    loaded = file.get("w");
    EXPECT_EQ(file.get("w").data_ptr(), loaded.data_ptr());  // zero copy: both view the mapping
  }
  EXPECT_EQ(loaded.to_vector(), original.to_vector());

  // Writing into a loaded tensor changes the process's copy, never the file.
  loaded.fill_(0.0);
  EXPECT_EQ(load_safetensors(path)["w"].to_vector(), original.to_vector());
}

TEST(Safetensors, MisalignedTensorsFromOtherWritersAreCopied) {
  TempDir dir;
  const std::string path = dir.file("misaligned.safetensors");
  // F16 [1] at bytes [0, 2), then F32 [2] at [2, 10): the F32 data is not 4-byte aligned.
  std::string header = R"({"h":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},)"
                       R"("f":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string bytes = raw_file(header, 10);
  const float values[2] = {1.5f, -2.25f};
  std::memcpy(bytes.data() + 8 + header.size() + 2, values, sizeof values);
  write_file(path, bytes);
  EXPECT_EQ(SafetensorsFile::open(path).get("f").to_vector(), (std::vector<double>{1.5, -2.25}));
}

struct MalformedCase {
  std::string label;  // also the file name, which every message must contain
  std::string file_bytes;
  std::vector<std::string> expected;  // substrings of the message besides the file name
};

std::vector<MalformedCase> malformed_cases() {
  const std::string ok_entry = R"("ok":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  return {
      {"short", std::string("\x05\x00\x00", 3), {"shorter than the 8-byte header length"}},
      {"header_past_end", raw_file("{}", 4, 1000), {"header length 1000", "past the end"}},
      {"not_json", raw_file("{\"a\": [1, 2", 0), {"not valid JSON", "parse_error"}},
      {"not_object", raw_file("[1, 2]", 0), {"must be a JSON object"}},
      {"entry_not_object", raw_file(R"({"bad": 3})", 0), {"'bad'", "must be an object"}},
      {"missing_dtype", raw_file(R"({"bad":{"shape":[2],"data_offsets":[0,8]}})", 8), {"'bad'", "'dtype'"}},
      {"missing_shape", raw_file(R"({"bad":{"dtype":"F32","data_offsets":[0,8]}})", 8), {"'bad'", "'shape'"}},
      {"missing_offsets", raw_file(R"({"bad":{"dtype":"F32","shape":[2]}})", 8), {"'bad'", "'data_offsets'"}},
      {"dtype_not_string", raw_file(R"({"bad":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", 8),
       {"'bad'", "'dtype' must be a string"}},
      {"shape_not_array", raw_file(R"({"bad":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8),
       {"'bad'", "'shape' must be an array"}},
      {"shape_float", raw_file(R"({"bad":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
       {"'bad'", "'shape' must be an array of integers"}},
      {"offsets_wrong_arity", raw_file(R"({"bad":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", 8),
       {"'bad'", "'data_offsets' must be [begin, end]"}},
      {"offsets_negative", raw_file(R"({"bad":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
       {"'bad'", "'data_offsets'"}},
      {"unknown_dtype", raw_file(R"({"bad":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2),
       {"'bad'", "F8_E4M3", "F32, F64, BF16, F16, I32, I64"}},
      {"lowercase_dtype", raw_file(R"({"bad":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", 8),
       {"'bad'", "unsupported dtype 'f32'"}},
      {"negative_dim", raw_file(R"({"bad":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       {"'bad'", "negative dimension"}},
      {"begin_after_end", raw_file(R"({"bad":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8),
       {"'bad'", "end before they begin"}},
      {"end_past_data", raw_file("{" + ok_entry + R"(,"bad":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 12),
       {"'bad'", "past the end of the data section"}},
      {"size_mismatch", raw_file(R"({"bad":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       {"'bad'", "hold 8 bytes", "needs 12 bytes"}},
      {"overlap", raw_file("{" + ok_entry + R"(,"bad":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       {"'ok'", "'bad'", "overlap"}},
      {"metadata_not_strings", raw_file(R"({"__metadata__":{"step":12}})", 0), {"'__metadata__'", "'step'"}},
  };
}

TEST(Safetensors, MalformedHeadersNameTheFileAndTensor) {
  TempDir dir;
  for (const MalformedCase& bad : malformed_cases()) {
    SCOPED_TRACE(bad.label);
    const std::string path = dir.file(bad.label + ".safetensors");
    write_file(path, bad.file_bytes);
    std::string message = error_message([&] { SafetensorsFile::open(path); });
    expect_contains(message, {path});
    expect_contains(message, bad.expected);
  }
}

TEST(Safetensors, OpenErrorsNameTheFile) {
  TempDir dir;
  const std::string missing = dir.file("absent.safetensors");
  expect_contains(error_message([&] { SafetensorsFile::open(missing); }), {missing, "No such file"});
  expect_contains(error_message([&] { SafetensorsFile::open(dir.path().string()); }),
                  {dir.path().string(), "not a regular file"});
  const std::string empty = dir.file("empty.safetensors");
  write_file(empty, "");
  expect_contains(error_message([&] { SafetensorsFile::open(empty); }), {empty, "0 bytes"});
}

TEST(Safetensors, FailedSaveKeepsTheExistingFileAndLeavesNoTempFile) {
  TempDir dir;
  const std::string path = dir.file("keep.safetensors");
  save_safetensors(path, {{"w", sample({4}, DType::F32, 1)}});
  const std::string before = read_file(path);

  Tensor t = sample({2}, DType::F32, 2);
  expect_contains(error_message([&] { save_safetensors(path, {{"a", t}, {"b", t}, {"a", t}}); }),
                  {path, "duplicate tensor name 'a'"});
  expect_contains(error_message([&] { save_safetensors(path, {{"a", t}, {"undefined", Tensor()}}); }),
                  {path, "'undefined'"});
  expect_contains(error_message([&] { save_safetensors(path, {{"", t}}); }), {path, "empty name"});
  expect_contains(error_message([&] { save_safetensors(path, {{"__metadata__", t}}); }), {path, "reserved"});
  EXPECT_EQ(read_file(path), before);
  EXPECT_EQ(dir.entry_count(), 1u);  // no temp file left behind

  const std::string unwritable = dir.file("no_such_dir/out.safetensors");
  expect_contains(error_message([&] { save_safetensors(unwritable, {{"a", t}}); }), {unwritable});
}

TEST(Safetensors, SaveReplacesAnExistingFileAtomically) {
  TempDir dir;
  const std::string path = dir.file("replace.safetensors");
  save_safetensors(path, {{"old", sample({4}, DType::F32, 1)}});
  save_safetensors(path, {{"new", sample({2}, DType::BF16, 2)}});
  SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"new"}));
  EXPECT_EQ(dir.entry_count(), 1u);
}

}  // namespace
}  // namespace rehyat
