// Device-agnostic entry points for gather / scatter_add, and the CPU reference.
#include "core/ops/index.h"

#include "core/ops/cpu_loop.h"
#include "core/ops/dispatch.h"

namespace rehyat::kernels {

namespace {

// Checks that `index` matches `pattern`'s shape and `base` agrees with it off `dim`.
void check_index(const char* op, const Tensor& base, int dim, const Tensor& index, const Tensor& pattern) {
  check_same_device(op, base, {&index, &pattern});
  check_same_dtype(op, base, {&pattern});
  REHYAT_CHECK(index.dtype() == DType::I32 || index.dtype() == DType::I64, "{}: index must be i32 or i64, got {}",
               op, index.str());
  REHYAT_CHECK(index.shape() == pattern.shape(), "{}: index {} must have the shape of {}", op, index.str(),
               pattern.str());
  REHYAT_CHECK(base.dim() == pattern.dim() && dim >= 0 && dim < base.dim(), "{}: dim {} for {} and {}", op, dim,
               base.str(), pattern.str());
  for (int d = 0; d < base.dim(); ++d)
    REHYAT_CHECK(d == dim || base.size(d) == pattern.size(d), "{}: {} and {} differ in dim {}", op, base.str(),
                 pattern.str(), d);
  REHYAT_CHECK(base.is_contiguous() && pattern.is_contiguous(), "{}: data tensors must be contiguous ({}, {})", op,
               base.str(), pattern.str());
}

// Calls fn(pattern_offset, base_offset) for every element of pattern (row-major).
template <typename Fn>
void for_each_indexed(const char* op, const Tensor& base, int dim, const Tensor& index, const Tensor& pattern,
                      Fn&& fn) {
  const Shape base_strides = contiguous_strides(base.shape());
  const Shape pattern_strides = contiguous_strides(pattern.shape());
  Shape base_strides_off = base_strides;
  base_strides_off[dim] = 0;  // the index supplies this coordinate
  const int64_t size = base.size(dim);
  REHYAT_DISPATCH_INDEX(index.dtype(), op, {
    const scalar_t* ip = index.data<scalar_t>();
    cpu::for_each_offset<3>(pattern.shape(), {&pattern_strides, &index.strides(), &base_strides_off},
                       [&](const std::array<int64_t, 3>& o) {
                         int64_t k = int64_t(ip[o[1]]);
                         REHYAT_CHECK(k >= 0 && k < size, "{}: index {} out of range [0, {}) for {}", op, k, size,
                                      base.str());
                         fn(o[0], o[2] + k * base_strides[dim]);
                       });
  });
}

}  // namespace

void gather(Tensor& out, const Tensor& x, int dim, const Tensor& index) {
  check_index("gather", x, dim, index, out);
  REHYAT_CHECK(is_floating(x.dtype()), "gather: needs floating tensors, got {}", x.str());
  REHYAT_ROUTE_CUDA(out, cuda::gather(out, x, dim, index));
  REHYAT_DISPATCH_FLOAT(x.dtype(), "gather", {
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* op = out.data<scalar_t>();
    for_each_indexed("gather", x, dim, index, out, [&](int64_t po, int64_t bo) { op[po] = xp[bo]; });
  });
}

void scatter_add(Tensor& dst, int dim, const Tensor& index, const Tensor& src) {
  check_index("scatter_add", dst, dim, index, src);
  REHYAT_CHECK(is_floating(dst.dtype()), "scatter_add: needs floating tensors, got {}", dst.str());
  REHYAT_ROUTE_CUDA(dst, cuda::scatter_add(dst, dim, index, src));
  REHYAT_DISPATCH_FLOAT(dst.dtype(), "scatter_add", {
    const scalar_t* sp = src.data<scalar_t>();
    scalar_t* dp = dst.data<scalar_t>();
    for_each_indexed("scatter_add", dst, dim, index, src, [&](int64_t po, int64_t bo) {
      dp[bo] = from_double<scalar_t>(to_double(dp[bo]) + to_double(sp[po]));
    });
  });
}

}  // namespace rehyat::kernels
