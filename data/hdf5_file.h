// Small HDF5 (C API) helpers shared by everything that reads or writes HDF5: activation
// caches, the shapes dataset, `rehyat inspect`.
//
// - Hdf5Id closes any HDF5 identifier when it goes out of scope, so early returns and
//   exceptions leak nothing.
// - Hdf5QuietErrors turns off HDF5's habit of printing its error stack to stderr; the
//   caller throws rehyat::Error instead, with throw_hdf5_error() condensing that stack
//   ("unable to open file: file signature not found") behind the file name.
// - list_hdf5_datasets() describes every dataset of a file (for inspect and for checks
//   before reading).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace rehyat {

class Hdf5Id {
 public:
  Hdf5Id() = default;
  explicit Hdf5Id(hid_t id) : id_(id) {}
  Hdf5Id(Hdf5Id&& other) noexcept : id_(other.release()) {}
  Hdf5Id& operator=(Hdf5Id&& other) noexcept {
    if (this != &other) {
      close();
      id_ = other.release();
    }
    return *this;
  }
  Hdf5Id(const Hdf5Id&) = delete;
  Hdf5Id& operator=(const Hdf5Id&) = delete;
  ~Hdf5Id() { close(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  hid_t release() {
    hid_t id = id_;
    id_ = H5I_INVALID_HID;
    return id;
  }

 private:
  // H5Idec_ref closes files, groups, datasets, dataspaces, types and property lists alike.
  void close() {
    if (valid()) H5Idec_ref(id_);
    id_ = H5I_INVALID_HID;
  }
  hid_t id_ = H5I_INVALID_HID;
};

// Silences HDF5's automatic error printing for this thread while in scope.
class Hdf5QuietErrors {
 public:
  Hdf5QuietErrors() {
    H5Eget_auto2(H5E_DEFAULT, &saved_func_, &saved_data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  Hdf5QuietErrors(const Hdf5QuietErrors&) = delete;
  Hdf5QuietErrors& operator=(const Hdf5QuietErrors&) = delete;
  ~Hdf5QuietErrors() { H5Eset_auto2(H5E_DEFAULT, saved_func_, saved_data_); }

 private:
  H5E_auto2_t saved_func_ = nullptr;
  void* saved_data_ = nullptr;
};

// Throws rehyat::Error "<path>: <what>: <HDF5 error stack, condensed>".
[[noreturn]] void throw_hdf5_error(const std::string& path, const std::string& what);

struct Hdf5DatasetInfo {
  std::string path;                  // full path inside the file, "/blocks/3/attn_in"
  Shape shape;                       // [] for a scalar dataset
  std::optional<DType> dtype;        // when the element type is one of ours
  std::string type_name;             // dtype name ("bf16"), else "u8", "string", "compound", ...
  size_t element_bytes = 0;
  uint64_t storage_bytes = 0;        // bytes allocated in the file (after compression)
  Shape chunk_shape;                 // empty unless chunked
  std::vector<std::string> filters;  // pipeline order: "shuffle", "gzip(4)", ...

  int64_t numel() const { return shape_numel(shape); }
  uint64_t logical_bytes() const { return uint64_t(numel()) * element_bytes; }
};

// True when the file carries the HDF5 signature (at offset 0 or after a user block).
bool is_hdf5_file(const std::string& path);

// Every dataset of the file, group by group in name order (each object once, even if
// linked twice).
std::vector<Hdf5DatasetInfo> list_hdf5_datasets(const std::string& path);

}  // namespace rehyat
