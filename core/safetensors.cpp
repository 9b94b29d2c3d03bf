// safetensors reading (mmap + full header validation) and atomic writing; see the header
// for the format and the guarantees. Every error names the file, and the tensor when one
// is at fault, because a user facing a broken checkpoint needs to know which one.
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"

namespace rehyat {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

constexpr DType kSafetensorsDTypes[] = {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::I64};
constexpr const char* kMetadataKey = "__metadata__";
constexpr uint64_t kHeaderLengthBytes = 8;

}  // namespace

// A whole file mapped private and writable: the file itself is opened read-only and
// never changes, while an in-place update of a loaded tensor (an optimizer step on
// weights fresh from a checkpoint) copies the touched pages instead of crashing.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REHYAT_CHECK(fd >= 0, "cannot open '{}': {}", path, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      REHYAT_FAIL("cannot open '{}': not a regular file", path);
    }
    size_ = size_t(st.st_size);
    if (size_ > 0) {
      void* base = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
      int map_errno = errno;
      ::close(fd);
      REHYAT_CHECK(base != MAP_FAILED, "cannot map '{}' ({} bytes): {}", path, size_, std::strerror(map_errno));
      base_ = static_cast<uint8_t*>(base);
    } else {
      ::close(fd);
    }
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (base_) ::munmap(base_, size_);
  }

  uint8_t* data() const { return base_; }
  size_t size() const { return size_; }

 private:
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
};

const char* safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

namespace {

using Json = nlohmann::json;

std::string supported_dtype_list() {
  std::string list;
  for (DType d : kSafetensorsDTypes) list += std::string(list.empty() ? "" : ", ") + safetensors_dtype_name(d);
  return list;
}

DType parse_tensor_dtype(const Json& value, const std::string& path, const std::string& name) {
  REHYAT_CHECK(value.is_string(), "{}: tensor '{}': 'dtype' must be a string, got {}", path, name, value.dump());
  const std::string& text = value.get_ref<const std::string&>();
  for (DType d : kSafetensorsDTypes)
    if (text == safetensors_dtype_name(d)) return d;
  REHYAT_FAIL("{}: tensor '{}': unsupported dtype '{}' (supported: {})", path, name, text, supported_dtype_list());
}

Shape parse_tensor_shape(const Json& value, const std::string& path, const std::string& name) {
  REHYAT_CHECK(value.is_array(), "{}: tensor '{}': 'shape' must be an array of integers, got {}", path, name,
               value.dump());
  Shape shape;
  for (const Json& dim : value) {
    REHYAT_CHECK(dim.is_number_integer(), "{}: tensor '{}': 'shape' must be an array of integers, got {}", path,
                 name, value.dump());
    REHYAT_CHECK(dim.is_number_unsigned(), "{}: tensor '{}': negative dimension in shape {}", path, name,
                 value.dump());
    uint64_t size = dim.get<uint64_t>();
    REHYAT_CHECK(size <= uint64_t(INT64_MAX), "{}: tensor '{}': dimension {} in shape is too large", path, name,
                 size);
    shape.push_back(int64_t(size));
  }
  return shape;
}

std::pair<uint64_t, uint64_t> parse_data_offsets(const Json& value, const std::string& path,
                                                 const std::string& name) {
  bool well_formed = value.is_array() && value.size() == 2 && value[0].is_number_unsigned() &&
                     value[1].is_number_unsigned();
  REHYAT_CHECK(well_formed, "{}: tensor '{}': 'data_offsets' must be [begin, end] with non-negative integers, got {}",
               path, name, value.dump());
  return {value[0].get<uint64_t>(), value[1].get<uint64_t>()};
}

SafetensorsTensorInfo parse_tensor_entry(const std::string& name, const Json& entry, const std::string& path,
                                         uint64_t data_section_bytes) {
  REHYAT_CHECK(entry.is_object(), "{}: tensor '{}': header entry must be an object, got {}", path, name,
               entry.dump());
  for (const char* field : {"dtype", "shape", "data_offsets"})
    REHYAT_CHECK(entry.contains(field), "{}: tensor '{}': header entry has no '{}'", path, name, field);

  SafetensorsTensorInfo info;
  info.name = name;
  info.dtype = parse_tensor_dtype(entry["dtype"], path, name);
  info.shape = parse_tensor_shape(entry["shape"], path, name);
  std::tie(info.data_begin, info.data_end) = parse_data_offsets(entry["data_offsets"], path, name);

  REHYAT_CHECK(info.data_begin <= info.data_end, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", path,
               name, info.data_begin, info.data_end);
  REHYAT_CHECK(info.data_end <= data_section_bytes,
               "{}: tensor '{}': data_offsets [{}, {}] run past the end of the data section ({} bytes; file "
               "truncated?)",
               path, name, info.data_begin, info.data_end, data_section_bytes);
  uint64_t expected_bytes = dtype_size(info.dtype);
  for (int64_t dim : info.shape)
    REHYAT_CHECK(!__builtin_mul_overflow(expected_bytes, uint64_t(dim), &expected_bytes),
                 "{}: tensor '{}': shape {} is too large", path, name, shape_str(info.shape));
  REHYAT_CHECK(info.nbytes() == expected_bytes,
               "{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but {} {} needs {} bytes", path, name,
               info.data_begin, info.data_end, info.nbytes(), safetensors_dtype_name(info.dtype),
               shape_str(info.shape), expected_bytes);
  return info;
}

std::map<std::string, std::string> parse_metadata(const Json& value, const std::string& path) {
  REHYAT_CHECK(value.is_object(), "{}: '__metadata__' must be an object of strings, got {}", path, value.dump());
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    REHYAT_CHECK(item.is_string(), "{}: '__metadata__' entry '{}' must be a string, got {}", path, key, item.dump());
    metadata[key] = item.get<std::string>();
  }
  return metadata;
}

