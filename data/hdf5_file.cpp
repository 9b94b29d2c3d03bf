// HDF5 helpers: error-stack condensing, signature detection, dataset listing. The visit
// callback runs inside HDF5's C code, so it never lets an exception escape: it stores
// the message and stops the iteration, and the caller rethrows.
#include "data/hdf5_file.h"

#include <algorithm>
#include <cstring>
#include <fstream>

#include <fmt/format.h>

#include "core/check.h"

namespace rehyat {

namespace {

herr_t collect_error_description(unsigned, const H5E_error2_t* entry, void* out) {
  auto& parts = *static_cast<std::vector<std::string>*>(out);
  if (entry->desc && *entry->desc && (parts.empty() || parts.back() != entry->desc)) parts.emplace_back(entry->desc);
  return 0;
}

// The error stack from the API call down to the root cause, joined with ": ".
std::string hdf5_error_stack_text() {
  std::vector<std::string> parts;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error_description, &parts);
  H5Eclear2(H5E_DEFAULT);
  return parts.empty() ? std::string("unknown HDF5 error") : fmt::format("{}", fmt::join(parts, ": "));
}

std::string type_class_name(H5T_class_t type_class) {
  switch (type_class) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_TIME: return "time";
    case H5T_STRING: return "string";
    case H5T_BITFIELD: return "bitfield";
    case H5T_OPAQUE: return "opaque";
    case H5T_COMPOUND: return "compound";
    case H5T_REFERENCE: return "reference";
    case H5T_ENUM: return "enum";
    case H5T_VLEN: return "vlen";
    case H5T_ARRAY: return "array";
    default: return "unknown";
  }
}

// Maps the element type to one of ours where the bits agree. HDF5 has no predefined
// half types: f16 and bf16 are custom 16-bit floats told apart by their field widths.
void describe_element_type(hid_t type, Hdf5DatasetInfo& info) {
  const H5T_class_t type_class = H5Tget_class(type);
  const size_t bytes = H5Tget_size(type);
  info.element_bytes = bytes;
  if (type_class == H5T_FLOAT) {
    size_t sign_pos, exp_pos, exp_bits, mant_pos, mant_bits;
    H5Tget_fields(type, &sign_pos, &exp_pos, &exp_bits, &mant_pos, &mant_bits);
    if (bytes == 4) info.dtype = DType::F32;
    if (bytes == 8) info.dtype = DType::F64;
    if (bytes == 2 && exp_bits == 5 && mant_bits == 10) info.dtype = DType::F16;
    if (bytes == 2 && exp_bits == 8 && mant_bits == 7) info.dtype = DType::BF16;
    info.type_name = info.dtype ? dtype_name(*info.dtype) : fmt::format("float{}", bytes * 8);
  } else if (type_class == H5T_INTEGER) {
    const bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
    if (is_signed && bytes == 4) info.dtype = DType::I32;
    if (is_signed && bytes == 8) info.dtype = DType::I64;
    info.type_name = info.dtype ? dtype_name(*info.dtype) : fmt::format("{}{}", is_signed ? "i" : "u", bytes * 8);
  } else {
    info.type_name = type_class_name(type_class);
  }
}

std::string filter_description(H5Z_filter_t filter, const unsigned* values, size_t value_count, const char* name) {
  switch (filter) {
    case H5Z_FILTER_DEFLATE: return value_count > 0 ? fmt::format("gzip({})", values[0]) : "gzip";
    case H5Z_FILTER_SHUFFLE: return "shuffle";
    case H5Z_FILTER_FLETCHER32: return "fletcher32";
    case H5Z_FILTER_SZIP: return "szip";
    case H5Z_FILTER_NBIT: return "nbit";
    case H5Z_FILTER_SCALEOFFSET: return "scaleoffset";
    default: return *name ? std::string(name) : fmt::format("filter {}", filter);
  }
}

