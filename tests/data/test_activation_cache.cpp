// Activation cache: f32 rows come back bit-exact and bf16 rows as the bf16 rounding of
// what was written; metadata round-trips; a cache written in two sessions (3 entries, then
// the other 2 after reopening) reads like one written at once, and entries appended by a
// writer that died without closing the file are all there; reopening with other
// parameters fails naming the attribute; a flipped byte (found through the chunk index) is
// caught by the checksum with the block and entry named; a truncated file fails naming
// the file; gzip changes nothing but the size. The last case writes the files that
// tests/tools/test_activation_cache_py.py reads with h5py.
#include "data/activation_cache.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <tuple>

#include "temp_dir.h"

namespace rehyat::data {
namespace {

using testing::error_message;
using testing::expect_contains;
using testing::TempDir;

constexpr int64_t kTokens = 6, kDim = 10;

// Deterministic activations for (block, entry): [kTokens, kDim] f32 each.
std::pair<Tensor, Tensor> activations(int block, int64_t entry) {
  const uint64_t seed = uint64_t(1000 * block + entry);
  return {Tensor::randn({kTokens, kDim}, seed, 0), Tensor::randn({kTokens, kDim}, seed, 1u << 20, DType::F32,
                                                                 Device::cpu(), 0.5, 3.0)};
}

std::map<int, std::pair<Tensor, Tensor>> entry_activations(const std::vector<int>& blocks, int64_t entry) {
  std::map<int, std::pair<Tensor, Tensor>> out;
  for (int block : blocks) out[block] = activations(block, entry);
  return out;
}

CacheEntryMeta entry_meta(int64_t entry) {
  return {7 + entry, 0xfedcba9876543210ull + uint64_t(entry), 3 * entry, 0.9 - 0.125 * double(entry)};
}

void write_entries(ActivationCacheWriter& writer, const std::vector<int>& blocks, int64_t first, int64_t end) {
  for (int64_t e = first; e < end; ++e) writer.append(entry_meta(e), entry_activations(blocks, e));
}

void write_cache(const std::string& path, const std::vector<int>& blocks, int64_t entries, DType dtype, int gzip) {
  ActivationCacheWriter writer(path, blocks, kTokens, kDim, entries, dtype, "hash-abc", gzip);
  write_entries(writer, blocks, 0, entries);
}

void expect_equal(const Tensor& actual, const Tensor& expected) {
  ASSERT_EQ(actual.dtype(), DType::F32);
  ASSERT_EQ(actual.shape(), expected.shape());
  EXPECT_EQ(actual.to_vector(), expected.to_vector());
}

// File offset of `entry`'s chunk of `dataset` (uncompressed: the row's bytes start here).
haddr_t chunk_address(const std::string& path, const std::string& dataset, int64_t entry) {
  Hdf5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  Hdf5Id ds(H5Dopen2(file.get(), dataset.c_str(), H5P_DEFAULT));
  const hsize_t offset[3] = {hsize_t(entry), 0, 0};
  unsigned filter_mask = 0;
  haddr_t address = HADDR_UNDEF;
  hsize_t bytes = 0;
  EXPECT_GE(H5Dget_chunk_info_by_coord(ds.get(), offset, &filter_mask, &address, &bytes), 0);
  return address;
}

haddr_t contiguous_address(const std::string& path, const std::string& dataset) {
  Hdf5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  Hdf5Id ds(H5Dopen2(file.get(), dataset.c_str(), H5P_DEFAULT));
  return H5Dget_offset(ds.get());
}

void flip_byte(const std::string& path, haddr_t offset) {
  std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
  file.seekg(std::streamoff(offset));
  char byte = 0;
  file.read(&byte, 1);
  byte = char(byte ^ 0x5a);
  file.seekp(std::streamoff(offset));
  file.write(&byte, 1);
}

TEST(ActivationCache, F32RoundTripIsExact) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  write_cache(path, {4, 1}, 3, DType::F32, 0);

