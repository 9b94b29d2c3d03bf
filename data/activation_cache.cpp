// Activation cache on the HDF5 C API. Every row goes through one pair of helpers
// (write_row / read_row_into) that select "row `entry` of the first axis", so the
// [E, N, D] activations and the [E] checksum and metadata columns share one code path.
// Checksums are zlib's CRC-32 so that Python can recompute them with zlib.crc32; they
// cover the stored element bytes (little-endian on the hosts we support), which the
// reader has in hand before any conversion to f32.
#include "data/activation_cache.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "core/check.h"

namespace rehyat::data {

namespace {

constexpr const char* kFormat = "rehyat-activation-cache";
constexpr int64_t kFormatVersion = 1;
constexpr const char* kSides[2] = {"attn_in", "attn_out"};
constexpr const char* kMetaColumns[5] = {"prompt_id", "seed", "step", "sigma", "crc32"};

uint32_t crc32_of(const void* data, size_t bytes) {
  return uint32_t(crc32_z(0, static_cast<const Bytef*>(data), bytes));
}

// The 32 bytes a metadata row's checksum covers: <i64 prompt_id, u64 seed, i64 step, f64 sigma>.
uint32_t meta_crc32(const CacheEntryMeta& meta) {
  unsigned char packed[32];
  std::memcpy(packed, &meta.prompt_id, 8);
  std::memcpy(packed + 8, &meta.seed, 8);
  std::memcpy(packed + 16, &meta.step, 8);
  std::memcpy(packed + 24, &meta.sigma, 8);
  return crc32_of(packed, sizeof packed);
}

// bf16 as HDF5 sees it: a 2-byte IEEE-style float with 8 exponent and 7 mantissa bits.
Hdf5Id stored_type(DType dtype) {
  Hdf5Id type(H5Tcopy(H5T_IEEE_F32LE));
  if (dtype == DType::BF16) {
    H5Tset_fields(type.get(), 15, 7, 8, 0, 7);
    H5Tset_size(type.get(), 2);
    H5Tset_ebias(type.get(), 127);
  }
  return type;
}

std::string block_dataset(int block, const char* side) { return fmt::format("blocks/{}/{}", block, side); }
std::string block_crc_dataset(int block, const char* side) { return fmt::format("blocks/{}/{}_crc32", block, side); }
std::string meta_dataset(const char* column) { return fmt::format("meta/{}", column); }

// --- attributes ------------------------------------------------------------------------

void write_attribute(hid_t file, const std::string& path, const char* name, hid_t type, hid_t space,
                     const void* data) {
  if (H5Aexists(file, name) > 0) H5Adelete(file, name);
  Hdf5Id attribute(H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT));
  if (!attribute.valid() || H5Awrite(attribute.get(), type, data) < 0)
    throw_hdf5_error(path, fmt::format("cannot write attribute '{}'", name));
}

void write_string_attribute(hid_t file, const std::string& path, const char* name, const std::string& value) {
  Hdf5Id type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  Hdf5Id space(H5Screate(H5S_SCALAR));
  const char* text = value.c_str();
  write_attribute(file, path, name, type.get(), space.get(), &text);
}

void write_int_attribute(hid_t file, const std::string& path, const char* name, int64_t value) {
  Hdf5Id space(H5Screate(H5S_SCALAR));
  write_attribute(file, path, name, H5T_NATIVE_INT64, space.get(), &value);
}

void write_int_list_attribute(hid_t file, const std::string& path, const char* name, const std::vector<int>& values) {
  std::vector<int64_t> wide(values.begin(), values.end());
  const hsize_t count = wide.size();
  Hdf5Id space(H5Screate_simple(1, &count, nullptr));
  write_attribute(file, path, name, H5T_NATIVE_INT64, space.get(), wide.data());
}

Hdf5Id open_attribute(hid_t file, const std::string& path, const char* name) {
  if (H5Aexists(file, name) <= 0) REHYAT_FAIL("{}: attribute '{}' is missing", path, name);
  Hdf5Id attribute(H5Aopen(file, name, H5P_DEFAULT));
  if (!attribute.valid()) throw_hdf5_error(path, fmt::format("cannot open attribute '{}'", name));
  return attribute;
}

std::string read_string_attribute(hid_t file, const std::string& path, const char* name) {
  Hdf5Id attribute = open_attribute(file, path, name);
  Hdf5Id type(H5Aget_type(attribute.get()));
  REHYAT_CHECK(H5Tget_class(type.get()) == H5T_STRING, "{}: attribute '{}' is not a string", path, name);
  if (H5Tis_variable_str(type.get()) > 0) {
    char* text = nullptr;
    if (H5Aread(attribute.get(), type.get(), &text) < 0)
      throw_hdf5_error(path, fmt::format("cannot read attribute '{}'", name));
    std::string value = text ? text : "";
    H5free_memory(text);
    return value;
  }
  std::string value(H5Tget_size(type.get()), '\0');
  if (H5Aread(attribute.get(), type.get(), value.data()) < 0)
    throw_hdf5_error(path, fmt::format("cannot read attribute '{}'", name));
  return value.substr(0, value.find('\0'));
}

std::vector<int64_t> read_int_attribute_values(hid_t file, const std::string& path, const char* name) {
  Hdf5Id attribute = open_attribute(file, path, name);
  Hdf5Id type(H5Aget_type(attribute.get()));
  REHYAT_CHECK(H5Tget_class(type.get()) == H5T_INTEGER, "{}: attribute '{}' is not an integer", path, name);
  Hdf5Id space(H5Aget_space(attribute.get()));
  std::vector<int64_t> values(size_t(std::max<hssize_t>(H5Sget_simple_extent_npoints(space.get()), 0)));
  if (H5Aread(attribute.get(), H5T_NATIVE_INT64, values.data()) < 0)
    throw_hdf5_error(path, fmt::format("cannot read attribute '{}'", name));
  return values;
}

int64_t read_int_attribute(hid_t file, const std::string& path, const char* name) {
  std::vector<int64_t> values = read_int_attribute_values(file, path, name);
  REHYAT_CHECK(values.size() == 1, "{}: attribute '{}' must be a single integer", path, name);
  return values[0];
}

// --- rows ----------------------------------------------------------------------------

// The file space of `dataset` with row `entry` of the first axis selected, and a memory
// space of that row's shape.
std::pair<Hdf5Id, Hdf5Id> row_spaces(hid_t dataset, int64_t entry) {
  Hdf5Id file_space(H5Dget_space(dataset));
  const int rank = H5Sget_simple_extent_ndims(file_space.get());
  std::vector<hsize_t> dims(size_t(std::max(rank, 1)));
  H5Sget_simple_extent_dims(file_space.get(), dims.data(), nullptr);
  std::vector<hsize_t> start(dims.size(), 0), count = dims;
  start[0] = hsize_t(entry);
  count[0] = 1;
  H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
  Hdf5Id memory_space(H5Screate_simple(int(count.size()), count.data(), nullptr));
  return {std::move(file_space), std::move(memory_space)};
}

void write_row(hid_t file, const std::string& path, const std::string& name, int64_t entry, hid_t memory_type,
               const void* data) {
  Hdf5Id dataset(H5Dopen2(file, name.c_str(), H5P_DEFAULT));
  if (!dataset.valid()) throw_hdf5_error(path, fmt::format("cannot open dataset '/{}'", name));
  auto [file_space, memory_space] = row_spaces(dataset.get(), entry);
  if (H5Dwrite(dataset.get(), memory_type, memory_space.get(), file_space.get(), H5P_DEFAULT, data) < 0)
    throw_hdf5_error(path, fmt::format("cannot write entry {} of '/{}'", entry, name));
}

// Reads row `entry` of `name`; `where` prefixes the error ("block 3 entry 1").
void read_row_into(hid_t file, const std::string& path, const std::string& name, int64_t entry, hid_t memory_type,
                   void* data, const std::string& where) {
  Hdf5Id dataset(H5Dopen2(file, name.c_str(), H5P_DEFAULT));
  if (!dataset.valid()) throw_hdf5_error(path, fmt::format("{}: cannot open dataset '/{}'", where, name));
  auto [file_space, memory_space] = row_spaces(dataset.get(), entry);
  if (H5Dread(dataset.get(), memory_type, memory_space.get(), file_space.get(), H5P_DEFAULT, data) < 0)
    throw_hdf5_error(path, fmt::format("{}: cannot read '/{}' (the file is corrupt or truncated)", where, name));
}

// --- schema --------------------------------------------------------------------------

struct CacheSchema {
  std::vector<int> blocks;
  int64_t tokens = 0, dim = 0, total_entries = 0;
  DType store_dtype = DType::F32;
};

// True when every link along "a/b/c" exists (H5Lexists fails on a missing parent).
bool path_exists(hid_t file, const std::string& name) {
  for (size_t slash = name.find('/'); ; slash = name.find('/', slash + 1)) {
    if (H5Lexists(file, name.substr(0, slash).c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) return true;
  }
}

void check_dataset(hid_t file, const std::string& path, const std::string& name, const std::vector<hsize_t>& dims,
                   hid_t type) {
  if (!path_exists(file, name)) REHYAT_FAIL("{}: dataset '/{}' is missing", path, name);
  Hdf5Id dataset(H5Dopen2(file, name.c_str(), H5P_DEFAULT));
  if (!dataset.valid()) throw_hdf5_error(path, fmt::format("cannot open dataset '/{}'", name));
  Hdf5Id space(H5Dget_space(dataset.get()));
  std::vector<hsize_t> actual(size_t(std::max(H5Sget_simple_extent_ndims(space.get()), 0)));
  H5Sget_simple_extent_dims(space.get(), actual.data(), nullptr);
  REHYAT_CHECK(actual == dims, "{}: dataset '/{}' has shape [{}], the attributes say [{}]", path, name,
               fmt::join(actual, ", "), fmt::join(dims, ", "));
  Hdf5Id file_type(H5Dget_type(dataset.get()));
  REHYAT_CHECK(H5Tequal(file_type.get(), type) > 0, "{}: dataset '/{}' does not have the element type the "
               "attributes say", path, name);
}

void check_schema(hid_t file, const std::string& path, const CacheSchema& schema) {
  const hsize_t rows = hsize_t(schema.total_entries);
  Hdf5Id element_type = stored_type(schema.store_dtype);
  for (int block : schema.blocks)
    for (const char* side : kSides) {
      check_dataset(file, path, block_dataset(block, side), {rows, hsize_t(schema.tokens), hsize_t(schema.dim)},
                    element_type.get());
      check_dataset(file, path, block_crc_dataset(block, side), {rows}, H5T_STD_U32LE);
    }
  const hid_t meta_types[5] = {H5T_STD_I64LE, H5T_STD_U64LE, H5T_STD_I64LE, H5T_IEEE_F64LE, H5T_STD_U32LE};
  for (int i = 0; i < 5; ++i) check_dataset(file, path, meta_dataset(kMetaColumns[i]), {rows}, meta_types[i]);
}

// Checks the format attribute, reads the schema attributes and checks the datasets.
CacheSchema read_schema(hid_t file, const std::string& path) {
  if (H5Aexists(file, "format") <= 0 || read_string_attribute(file, path, "format") != kFormat)
    REHYAT_FAIL("{}: not a rehyat activation cache (attribute 'format' is not '{}')", path, kFormat);
  const int64_t version = read_int_attribute(file, path, "format_version");
  REHYAT_CHECK(version == kFormatVersion, "{}: activation cache format_version {} is not supported (this build "
               "reads {})", path, version, kFormatVersion);
  CacheSchema schema;
  for (int64_t block : read_int_attribute_values(file, path, "blocks")) schema.blocks.push_back(int(block));
  schema.tokens = read_int_attribute(file, path, "tokens");
  schema.dim = read_int_attribute(file, path, "dim");
  schema.total_entries = read_int_attribute(file, path, "total_entries");
  schema.store_dtype = parse_dtype(read_string_attribute(file, path, "dtype"), path + ": attribute 'dtype'");
  REHYAT_CHECK(schema.store_dtype == DType::F32 || schema.store_dtype == DType::BF16,
               "{}: attribute 'dtype' must be f32 or bf16", path);
  REHYAT_CHECK(!schema.blocks.empty() && std::is_sorted(schema.blocks.begin(), schema.blocks.end()) &&
                   schema.tokens > 0 && schema.dim > 0 && schema.total_entries > 0,
               "{}: attributes 'blocks', 'tokens', 'dim', 'total_entries' are inconsistent", path);
  check_schema(file, path, schema);
  return schema;
}

// Creates the complete schema in `temp_path` (closed on return).
void create_cache_file(const std::string& temp_path, const std::string& path, const CacheSchema& schema,
                       const std::string& model_hash, int gzip_level) {
  Hdf5Id file(H5Fcreate(temp_path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT));
  if (!file.valid()) throw_hdf5_error(path, fmt::format("cannot create '{}'", temp_path));
  const hid_t f = file.get();
  write_string_attribute(f, path, "format", kFormat);
  write_int_attribute(f, path, "format_version", kFormatVersion);
  write_string_attribute(f, path, "model_hash", model_hash);
  write_int_list_attribute(f, path, "blocks", schema.blocks);
  write_int_attribute(f, path, "tokens", schema.tokens);
  write_int_attribute(f, path, "dim", schema.dim);
  write_string_attribute(f, path, "dtype", dtype_name(schema.store_dtype));
  write_int_attribute(f, path, "total_entries", schema.total_entries);
  write_int_attribute(f, path, "gzip_level", gzip_level);
  write_int_attribute(f, path, "entries_written", 0);

  auto create_group = [&](const std::string& name) {
    Hdf5Id group(H5Gcreate2(f, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (!group.valid()) throw_hdf5_error(path, fmt::format("cannot create group '/{}'", name));
  };
  auto create_dataset = [&](const std::string& name, hid_t type, const std::vector<hsize_t>& dims, hid_t plist) {
    Hdf5Id space(H5Screate_simple(int(dims.size()), dims.data(), nullptr));
    Hdf5Id dataset(H5Dcreate2(f, name.c_str(), type, space.get(), H5P_DEFAULT, plist, H5P_DEFAULT));
    if (!dataset.valid()) throw_hdf5_error(path, fmt::format("cannot create dataset '/{}'", name));
  };

  const hsize_t rows = hsize_t(schema.total_entries);
  const std::vector<hsize_t> activation_dims = {rows, hsize_t(schema.tokens), hsize_t(schema.dim)};
  const std::vector<hsize_t> chunk_dims = {1, hsize_t(schema.tokens), hsize_t(schema.dim)};  // one entry per chunk
  Hdf5Id chunked(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(chunked.get(), 3, chunk_dims.data());
  if (gzip_level > 0) {
    H5Pset_shuffle(chunked.get());
    H5Pset_deflate(chunked.get(), unsigned(gzip_level));
  }
  Hdf5Id element_type = stored_type(schema.store_dtype);
  create_group("blocks");
  for (int block : schema.blocks) {
    create_group(fmt::format("blocks/{}", block));
    for (const char* side : kSides) {
      create_dataset(block_dataset(block, side), element_type.get(), activation_dims, chunked.get());
      create_dataset(block_crc_dataset(block, side), H5T_STD_U32LE, {rows}, H5P_DEFAULT);
    }
  }
  create_group("meta");
  const hid_t meta_types[5] = {H5T_STD_I64LE, H5T_STD_U64LE, H5T_STD_I64LE, H5T_IEEE_F64LE, H5T_STD_U32LE};
  for (int i = 0; i < 5; ++i) create_dataset(meta_dataset(kMetaColumns[i]), meta_types[i], {rows}, H5P_DEFAULT);
  if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) throw_hdf5_error(path, "cannot flush");
}

template <typename T>
void expect_same(const std::string& path, const char* attribute, const T& in_file, const T& requested) {
  REHYAT_CHECK(in_file == requested, "{}: cannot resume the activation cache: attribute '{}' is {} in the file but "
               "{} was requested", path, attribute, in_file, requested);
}

}  // namespace

// --- writer ----------------------------------------------------------------------------

ActivationCacheWriter::ActivationCacheWriter(const std::string& path, std::vector<int> blocks, int64_t tokens,
                                             int64_t dim, int64_t total_entries, DType store_dtype,
                                             const std::string& model_hash, int gzip_level)
    : path_(path), blocks_(std::move(blocks)), tokens_(tokens), dim_(dim), total_entries_(total_entries),
      store_dtype_(store_dtype) {
  std::sort(blocks_.begin(), blocks_.end());
  REHYAT_CHECK(!blocks_.empty() && blocks_.front() >= 0 &&
                   std::adjacent_find(blocks_.begin(), blocks_.end()) == blocks_.end(),
               "{}: activation cache blocks must be distinct non-negative indices, got [{}]", path,
               fmt::join(blocks_, ", "));
  REHYAT_CHECK(tokens > 0 && dim > 0 && total_entries > 0,
               "{}: activation cache needs tokens, dim and total_entries > 0 (got {}, {}, {})", path, tokens, dim,
               total_entries);
  REHYAT_CHECK(store_dtype == DType::F32 || store_dtype == DType::BF16,
               "{}: activation cache dtype must be f32 or bf16, got {}", path, dtype_name(store_dtype));
  REHYAT_CHECK(gzip_level >= 0 && gzip_level <= 9, "{}: gzip level must be 0..9, got {}", path, gzip_level);
  const CacheSchema requested{blocks_, tokens, dim, total_entries, store_dtype};

  Hdf5QuietErrors quiet;
  if (!std::filesystem::exists(path)) {
    const std::string temp_path = fmt::format("{}.tmp.{}", path, ::getpid());
    try {
      create_cache_file(temp_path, path, requested, model_hash, gzip_level);
      std::filesystem::rename(temp_path, path);
    } catch (...) {
      std::filesystem::remove(temp_path);
      throw;
    }
  }
  REHYAT_CHECK(is_hdf5_file(path), "{}: exists and is not an activation cache (not HDF5); not touching it", path);
  file_ = Hdf5Id(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
  if (!file_.valid()) throw_hdf5_error(path, "cannot open the activation cache for writing");
  const hid_t f = file_.get();
  const CacheSchema existing = read_schema(f, path);
  expect_same(path, "blocks", fmt::format("[{}]", fmt::join(existing.blocks, ", ")),
              fmt::format("[{}]", fmt::join(blocks_, ", ")));
  expect_same(path, "tokens", existing.tokens, tokens);
  expect_same(path, "dim", existing.dim, dim);
  expect_same(path, "dtype", std::string(dtype_name(existing.store_dtype)), std::string(dtype_name(store_dtype)));
  expect_same(path, "model_hash", read_string_attribute(f, path, "model_hash"), model_hash);
  expect_same(path, "total_entries", existing.total_entries, total_entries);
  expect_same(path, "gzip_level", read_int_attribute(f, path, "gzip_level"), int64_t(gzip_level));
  entries_written_ = read_int_attribute(f, path, "entries_written");
  REHYAT_CHECK(entries_written_ >= 0 && entries_written_ <= total_entries_,
               "{}: attribute 'entries_written' is {} (total_entries {})", path, entries_written_, total_entries_);
}

void ActivationCacheWriter::append(const CacheEntryMeta& meta,
                                   const std::map<int, std::pair<Tensor, Tensor>>& block_in_out) {
  const int64_t entry = entries_written_;
  REHYAT_CHECK(entry < total_entries_, "{}: activation cache is complete ({} entries); nothing more to append",
               path_, total_entries_);
  // Everything is checked before the first byte is written.
  for (int block : blocks_)
    REHYAT_CHECK(block_in_out.count(block), "{}: entry {}: block {} is missing from the activations", path_, entry,
                 block);
  for (const auto& [block, in_out] : block_in_out) {
    REHYAT_CHECK(std::binary_search(blocks_.begin(), blocks_.end(), block),
                 "{}: entry {}: block {} is not one of the cache's blocks [{}]", path_, entry, block,
                 fmt::join(blocks_, ", "));
    for (const Tensor* t : {&in_out.first, &in_out.second}) {
      const char* side = t == &in_out.first ? kSides[0] : kSides[1];
      REHYAT_CHECK(t->defined() && is_floating(t->dtype()) && t->shape() == Shape({tokens_, dim_}),
                   "{}: entry {}: block {} {} must be a floating [{}, {}] tensor, got {}", path_, entry, block, side,
                   tokens_, dim_, t->defined() ? t->str() : "undefined");
    }
  }

  Hdf5QuietErrors quiet;
  const hid_t f = file_.get();
  Hdf5Id element_type = stored_type(store_dtype_);
  for (int block : blocks_) {
    const auto& [attn_in, attn_out] = block_in_out.at(block);
    for (int s = 0; s < 2; ++s) {
      // [N, D] in the stored dtype, host, contiguous
      Tensor row = (s == 0 ? attn_in : attn_out).detach().to(store_dtype_).to(Device::cpu()).contiguous();
      const uint32_t crc = crc32_of(row.data_ptr(), row.nbytes());
      write_row(f, path_, block_dataset(block, kSides[s]), entry, element_type.get(), row.data_ptr());
      write_row(f, path_, block_crc_dataset(block, kSides[s]), entry, H5T_NATIVE_UINT32, &crc);
    }
  }
  const uint32_t crc = meta_crc32(meta);
  write_row(f, path_, meta_dataset("prompt_id"), entry, H5T_NATIVE_INT64, &meta.prompt_id);
  write_row(f, path_, meta_dataset("seed"), entry, H5T_NATIVE_UINT64, &meta.seed);
  write_row(f, path_, meta_dataset("step"), entry, H5T_NATIVE_INT64, &meta.step);
  write_row(f, path_, meta_dataset("sigma"), entry, H5T_NATIVE_DOUBLE, &meta.sigma);
  write_row(f, path_, meta_dataset("crc32"), entry, H5T_NATIVE_UINT32, &crc);
  // Data first, counter second: a kill between the two flushes only repeats this entry.
  if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) throw_hdf5_error(path_, fmt::format("entry {}: cannot flush", entry));
  write_int_attribute(f, path_, "entries_written", entry + 1);
  if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) throw_hdf5_error(path_, fmt::format("entry {}: cannot flush", entry));
  entries_written_ = entry + 1;
}

// --- reader ----------------------------------------------------------------------------

ActivationCacheReader ActivationCacheReader::open(const std::string& path) {
  Hdf5QuietErrors quiet;
  REHYAT_CHECK(std::filesystem::exists(path), "{}: activation cache not found", path);
  ActivationCacheReader reader;
  reader.path_ = path;
  reader.file_ = Hdf5Id(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!reader.file_.valid()) throw_hdf5_error(path, "cannot open the activation cache (corrupt or truncated?)");
  const hid_t f = reader.file_.get();
  const CacheSchema schema = read_schema(f, path);
  reader.blocks_ = schema.blocks;
  reader.tokens_ = schema.tokens;
  reader.dim_ = schema.dim;
  reader.total_entries_ = schema.total_entries;
  reader.store_dtype_ = schema.store_dtype;
  reader.model_hash_ = read_string_attribute(f, path, "model_hash");
  reader.entries_written_ = read_int_attribute(f, path, "entries_written");
  REHYAT_CHECK(reader.entries_written_ >= 0 && reader.entries_written_ <= reader.total_entries_,
               "{}: attribute 'entries_written' is {} (total_entries {})", path, reader.entries_written_,
               reader.total_entries_);
  return reader;
}

Tensor ActivationCacheReader::read_row(int block, const char* side, int64_t entry) const {
  const std::string where = fmt::format("block {} entry {}", block, entry);
  Tensor row = Tensor::empty({tokens_, dim_}, store_dtype_);  // [N, D] as stored
  Hdf5Id element_type = stored_type(store_dtype_);
  read_row_into(file_.get(), path_, block_dataset(block, side), entry, element_type.get(), row.data_ptr(), where);
  uint32_t stored_crc = 0;
  read_row_into(file_.get(), path_, block_crc_dataset(block, side), entry, H5T_NATIVE_UINT32, &stored_crc, where);
  const uint32_t crc = crc32_of(row.data_ptr(), row.nbytes());
  REHYAT_CHECK(crc == stored_crc, "{}: {}: {} checksum mismatch (stored {:08x}, computed {:08x}): the file is corrupt",
               path_, where, side, stored_crc, crc);
  return row.to(DType::F32);
}

std::pair<Tensor, Tensor> ActivationCacheReader::read(int block, int64_t entry) const {
  REHYAT_CHECK(std::binary_search(blocks_.begin(), blocks_.end(), block),
               "{}: block {} is not in the activation cache (blocks [{}])", path_, block, fmt::join(blocks_, ", "));
  REHYAT_CHECK(entry >= 0 && entry < entries_written_, "{}: block {} entry {} out of range: {} entries written",
               path_, block, entry, entries_written_);
  Hdf5QuietErrors quiet;
  return {read_row(block, kSides[0], entry), read_row(block, kSides[1], entry)};
}

CacheEntryMeta ActivationCacheReader::meta(int64_t entry) const {
  REHYAT_CHECK(entry >= 0 && entry < entries_written_, "{}: metadata entry {} out of range: {} entries written",
               path_, entry, entries_written_);
  Hdf5QuietErrors quiet;
  const std::string where = fmt::format("metadata entry {}", entry);
  const hid_t f = file_.get();
  CacheEntryMeta meta;
  uint32_t stored_crc = 0;
  read_row_into(f, path_, meta_dataset("prompt_id"), entry, H5T_NATIVE_INT64, &meta.prompt_id, where);
  read_row_into(f, path_, meta_dataset("seed"), entry, H5T_NATIVE_UINT64, &meta.seed, where);
  read_row_into(f, path_, meta_dataset("step"), entry, H5T_NATIVE_INT64, &meta.step, where);
  read_row_into(f, path_, meta_dataset("sigma"), entry, H5T_NATIVE_DOUBLE, &meta.sigma, where);
  read_row_into(f, path_, meta_dataset("crc32"), entry, H5T_NATIVE_UINT32, &stored_crc, where);
  const uint32_t crc = meta_crc32(meta);
  REHYAT_CHECK(crc == stored_crc, "{}: {}: checksum mismatch (stored {:08x}, computed {:08x}): the file is corrupt",
               path_, where, stored_crc, crc);
  return meta;
}

CacheVerifyResult ActivationCacheReader::verify() const {
  CacheVerifyResult result;
  for (int64_t entry = 0; entry < entries_written_; ++entry) {
    try {
      meta(entry);
      for (int block : blocks_) read(block, entry);
    } catch (const Error& e) {
      result.first_bad_entry = entry;
      result.error = e.what();
      return result;
    }
    result.entries_checked = entry + 1;
  }
  return result;
}

}  // namespace rehyat::data