void describe_layout(hid_t dataset, Hdf5DatasetInfo& info) {
  Hdf5Id plist(H5Dget_create_plist(dataset));
  if (!plist.valid()) return;
  if (H5Pget_layout(plist.get()) == H5D_CHUNKED) {
    std::vector<hsize_t> chunk(info.shape.size());
    int rank = H5Pget_chunk(plist.get(), int(chunk.size()), chunk.data());
    for (int d = 0; d < rank; ++d) info.chunk_shape.push_back(int64_t(chunk[size_t(d)]));
  }
  const int filter_count = H5Pget_nfilters(plist.get());
  for (int i = 0; i < filter_count; ++i) {
    unsigned flags = 0, filter_config = 0;
    unsigned values[8] = {};
    size_t value_count = 8;
    char name[64] = {};
    H5Z_filter_t filter =
        H5Pget_filter2(plist.get(), unsigned(i), &flags, &value_count, values, sizeof name, name, &filter_config);
    info.filters.push_back(filter_description(filter, values, std::min<size_t>(value_count, 8), name));
  }
}

Hdf5DatasetInfo describe_dataset(hid_t dataset, const std::string& path, const std::string& file) {
  Hdf5DatasetInfo info;
  info.path = path;
  Hdf5Id space(H5Dget_space(dataset));
  Hdf5Id type(H5Dget_type(dataset));
  if (!space.valid() || !type.valid()) throw_hdf5_error(file, fmt::format("cannot read dataset '{}'", path));
  if (H5Sget_simple_extent_type(space.get()) == H5S_NULL) {
    info.shape = {0};  // a dataspace with no elements at all
  } else {
    std::vector<hsize_t> dims(size_t(std::max(H5Sget_simple_extent_ndims(space.get()), 0)));
    H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    for (hsize_t d : dims) info.shape.push_back(int64_t(d));
  }
  describe_element_type(type.get(), info);
  info.storage_bytes = H5Dget_storage_size(dataset);
  describe_layout(dataset, info);
  return info;
}

struct DatasetVisit {
  const std::string& file;
  std::vector<Hdf5DatasetInfo> datasets;
  std::string error;  // set when the callback failed; the C iteration cannot carry exceptions
};

herr_t visit_object(hid_t root, const char* name, const H5O_info_t* object, void* state_ptr) {
  auto& state = *static_cast<DatasetVisit*>(state_ptr);
  if (object->type != H5O_TYPE_DATASET) return 0;
  try {
    Hdf5Id dataset(H5Dopen2(root, name, H5P_DEFAULT));
    if (!dataset.valid()) throw_hdf5_error(state.file, fmt::format("cannot open dataset '/{}'", name));
    state.datasets.push_back(describe_dataset(dataset.get(), std::string("/") + name, state.file));
    return 0;
  } catch (const std::exception& e) {
    state.error = e.what();
    return -1;
  }
}

}  // namespace

void throw_hdf5_error(const std::string& path, const std::string& what) {
  throw Error(fmt::format("{}: {}: {}", path, what, hdf5_error_stack_text()));
}

bool is_hdf5_file(const std::string& path) {
  static constexpr char kSignature[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  in.seekg(0, std::ios::end);
  const std::streamoff file_bytes = in.tellg();
  // The superblock sits at 0 or after a user block of 512, 1024, 2048, ... bytes.
  for (std::streamoff offset = 0; offset + 8 <= file_bytes; offset = offset == 0 ? 512 : offset * 2) {
    char bytes[8];
    in.seekg(offset);
    if (!in.read(bytes, sizeof bytes)) return false;
    if (std::memcmp(bytes, kSignature, sizeof bytes) == 0) return true;
  }
  return false;
}

std::vector<Hdf5DatasetInfo> list_hdf5_datasets(const std::string& path) {
  Hdf5QuietErrors quiet;
  Hdf5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!file.valid()) throw_hdf5_error(path, "cannot open as HDF5");
  DatasetVisit state{path, {}, {}};
#if H5_VERSION_GE(1, 12, 0)
  herr_t status = H5Ovisit(file.get(), H5_INDEX_NAME, H5_ITER_INC, visit_object, &state, H5O_INFO_BASIC);
#else
  herr_t status = H5Ovisit2(file.get(), H5_INDEX_NAME, H5_ITER_INC, visit_object, &state, H5O_INFO_BASIC);
#endif
  if (!state.error.empty()) throw Error(state.error);
  if (status < 0) throw_hdf5_error(path, "cannot list its objects");
  return std::move(state.datasets);
}

}  // namespace rehyat
