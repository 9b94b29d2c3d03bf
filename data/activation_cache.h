// Teacher activation cache (SPEC §4 step 1): for every cached sample (prompt × seed ×
// denoising step) and every converted block, the self-attention input (the modulated
// normed hidden state fed to q/k/v) and the teacher's self-attention output (after o),
// both [N, D]. Block-wise distillation reads them back one (block, entry) at a time.
//
// HDF5 layout (format "rehyat-activation-cache", version 1), readable with h5py:
//   /blocks/<b>/attn_in, /blocks/<b>/attn_out   [E, N, D] f32, or bf16 as a 16-bit HDF5
//       float with 8 exponent / 7 mantissa bits (what list_hdf5_datasets calls bf16);
//       chunked one entry per chunk, optional shuffle + gzip.
//   /blocks/<b>/attn_in_crc32, attn_out_crc32   [E] u32: CRC-32 (zlib's) of each row's
//       stored bytes (little-endian, before compression).
//   /meta/prompt_id i64, seed u64, step i64, sigma f64   [E]
//   /meta/crc32 [E] u32: CRC-32 of the row's 32 bytes packed as <i64 u64 i64 f64> (LE).
//   root attributes: format, format_version, model_hash, blocks (list), tokens, dim,
//       dtype ("f32" | "bf16"), total_entries, gzip_level, entries_written (all
//       integers i64).
// E is total_entries from the start; only rows below entries_written hold data.
//
// Resuming: the writer creates the file under a temp name and renames it once the schema
// is complete, so an existing file always has every dataset. append() writes the rows,
// their checksums and the metadata, flushes, and only then advances entries_written (and
// flushes again): a killed process loses at most the entry in progress, which the next
// writer overwrites. Reading verifies the checksums of every row it returns, so a flipped
// byte is reported with the file, block and entry instead of training on garbage.
//
// From Python (h5py): f["blocks/3/attn_in"].astype("f4")[e] is entry e as exact f32 for
// either dtype (h5py 3 already maps this bf16 type to float32; astype makes it explicit).
// The bf16 bit patterns are (row.view("<u4") >> 16).astype("<u2"), and a row checks out
// when zlib.crc32 of its stored bytes (f32 row or those u16 patterns) equals
// f["blocks/3/attn_in_crc32"][e]; tests/tools/test_activation_cache_py.py does exactly this.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "data/hdf5_file.h"

namespace rehyat::data {

struct CacheEntryMeta {
  int64_t prompt_id = 0;
  uint64_t seed = 0;
  int64_t step = 0;
  double sigma = 0.0;
};

// Creates `path`, or reopens it to resume after entries_written(); every parameter must
// then equal what the file holds (the error names the file and the attribute). An
// existing file that is not an activation cache is never overwritten.
class ActivationCacheWriter {
 public:
  ActivationCacheWriter(const std::string& path, std::vector<int> blocks, int64_t tokens, int64_t dim,
                        int64_t total_entries, DType store_dtype, const std::string& model_hash, int gzip_level);

  const std::string& path() const { return path_; }
  int64_t entries_written() const { return entries_written_; }
  int64_t total_entries() const { return total_entries_; }

  // One entry: block_in_out[b] = (attn_in, attn_out), each [N, D] floating (any device),
  // for exactly the cache's blocks. Writes, flushes, then advances entries_written.
  void append(const CacheEntryMeta& meta, const std::map<int, std::pair<Tensor, Tensor>>& block_in_out);

 private:
  std::string path_;
  std::vector<int> blocks_;  // ascending
  int64_t tokens_ = 0, dim_ = 0, total_entries_ = 0;
  DType store_dtype_ = DType::F32;
  int64_t entries_written_ = 0;
  Hdf5Id file_;
};

// What ActivationCacheReader::verify() found: ok() when every written entry read back
// with matching checksums.
struct CacheVerifyResult {
  int64_t entries_checked = 0;  // entries fully verified before the first bad one
  int64_t first_bad_entry = -1;
  std::string error;            // the first bad entry's error message
  bool ok() const { return first_bad_entry < 0; }
};

// Opens a cache read-only, checking the format attribute and the schema (every dataset
// present with the shape and type the attributes promise).
class ActivationCacheReader {
 public:
  static ActivationCacheReader open(const std::string& path);

  const std::string& path() const { return path_; }
  int64_t entries() const { return entries_written_; }  // entries readable now
  int64_t total_entries() const { return total_entries_; }
  std::vector<int> blocks() const { return blocks_; }
  std::string model_hash() const { return model_hash_; }
  int64_t tokens() const { return tokens_; }
  int64_t dim() const { return dim_; }
  DType store_dtype() const { return store_dtype_; }

  // (attn_in, attn_out), f32 [N, D] each on the CPU; checksums verified.
  std::pair<Tensor, Tensor> read(int block, int64_t entry) const;
  CacheEntryMeta meta(int64_t entry) const;  // checksum verified
  // Reads every entry of every block and all metadata; stops at the first bad entry.
  CacheVerifyResult verify() const;

 private:
  ActivationCacheReader() = default;
  Tensor read_row(int block, const char* which, int64_t entry) const;  // f32 [N, D]

  std::string path_;
  std::vector<int> blocks_;
  int64_t tokens_ = 0, dim_ = 0, total_entries_ = 0, entries_written_ = 0;
  DType store_dtype_ = DType::F32;
  std::string model_hash_;
  Hdf5Id file_;
};

}  // namespace rehyat::data