  ActivationCacheReader reader = ActivationCacheReader::open(path);
  EXPECT_EQ(reader.entries(), 3);
  EXPECT_EQ(reader.blocks(), (std::vector<int>{1, 4}));
  EXPECT_EQ(reader.model_hash(), "hash-abc");
  EXPECT_EQ(reader.tokens(), kTokens);
  EXPECT_EQ(reader.dim(), kDim);
  EXPECT_EQ(reader.store_dtype(), DType::F32);
  for (int block : {1, 4})
    for (int64_t e = 0; e < 3; ++e) {
      auto [in, out] = reader.read(block, e);
      expect_equal(in, activations(block, e).first);
      expect_equal(out, activations(block, e).second);
    }
  EXPECT_TRUE(reader.verify().ok());
  EXPECT_EQ(reader.verify().entries_checked, 3);
}

TEST(ActivationCache, Bf16RoundTripIsTheBf16Rounding) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  write_cache(path, {0}, 2, DType::BF16, 0);

  ActivationCacheReader reader = ActivationCacheReader::open(path);
  EXPECT_EQ(reader.store_dtype(), DType::BF16);
  for (int64_t e = 0; e < 2; ++e) {
    auto [in, out] = reader.read(0, e);
    for (auto [actual, written] : {std::pair{in, activations(0, e).first}, std::pair{out, activations(0, e).second}}) {
      expect_equal(actual, written.to(DType::BF16).to(DType::F32));
      const std::vector<double> a = actual.to_vector(), w = written.to_vector();
      for (size_t i = 0; i < a.size(); ++i) EXPECT_LE(std::abs(a[i] - w[i]), std::ldexp(std::abs(w[i]), -8)) << i;
    }
  }
  // The stored type is the 16-bit float the HDF5 helpers recognise as bf16.
  for (const Hdf5DatasetInfo& info : list_hdf5_datasets(path)) {
    if (info.path == "/blocks/0/attn_in") {
      EXPECT_EQ(info.dtype, DType::BF16);
    }
  }
}

TEST(ActivationCache, MetadataRoundTrips) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  write_cache(path, {2}, 4, DType::F32, 0);
  ActivationCacheReader reader = ActivationCacheReader::open(path);
  for (int64_t e = 0; e < 4; ++e) {
    const CacheEntryMeta meta = reader.meta(e), expected = entry_meta(e);
    EXPECT_EQ(meta.prompt_id, expected.prompt_id);
    EXPECT_EQ(meta.seed, expected.seed);  // all 64 bits, above INT64_MAX
    EXPECT_EQ(meta.step, expected.step);
    EXPECT_EQ(meta.sigma, expected.sigma);
  }
  expect_contains(error_message([&] { reader.meta(4); }), {path, "metadata entry 4", "4 entries written"});
}

TEST(ActivationCache, ResumesAfterReopeningWithTheSameParameters) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  const std::vector<int> blocks = {0, 3};
  {
    ActivationCacheWriter writer(path, blocks, kTokens, kDim, 5, DType::BF16, "hash-abc", 3);
    write_entries(writer, blocks, 0, 3);
  }
  {
    ActivationCacheReader partial = ActivationCacheReader::open(path);
    EXPECT_EQ(partial.entries(), 3);
    EXPECT_EQ(partial.total_entries(), 5);
    expect_contains(error_message([&] { partial.read(3, 3); }), {path, "block 3 entry 3", "3 entries written"});
  }
  {
    ActivationCacheWriter writer(path, {3, 0}, kTokens, kDim, 5, DType::BF16, "hash-abc", 3);  // order is free
    EXPECT_EQ(writer.entries_written(), 3);
    write_entries(writer, blocks, 3, 5);
    EXPECT_EQ(writer.entries_written(), 5);
    expect_contains(error_message([&] { writer.append(entry_meta(5), entry_activations(blocks, 5)); }),
                    {path, "complete"});
  }
  const std::string once = dir.file("once.h5");
  write_cache(once, blocks, 5, DType::BF16, 3);

  ActivationCacheReader resumed = ActivationCacheReader::open(path), reference = ActivationCacheReader::open(once);
  ASSERT_EQ(resumed.entries(), 5);
  for (int block : blocks)
    for (int64_t e = 0; e < 5; ++e) {
      expect_equal(resumed.read(block, e).first, reference.read(block, e).first);
      expect_equal(resumed.read(block, e).second, reference.read(block, e).second);
      EXPECT_EQ(resumed.meta(e).seed, reference.meta(e).seed);
    }
}