// Two tensors sharing bytes means a corrupt (or hostile) header. Empty tensors own no
// bytes and cannot overlap anything.
void check_no_overlap(const std::vector<const SafetensorsTensorInfo*>& by_offset, const std::string& path) {
  const SafetensorsTensorInfo* furthest = nullptr;  // non-empty tensor with the largest end so far
  for (const SafetensorsTensorInfo* info : by_offset) {
    if (info->nbytes() == 0) continue;
    if (furthest && info->data_begin < furthest->data_end)
      REHYAT_FAIL("{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap in the data section", path, furthest->name,
                  furthest->data_begin, furthest->data_end, info->name, info->data_begin, info->data_end);
    if (!furthest || info->data_end > furthest->data_end) furthest = info;
  }
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;
  auto mapping = std::shared_ptr<const MappedFile>(std::make_shared<MappedFile>(path));
  const uint64_t file_bytes = mapping->size();
  REHYAT_CHECK(file_bytes >= kHeaderLengthBytes,
               "{}: not a safetensors file: {} bytes, shorter than the 8-byte header length", path, file_bytes);
  uint64_t header_bytes;
  std::memcpy(&header_bytes, mapping->data(), sizeof header_bytes);
  REHYAT_CHECK(header_bytes <= file_bytes - kHeaderLengthBytes,
               "{}: not a safetensors file (or truncated): header length {} bytes runs past the end of the file "
               "({} bytes)",
               path, header_bytes, file_bytes);
  const uint64_t data_section_bytes = file_bytes - kHeaderLengthBytes - header_bytes;

  Json header;
  const char* header_text = reinterpret_cast<const char*>(mapping->data() + kHeaderLengthBytes);
  try {
    header = Json::parse(header_text, header_text + header_bytes);
  } catch (const Json::parse_error& e) {
    REHYAT_FAIL("{}: safetensors header is not valid JSON: {}", path, e.what());
  }
  REHYAT_CHECK(header.is_object(), "{}: safetensors header must be a JSON object, got a {}", path, header.type_name());

  std::vector<const SafetensorsTensorInfo*> by_offset;
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      file.metadata_ = parse_metadata(entry, path);
      continue;
    }
    auto [it, inserted] = file.infos_.emplace(name, parse_tensor_entry(name, entry, path, data_section_bytes));
    by_offset.push_back(&it->second);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return std::tie(a->data_begin, a->data_end, a->name) < std::tie(b->data_begin, b->data_end, b->name);
  });
  check_no_overlap(by_offset, path);
  for (const SafetensorsTensorInfo* info : by_offset) file.names_.push_back(info->name);

  file.header_bytes_ = header_bytes;
  file.mapping_ = std::move(mapping);
  return file;
}

const SafetensorsTensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = infos_.find(name);
  REHYAT_CHECK(it != infos_.end(), "{}: no tensor named '{}'", path_, name);
  return it->second;
}

uint64_t SafetensorsFile::file_bytes() const { return mapping_ ? mapping_->size() : 0; }

Tensor SafetensorsFile::get(const std::string& name) const {
  const SafetensorsTensorInfo& meta = info(name);
  uint8_t* bytes = mapping_->data() + kHeaderLengthBytes + header_bytes_ + meta.data_begin;
  if (reinterpret_cast<uintptr_t>(bytes) % dtype_size(meta.dtype) != 0) {
    // Other writers may leave tensors misaligned; kernels expect natural alignment.
    Tensor copy = Tensor::empty(meta.shape, meta.dtype, Device::cpu());
    std::memcpy(copy.data_ptr(), bytes, meta.nbytes());
    return copy;
  }
  std::shared_ptr<const MappedFile> keep_alive = mapping_;
  auto storage = std::make_shared<Storage>(bytes, meta.nbytes(), Device::cpu(), [keep_alive] {});
  return Tensor::from_storage(std::move(storage), meta.shape, meta.dtype);
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::set<std::string> seen;
  for (const auto& [name, tensor] : tensors) {
    REHYAT_CHECK(!name.empty(), "cannot save '{}': a tensor has an empty name", path);
    REHYAT_CHECK(name != kMetadataKey, "cannot save '{}': '{}' is reserved and cannot name a tensor", path, name);
    REHYAT_CHECK(seen.insert(name).second, "cannot save '{}': duplicate tensor name '{}'", path, name);
    REHYAT_CHECK(tensor.defined(), "cannot save '{}': tensor '{}' is undefined", path, name);
  }

  // Largest elements first: every tensor then starts at a multiple of its element size.
  std::vector<size_t> write_order(tensors.size());
  for (size_t i = 0; i < write_order.size(); ++i) write_order[i] = i;
  std::stable_sort(write_order.begin(), write_order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].second.dtype()) > dtype_size(tensors[b].second.dtype());
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::vector<uint64_t> data_begin(tensors.size());
  uint64_t data_bytes = 0;
  for (size_t i : write_order) {
    data_begin[i] = data_bytes;
    data_bytes += tensors[i].second.nbytes();
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i].second;
    header[tensors[i].first] = {{"dtype", safetensors_dtype_name(t.dtype())},
                                {"shape", t.shape()},
                                {"data_offsets", {data_begin[i], data_begin[i] + t.nbytes()}}};
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not valid UTF-8
    REHYAT_FAIL("cannot save '{}': cannot encode the header: {}", path, e.what());
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // data section starts 8-byte aligned
  const uint64_t header_bytes = header_text.size();

  AtomicFileWriter writer(path);
  writer.write(&header_bytes, sizeof header_bytes);
  writer.write(header_text);
  for (size_t i : write_order) {
    Tensor host;
    try {
      host = tensors[i].second.detach().to(Device::cpu()).contiguous();
    } catch (const Error& e) {
      REHYAT_FAIL("cannot save '{}': tensor '{}': {}", path, tensors[i].first, e.what());
    }
    writer.write(host.data_ptr(), host.nbytes());
  }
  writer.commit();
}

std::map<std::string, Tensor> load_safetensors(const std::string& path) {
  SafetensorsFile file = SafetensorsFile::open(path);
  std::map<std::string, Tensor> tensors;
  for (const std::string& name : file.names()) tensors.emplace(name, file.get(name));
  return tensors;
}

}  // namespace rehyat
