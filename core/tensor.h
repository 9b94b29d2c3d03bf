// Tensor: a strided view over shared storage with a runtime dtype and device.
//
// Views (reshape, view, permute, transpose, slice, select, chunk, expand, unsqueeze,
// squeeze) share storage and never copy; reshape() copies only when the strides cannot
// express the new shape. All view methods are differentiable: when autograd is recording
// and the tensor requires grad they attach a node (see autograd/).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"

namespace rehyat {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

// Owns one allocation (device memory, host memory, or an external buffer such as an
// mmap'd file region kept alive by `release`).
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  std::function<void()> release;
  Storage(void* d, size_t b, Device dev, std::function<void()> rel)
      : data(d), bytes(b), device(dev), release(std::move(rel)) {}
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (release) release();
  }
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device);
};

struct AutogradMeta;  // autograd/graph.h

class Tensor {
 public:
  Tensor() = default;

  // --- factories ---------------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32,
                     Device device = Device::cpu());
  // Copies host values (converted to dtype) into a new tensor.
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                            DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor arange(int64_t n, DType dtype = DType::I64, Device device = Device::cpu());
  // Counter-based random numbers (Philox4x32-10): element i of the result uses counter
  // offset + i, so CPU and CUDA give identical values for the same seed and offset.
  static Tensor rand(const Shape& shape, uint64_t seed, uint64_t offset = 0, DType dtype = DType::F32,
                     Device device = Device::cpu(), double low = 0.0, double high = 1.0);
  static Tensor randn(const Shape& shape, uint64_t seed, uint64_t offset = 0, DType dtype = DType::F32,
                      Device device = Device::cpu(), double mean = 0.0, double stddev = 1.0);
  // Wraps existing memory (not owned unless storage->release does so).
  static Tensor from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype,
                             const Shape& strides = {}, int64_t offset = 0);

  // --- metadata ----------------------------------------------------------------------
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t offset() const { return offset_; }
  int dim() const { return int(shape_.size()); }
  int64_t size(int d) const;     // negative d counts from the end
  int64_t stride(int d) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::cpu(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  std::string str() const;  // "bf16[2, 3] cuda:0"

  void* data_ptr() const;  // address of element 0 (storage + offset)
  template <typename T>
  T* data() const {
    REHYAT_CHECK(DTypeOf<T>::value == dtype_, "tensor data<{}>() on a {} tensor",
                 dtype_name(DTypeOf<T>::value), dtype_name(dtype_));
    return static_cast<T*>(data_ptr());
  }

  // --- views (differentiable) -------------------------------------------------------
  Tensor view(const Shape& shape) const;     // must be expressible without a copy; -1 infers
  Tensor reshape(const Shape& shape) const;  // view when possible, else contiguous copy
  Tensor flatten() const { return reshape({-1}); }
  Tensor permute(const std::vector<int>& dims) const;
  Tensor transpose(int a, int b) const;
  Tensor slice(int dim, int64_t start, int64_t end) const;  // [start, end), step 1
  Tensor select(int dim, int64_t index) const;              // removes dim
  std::vector<Tensor> chunk(int64_t chunks, int dim) const;
  Tensor unsqueeze(int dim) const;
  Tensor squeeze(int dim) const;
  Tensor expand(const Shape& shape) const;  // broadcast view, stride 0 on expanded dims

  // --- copies (differentiable where it makes sense) ---------------------------------
  Tensor contiguous() const;  // self when already contiguous
  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  // Copies src into this tensor's elements (shapes must match, dtypes may differ).
  // Not recorded by autograd.
  void copy_(const Tensor& src);
  void fill_(double value);

  // Host read-back (any device, any dtype) for tests and tools.
  std::vector<double> to_vector() const;
  double item() const;

  // --- autograd ------------------------------------------------------------------------
  bool requires_grad() const;
  Tensor& set_requires_grad(bool enabled);
  // Accumulated gradient (undefined until a backward reaches this leaf).
  Tensor grad() const;
  void zero_grad();
  // Reverse-mode pass from this tensor. A scalar may omit `grad_output` (ones).
  void backward() const;
  void backward(const Tensor& grad_output, bool retain_graph = false) const;
  // Same storage, no autograd history.
  Tensor detach() const;
  const std::shared_ptr<AutogradMeta>& autograd_meta() const { return autograd_; }
  std::shared_ptr<AutogradMeta>& mutable_autograd_meta() { return autograd_; }

  // Raw view constructor: no checks beyond bounds, no autograd.
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset) const;

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Shape strides_;  // in elements
  int64_t offset_ = 0;
  DType dtype_ = DType::F32;
  std::shared_ptr<AutogradMeta> autograd_;
};

// Normalizes a possibly negative dim against rank; throws naming `what`.
int wrap_dim(int dim, int rank, const char* what);

}  // namespace rehyat