// A writer process that dies without closing the file (no destructors, no H5Fclose)
// leaves every appended entry readable: append() flushes before it returns.
TEST(ActivationCache, EntriesSurviveAKilledWriter) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  const std::vector<int> blocks = {0, 1};
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ActivationCacheWriter writer(path, blocks, kTokens, kDim, 4, DType::F32, "hash-abc", 2);
    write_entries(writer, blocks, 0, 2);
    std::_Exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));

  {
    ActivationCacheReader reader = ActivationCacheReader::open(path);
    EXPECT_EQ(reader.entries(), 2);
    EXPECT_TRUE(reader.verify().ok()) << reader.verify().error;
  }
  ActivationCacheWriter writer(path, blocks, kTokens, kDim, 4, DType::F32, "hash-abc", 2);
  EXPECT_EQ(writer.entries_written(), 2);
}

TEST(ActivationCache, ReopeningWithOtherParametersFailsNamingTheAttribute) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  write_cache(path, {0, 1}, 2, DType::F32, 0);
  const std::string before = testing::read_file(path);

  struct Case {
    std::vector<int> blocks;
    int64_t tokens, dim;
    DType dtype;
    std::string hash;
    const char* attribute;
  };
  for (const Case& c : std::vector<Case>{{{0, 2}, kTokens, kDim, DType::F32, "hash-abc", "blocks"},
                                         {{0, 1}, kTokens + 1, kDim, DType::F32, "hash-abc", "tokens"},
                                         {{0, 1}, kTokens, kDim * 2, DType::F32, "hash-abc", "dim"},
                                         {{0, 1}, kTokens, kDim, DType::BF16, "hash-abc", "dtype"},
                                         {{0, 1}, kTokens, kDim, DType::F32, "hash-xyz", "model_hash"}}) {
    SCOPED_TRACE(c.attribute);
    expect_contains(error_message([&] { ActivationCacheWriter(path, c.blocks, c.tokens, c.dim, 2, c.dtype, c.hash, 0); }),
                    {path, fmt::format("attribute '{}'", c.attribute), "cannot resume"});
  }
  expect_contains(error_message([&] { ActivationCacheWriter(path, {0, 1}, kTokens, kDim, 3, DType::F32, "hash-abc", 0); }),
                  {path, "'total_entries'"});
  expect_contains(error_message([&] { ActivationCacheWriter(path, {0, 1}, kTokens, kDim, 2, DType::F32, "hash-abc", 4); }),
                  {path, "'gzip_level'"});
  EXPECT_EQ(testing::read_file(path), before);

  // Something else at the path is never overwritten.
  const std::string other = dir.file("notes.txt");
  testing::write_file(other, "my notes");
  expect_contains(error_message([&] { ActivationCacheWriter(other, {0}, kTokens, kDim, 1, DType::F32, "h", 0); }),
                  {other, "not an activation cache"});
  EXPECT_EQ(testing::read_file(other), "my notes");
  EXPECT_EQ(dir.entry_count(), 2u);  // no temp files left behind
}

