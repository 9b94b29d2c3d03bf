#include "core/tensor.h"

#include <algorithm>
#include <numeric>

#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/allocator.h"
#include "core/ops/elementwise.h"

#ifdef REHYAT_CUDA
#include "core/cuda_context.h"
#endif

namespace rehyat {

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int i = int(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

int wrap_dim(int dim, int rank, const char* what) {
  int d = dim < 0 ? dim + rank : dim;
  REHYAT_CHECK(d >= 0 && d < std::max(rank, 1), "{}: dim {} out of range for a {}-d tensor", what, dim, rank);
  return d;
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  void* p = device_allocate(device, bytes);
  return std::make_shared<Storage>(p, bytes, device, [device, p] { device_free(device, p); });
}

// --- factories -------------------------------------------------------------------------

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype,
                            const Shape& strides, int64_t offset) {
  for (int64_t d : shape) REHYAT_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
  Tensor t;
  t.storage_ = std::move(storage);
  t.shape_ = shape;
  t.strides_ = strides.empty() ? contiguous_strides(shape) : strides;
  t.offset_ = offset;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) REHYAT_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
  size_t bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  return from_storage(Storage::allocate(bytes, device), shape, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  kernels::fill(t, value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype, Device device) {
  REHYAT_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: {} values for shape {}", values.size(),
               shape_str(shape));
  Tensor host = empty(shape, dtype, Device::cpu());
  REHYAT_DISPATCH_ALL(dtype, "from_vector", {
    scalar_t* p = host.data<scalar_t>();
    for (size_t i = 0; i < values.size(); ++i) p[i] = from_double<scalar_t>(values[i]);
  });
  return device.is_cpu() ? host : host.to(device);
}

Tensor Tensor::arange(int64_t n, DType dtype, Device device) {
  std::vector<double> v(size_t(std::max<int64_t>(n, 0)));
  std::iota(v.begin(), v.end(), 0.0);
  return from_vector(v, {n}, dtype, device);
}

Tensor Tensor::rand(const Shape& shape, uint64_t seed, uint64_t offset, DType dtype, Device device, double low,
                    double high) {
  Tensor t = empty(shape, dtype, device);
  kernels::random_uniform(t, seed, offset, low, high);
  return t;
}

Tensor Tensor::randn(const Shape& shape, uint64_t seed, uint64_t offset, DType dtype, Device device, double mean,
                     double stddev) {
  Tensor t = empty(shape, dtype, device);
  kernels::random_normal(t, seed, offset, mean, stddev);
  return t;
}

// --- metadata ------------------------------------------------------------------------

int64_t Tensor::size(int d) const { return shape_[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int d) const { return strides_[wrap_dim(d, dim(), "stride")]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (shape_[i] == 1) continue;
    if (strides_[i] != expected) return false;
    expected *= std::max<int64_t>(shape_[i], 1);  // as contiguous_strides: empty tensors made by empty() qualify
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  return fmt::format("{}{} {}", dtype_name(dtype_), shape_str(shape_), device().str());
}

void* Tensor::data_ptr() const {
  REHYAT_CHECK(defined(), "data_ptr() of an undefined tensor");
  return static_cast<char*>(storage_->data) + offset_ * int64_t(dtype_size(dtype_));
}

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t offset) const {
  Tensor t;
  t.storage_ = storage_;
  t.shape_ = shape;
  t.strides_ = strides;
  t.offset_ = offset;
  t.dtype_ = dtype_;
  return t;
}

Tensor Tensor::detach() const { return as_strided(shape_, strides_, offset_); }

// --- views -------------------------------------------------------------------------------

namespace {

Shape infer_shape(const Shape& requested, int64_t numel, const Tensor& t) {
  Shape s = requested;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      REHYAT_CHECK(infer < 0, "reshape {} -> {}: more than one -1", t.str(), shape_str(requested));
      infer = int(i);
    } else {
      REHYAT_CHECK(s[i] >= 0, "reshape {} -> {}: negative size", t.str(), shape_str(requested));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    REHYAT_CHECK(known > 0 && numel % known == 0, "reshape {} -> {}: sizes do not divide", t.str(),
                 shape_str(requested));
    s[infer] = numel / known;
  }
  REHYAT_CHECK(shape_numel(s) == numel, "reshape {} -> {}: element counts differ", t.str(), shape_str(requested));
  return s;
}

// Strides for viewing (shape, strides) as new_shape without a copy; false if impossible.
// Old dims are grouped into runs that are contiguous with each other; each run must be
// covered exactly by consecutive new dims (the same rule as PyTorch's view).
bool view_strides(const Shape& shape, const Shape& strides, const Shape& new_shape, Shape& out) {
  out.assign(new_shape.size(), 1);
  if (shape.empty() || shape_numel(shape) == 0) {
    out = contiguous_strides(new_shape);
    return true;
  }
  int64_t view_d = int64_t(new_shape.size()) - 1;
  int64_t chunk_base_stride = strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

}  // namespace

Tensor Tensor::view(const Shape& shape) const {
  Shape s = infer_shape(shape, numel(), *this);
  Shape st;
  REHYAT_CHECK(view_strides(shape_, strides_, s, st),
               "view {} -> {}: the strides {} cannot express this shape without a copy (use reshape)", str(),
               shape_str(s), shape_str(strides_));
  Tensor out = as_strided(s, st, offset_);
  if (autograd::should_record({this})) {
    Shape in_shape = shape_;
    autograd::record("view", out, {*this}, [in_shape](const Tensor& g, const Node&) {
      return std::vector<Tensor>{g.reshape(in_shape)};
    });
  }
  return out;
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape s = infer_shape(shape, numel(), *this);
  Shape st;
  if (view_strides(shape_, strides_, s, st)) return view(s);
  return contiguous().view(s);
}

Tensor Tensor::permute(const std::vector<int>& dims) const {
  REHYAT_CHECK(int(dims.size()) == dim(), "permute {} of {}: needs {} dims", fmt::join(dims, ","), str(), dim());
  Shape s(dims.size()), st(dims.size());
  std::vector<int> inverse(dims.size(), -1);
  for (size_t i = 0; i < dims.size(); ++i) {
    int d = wrap_dim(dims[i], dim(), "permute");
    REHYAT_CHECK(inverse[d] < 0, "permute: dim {} repeated", d);
    inverse[d] = int(i);
    s[i] = shape_[d];
    st[i] = strides_[d];
  }
  Tensor out = as_strided(s, st, offset_);
  if (autograd::should_record({this})) {
    autograd::record("permute", out, {*this}, [inverse](const Tensor& g, const Node&) {
      return std::vector<Tensor>{g.permute(inverse)};
    });
  }
  return out;
}

Tensor Tensor::transpose(int a, int b) const {
  std::vector<int> dims(dim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[wrap_dim(a, dim(), "transpose")], dims[wrap_dim(b, dim(), "transpose")]);
  return permute(dims);
}

Tensor Tensor::slice(int d, int64_t start, int64_t end) const {
  d = wrap_dim(d, dim(), "slice");
  int64_t n = shape_[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  end = std::min(end, n);
  REHYAT_CHECK(start >= 0 && start <= end, "slice [{}, {}) of dim {} of {}", start, end, d, str());
  Shape s = shape_;
  s[d] = end - start;
  Tensor out = as_strided(s, strides_, offset_ + start * strides_[d]);
  if (autograd::should_record({this})) {
    Shape in_shape = shape_;
    DType dt = dtype_;
    autograd::record("slice", out, {*this}, [in_shape, dt, d, start, end](const Tensor& g, const Node&) {
      Tensor gx = Tensor::zeros(in_shape, dt, g.device());
      Tensor dst = gx.slice(d, start, end);
      dst.copy_(g);
      return std::vector<Tensor>{gx};
    });
  }
  return out;
}

Tensor Tensor::select(int d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  if (index < 0) index += shape_[d];
  REHYAT_CHECK(index >= 0 && index < shape_[d], "select index {} of dim {} of {}", index, d, str());
  return slice(d, index, index + 1).squeeze(d);
}

std::vector<Tensor> Tensor::chunk(int64_t chunks, int d) const {
  d = wrap_dim(d, dim(), "chunk");
  REHYAT_CHECK(chunks > 0, "chunk: {} chunks", chunks);
  int64_t n = shape_[d];
  int64_t step = (n + chunks - 1) / chunks;
  std::vector<Tensor> out;
  for (int64_t s = 0; s < n; s += step) out.push_back(slice(d, s, std::min(n, s + step)));
  return out;
}

Tensor Tensor::unsqueeze(int d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape_;
  s.insert(s.begin() + d, 1);
  return view(s);
}

Tensor Tensor::squeeze(int d) const {
  d = wrap_dim(d, dim(), "squeeze");
  REHYAT_CHECK(shape_[d] == 1, "squeeze dim {} of {}: size is not 1", d, str());
  Shape s = shape_;
  s.erase(s.begin() + d);
  return view(s);
}

Tensor Tensor::expand(const Shape& shape) const {
  REHYAT_CHECK(int(shape.size()) >= dim(), "expand {} to {}: fewer dims", str(), shape_str(shape));
  Shape st(shape.size(), 0);
  size_t lead = shape.size() - shape_.size();
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) continue;
    int64_t have = shape_[i - lead];
    if (have == shape[i]) {
      st[i] = strides_[i - lead];
    } else {
      REHYAT_CHECK(have == 1, "expand {} to {}: dim {} has size {}", str(), shape_str(shape), i, have);
    }
  }
  Tensor out = as_strided(shape, st, offset_);
  if (autograd::should_record({this})) {
    Shape in_shape = shape_;
    autograd::record("expand", out, {*this}, [in_shape](const Tensor& g, const Node&) {
      return std::vector<Tensor>{sum_to(g, in_shape)};
    });
  }
  return out;
}

