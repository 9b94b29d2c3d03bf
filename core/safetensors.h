// safetensors I/O: the checkpoint format shared with PyTorch / diffusers (Wan2.1 ships
// its weights in it). Format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {"key": "value"}}, then the data section; offsets are relative to it.
//
// Reading maps the file copy-on-write and hands out CPU tensors that point into the
// mapping (zero copy; the mapping lives as long as any tensor from it). The header is
// validated completely at open() so a corrupt or truncated file fails there, naming the
// file and the tensor, never later inside a kernel.
//
// Writing is atomic (temp file, fsync, rename): an interrupted or failed save leaves the
// previous file untouched. Tensor data are laid out by decreasing element size so every
// tensor starts naturally aligned while the data section stays gap-free, which the
// reference (Rust/Python) loader requires.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace rehyat {

// "F32", "BF16", ...: the dtype names used in safetensors headers.
const char* safetensors_dtype_name(DType dtype);

struct SafetensorsTensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t data_begin = 0;  // byte range [data_begin, data_end) inside the data section
  uint64_t data_end = 0;
  uint64_t nbytes() const { return data_end - data_begin; }
};

class MappedFile;  // read-only view of a whole file (safetensors.cpp)

class SafetensorsFile {
 public:
  // Maps and validates the file; throws rehyat::Error naming the file (and tensor).
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  // Tensor names in the order of their data in the file.
  const std::vector<std::string>& names() const { return names_; }
  bool has(const std::string& name) const { return infos_.count(name) != 0; }
  const SafetensorsTensorInfo& info(const std::string& name) const;
  // A CPU tensor viewing the mapped bytes (copied only if the file misaligns them).
  Tensor get(const std::string& name) const;
  // The header's "__metadata__" entries (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_bytes() const;
  uint64_t header_bytes() const { return header_bytes_; }  // N, the JSON length

 private:
  std::string path_;
  std::shared_ptr<const MappedFile> mapping_;
  uint64_t header_bytes_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, SafetensorsTensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (any device, any strides) atomically to `path`. Names must be unique
// and non-empty; "__metadata__" is reserved. Throws naming the path; on failure the
// temp file is removed and an existing file at `path` is left as it was.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Every tensor of the file, keyed by name (views into one shared mapping).
std::map<std::string, Tensor> load_safetensors(const std::string& path);

}  // namespace rehyat