TEST(ActivationCache, BadAppendsFailBeforeWritingAnything) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  ActivationCacheWriter writer(path, {0, 1}, kTokens, kDim, 2, DType::F32, "hash-abc", 0);
  auto missing = entry_activations({0}, 0);
  expect_contains(error_message([&] { writer.append(entry_meta(0), missing); }), {path, "block 1 is missing"});
  auto extra = entry_activations({0, 1, 5}, 0);
  expect_contains(error_message([&] { writer.append(entry_meta(0), extra); }), {path, "block 5"});
  auto wrong_shape = entry_activations({0, 1}, 0);
  wrong_shape[1].second = Tensor::zeros({kTokens, kDim + 1});
  expect_contains(error_message([&] { writer.append(entry_meta(0), wrong_shape); }),
                  {path, "block 1 attn_out", fmt::format("[{}, {}]", kTokens, kDim + 1)});
  EXPECT_EQ(writer.entries_written(), 0);
  EXPECT_EQ(ActivationCacheReader::open(path).entries(), 0);
}

TEST(ActivationCache, FlippedDataByteIsCaughtNamingBlockAndEntry) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  write_cache(path, {0, 2}, 3, DType::F32, 0);
  flip_byte(path, chunk_address(path, "blocks/2/attn_out", 1) + 13);

  ActivationCacheReader reader = ActivationCacheReader::open(path);
  expect_contains(error_message([&] { reader.read(2, 1); }), {path, "block 2 entry 1", "attn_out", "checksum"});
  expect_equal(reader.read(0, 1).second, activations(0, 1).second);  // the rest still reads
  expect_equal(reader.read(2, 2).second, activations(2, 2).second);
  const CacheVerifyResult result = reader.verify();
  EXPECT_FALSE(result.ok());
  EXPECT_EQ(result.first_bad_entry, 1);
  EXPECT_EQ(result.entries_checked, 1);
  expect_contains(result.error, {path, "block 2 entry 1"});
}

TEST(ActivationCache, FlippedCompressedByteIsCaughtNamingBlockAndEntry) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  write_cache(path, {0}, 2, DType::BF16, 6);
  flip_byte(path, chunk_address(path, "blocks/0/attn_in", 0) + 20);
  ActivationCacheReader reader = ActivationCacheReader::open(path);
  expect_contains(error_message([&] { reader.read(0, 0); }), {path, "block 0 entry 0"});
  EXPECT_EQ(reader.verify().first_bad_entry, 0);
}

TEST(ActivationCache, FlippedMetadataByteIsCaught) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  write_cache(path, {0}, 3, DType::F32, 0);
  flip_byte(path, contiguous_address(path, "meta/sigma") + 2 * 8 + 3);  // entry 2's sigma
  ActivationCacheReader reader = ActivationCacheReader::open(path);
  EXPECT_EQ(reader.meta(1).sigma, entry_meta(1).sigma);
  expect_contains(error_message([&] { reader.meta(2); }), {path, "metadata entry 2", "checksum"});
  EXPECT_EQ(reader.verify().first_bad_entry, 2);
}

