// Device-agnostic entry points for axis reductions, and the CPU reference.
#include "core/ops/reduce.h"

#include <cmath>

#include "core/ops/dispatch.h"

namespace rehyat::kernels {

namespace {
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

void check_reduce(const char* op, const Tensor& out, const Tensor& x, int64_t outer, int64_t n, int64_t inner) {
  check_same_device(op, out, {&x});
  check_same_dtype(op, out, {&x});
  REHYAT_CHECK(is_floating(x.dtype()), "{}: needs a floating tensor, got {}", op, x.str());
  REHYAT_CHECK(x.is_contiguous() && out.is_contiguous(), "{}: needs contiguous tensors ({} -> {})", op, x.str(),
               out.str());
  REHYAT_CHECK(outer * n * inner == x.numel() && outer * inner == out.numel(),
               "{}: [{}, {}, {}] does not match {} -> {}", op, outer, n, inner, x.str(), out.str());
}
}  // namespace

void sum_axis(Tensor& out, const Tensor& x, int64_t outer, int64_t n, int64_t inner, double scale) {
  check_reduce("sum", out, x, outer, n, inner);
  REHYAT_ROUTE_CUDA(out, cuda::sum_axis(out, x, outer, n, inner, scale));
  REHYAT_DISPATCH_FLOAT(x.dtype(), "sum", {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* op = out.data<scalar_t>();
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) {
        A acc = 0;
        for (int64_t j = 0; j < n; ++j) acc += A(to_double(xp[(o * n + j) * inner + i]));
        op[o * inner + i] = from_double<scalar_t>(double(acc) * scale);
      }
  });
}

void max_axis(Tensor& out, Tensor& argmax, const Tensor& x, int64_t outer, int64_t n, int64_t inner) {
  check_reduce("max", out, x, outer, n, inner);
  check_same_device("max", out, {&argmax});
  REHYAT_CHECK(argmax.dtype() == DType::I64 && argmax.is_contiguous() && argmax.numel() == out.numel(),
               "max: arg-max must be contiguous i64 with {} elements, got {}", out.numel(), argmax.str());
  REHYAT_CHECK(n > 0, "max over an empty axis of {}", x.str());
  REHYAT_ROUTE_CUDA(out, cuda::max_axis(out, argmax, x, outer, n, inner));
  REHYAT_DISPATCH_FLOAT(x.dtype(), "max", {
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* op = out.data<scalar_t>();
    int64_t* ip = argmax.data<int64_t>();
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) {
        double best = to_double(xp[o * n * inner + i]);
        int64_t best_j = 0;
        for (int64_t j = 1; j < n && !std::isnan(best); ++j) {
          double v = to_double(xp[(o * n + j) * inner + i]);
          if (v > best || std::isnan(v)) {
            best = v;
            best_j = j;
          }
        }
        op[o * inner + i] = from_double<scalar_t>(best);
        ip[o * inner + i] = best_j;
      }
  });
}

}  // namespace rehyat::kernels