// --- copies ---------------------------------------------------------------------------

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device());
  {
    autograd::NoGradGuard guard;
    kernels::copy(out, *this);
  }
  if (autograd::should_record({this})) {
    autograd::record("clone", out, {*this}, [](const Tensor& g, const Node&) { return std::vector<Tensor>{g}; });
  }
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor out = empty(shape_, dtype, device());
  kernels::copy(out, *this);
  if (is_floating(dtype) && is_floating(dtype_) && autograd::should_record({this})) {
    DType back = dtype_;
    autograd::record("cast", out, {*this}, [back](const Tensor& g, const Node&) {
      return std::vector<Tensor>{g.to(back)};
    });
  }
  return out;
}

Tensor Tensor::to(Device device) const {
  if (device == this->device()) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape_, dtype_, device);
  if (nbytes() > 0) {
#ifdef REHYAT_CUDA
    Device from = this->device();
    if (from.is_cuda()) cuda::synchronize(from);
    cudaMemcpyKind kind = from.is_cpu() ? cudaMemcpyHostToDevice
                          : device.is_cpu() ? cudaMemcpyDeviceToHost
                                            : cudaMemcpyDeviceToDevice;
    Device on = device.is_cuda() ? device : from;
    cuda::set_device(on.index);
    CUDA_CHECK(cudaMemcpyAsync(out.data_ptr(), src.data_ptr(), nbytes(), kind, cuda::stream(on)));
    CUDA_CHECK(cudaStreamSynchronize(cuda::stream(on)));
#else
    REHYAT_FAIL("cannot move {} to {}: rehyat was built without CUDA", str(), device.str());
#endif
  }
  if (autograd::should_record({this})) {
    Device back = this->device();
    autograd::record("to_device", out, {*this}, [back](const Tensor& g, const Node&) {
      return std::vector<Tensor>{g.to(back)};
    });
  }
  return out;
}

void Tensor::copy_(const Tensor& src) {
  REHYAT_CHECK(src.shape() == shape_, "copy_: source {} into {}", src.str(), str());
  if (src.device() == device()) {
    kernels::copy(*this, src);
    return;
  }
  Tensor moved = src.detach().to(device());
  kernels::copy(*this, moved);
}

void Tensor::fill_(double value) { kernels::fill(*this, value); }

std::vector<double> Tensor::to_vector() const {
  Tensor host = detach().to(Device::cpu()).contiguous();
  std::vector<double> v(size_t(host.numel()));
  REHYAT_DISPATCH_ALL(dtype_, "to_vector", {
    const scalar_t* p = host.data<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = to_double(p[i]);
  });
  return v;
}

double Tensor::item() const {
  REHYAT_CHECK(numel() == 1, "item() of {} with {} elements", str(), numel());
  return to_vector()[0];
}

}  // namespace rehyat