TEST(ActivationCache, TruncatedOrForeignFilesFailNamingTheFile) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  write_cache(path, {0, 1}, 3, DType::F32, 0);
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  ::testing::internal::CaptureStderr();
  const std::string message = error_message([&] {
    ActivationCacheReader reader = ActivationCacheReader::open(path);
    reader.read(1, 2);
  });
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  expect_contains(message, {path});

  const std::string plain = dir.file("plain.h5");
  {
    Hdf5Id file(H5Fcreate(plain.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  }
  expect_contains(error_message([&] { ActivationCacheReader::open(plain); }), {plain, "not a rehyat activation cache"});
  expect_contains(error_message([&] { ActivationCacheReader::open(dir.file("absent.h5")); }),
                  {dir.file("absent.h5"), "not found"});
}

TEST(ActivationCache, GzipChangesOnlyTheSize) {
  TempDir dir;
  const std::string plain = dir.file("plain.h5"), packed = dir.file("packed.h5");
  // Compressible activations: only the first token row is non-zero.
  auto sparse_entry = [](int64_t e) {
    auto [in, out] = activations(0, e);
    Tensor sparse_in = Tensor::zeros({kTokens, kDim});  // [N, D]
    sparse_in.slice(0, 0, 1).copy_(in.slice(0, 0, 1));
    return std::map<int, std::pair<Tensor, Tensor>>{{0, {sparse_in, out}}};
  };
  for (const std::string& path : {plain, packed}) {
    ActivationCacheWriter writer(path, {0}, kTokens, kDim, 2, DType::BF16, "hash-abc", path == packed ? 6 : 0);
    for (int64_t e = 0; e < 2; ++e) writer.append(entry_meta(e), sparse_entry(e));
  }
  ActivationCacheReader a = ActivationCacheReader::open(plain), b = ActivationCacheReader::open(packed);
  for (int64_t e = 0; e < 2; ++e) {
    expect_equal(b.read(0, e).first, a.read(0, e).first);
    expect_equal(b.read(0, e).second, a.read(0, e).second);
  }
  auto attn_in_info = [](const std::string& path) {
    for (const Hdf5DatasetInfo& info : list_hdf5_datasets(path))
      if (info.path == "/blocks/0/attn_in") return info;
    ADD_FAILURE() << "no /blocks/0/attn_in in " << path;
    return Hdf5DatasetInfo{};
  };
  const Hdf5DatasetInfo plain_info = attn_in_info(plain), packed_info = attn_in_info(packed);
  EXPECT_EQ(plain_info.chunk_shape, (Shape{1, kTokens, kDim}));
  EXPECT_EQ(packed_info.chunk_shape, (Shape{1, kTokens, kDim}));
  EXPECT_TRUE(plain_info.filters.empty());
  EXPECT_EQ(packed_info.filters, (std::vector<std::string>{"shuffle", "gzip(6)"}));
  EXPECT_LT(packed_info.storage_bytes, plain_info.storage_bytes);
}

// Not a check of its own: with REHYAT_CACHE_PY_DIR set (by test_activation_cache_py.py)
// it writes f32.h5 (no gzip) and bf16.h5 (gzip 4) for the h5py reader. Blocks {1, 3},
// tokens 4, dim 6, 3 of 4 entries written; every value is (7b + 3e + 5n - 2d) / 8, exact
// in bf16; metadata prompt_id 10+e, seed 2^63+e, step 2e, sigma 1 - e/4; model_hash
// "py-hash".
TEST(ActivationCache, WritesFilesForPython) {
  const char* dir = std::getenv("REHYAT_CACHE_PY_DIR");
  if (!dir) GTEST_SKIP() << "REHYAT_CACHE_PY_DIR is not set (tests/tools/test_activation_cache_py.py sets it)";
  const int64_t tokens = 4, dim = 6;
  const std::vector<int> blocks = {1, 3};
  for (auto [name, dtype, gzip] : {std::tuple{"f32.h5", DType::F32, 0}, std::tuple{"bf16.h5", DType::BF16, 4}}) {
    const std::string path = (std::filesystem::path(dir) / name).string();
    std::filesystem::remove(path);
    ActivationCacheWriter writer(path, blocks, tokens, dim, 4, dtype, "py-hash", gzip);
    for (int64_t e = 0; e < 3; ++e) {
      std::map<int, std::pair<Tensor, Tensor>> rows;
      for (int b : blocks) {
        std::vector<double> values;  // [N, D]; attn_out is attn_in + 1
        for (int64_t n = 0; n < tokens; ++n)
          for (int64_t d = 0; d < dim; ++d) values.push_back(double(7 * b + 3 * e + 5 * n - 2 * d) / 8.0);
        Tensor in = Tensor::from_vector(values, {tokens, dim});
        for (double& v : values) v += 1.0;
        rows[b] = {in, Tensor::from_vector(values, {tokens, dim})};
      }
      writer.append({10 + e, (uint64_t(1) << 63) + uint64_t(e), 2 * e, 1.0 - 0.25 * double(e)}, rows);
    }
  }
}

}  // namespace
}  // namespace rehyat::data
