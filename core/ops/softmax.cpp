// Device-agnostic entry points for softmax over the last axis, and the CPU reference.
#include "core/ops/softmax.h"

#include <cmath>

#include "core/ops/dispatch.h"

namespace rehyat::kernels {

namespace {
void check_softmax(const char* op, const Tensor& ref, std::initializer_list<const Tensor*> others) {
  check_same_device(op, ref, others);
  check_same_dtype(op, ref, others);
  check_same_shape(op, ref, others);
  REHYAT_CHECK(is_floating(ref.dtype()) && ref.dim() >= 1, "{}: needs a floating tensor, got {}", op, ref.str());
  REHYAT_CHECK(ref.is_contiguous(), "{}: needs contiguous tensors, got {}", op, ref.str());
  for (const Tensor* t : others) REHYAT_CHECK(t->is_contiguous(), "{}: needs contiguous tensors, got {}", op, t->str());
}
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
}  // namespace

void softmax_forward(Tensor& y, const Tensor& x) {
  check_softmax("softmax", x, {&y});
  REHYAT_ROUTE_CUDA(x, cuda::softmax_forward(y, x));
  const int64_t cols = x.size(-1), rows = cols ? x.numel() / cols : 0;
  REHYAT_DISPATCH_FLOAT(x.dtype(), "softmax", {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* yp = y.data<scalar_t>();
    for (int64_t r = 0; r < rows; ++r) {
      A mx = -INFINITY;
      for (int64_t c = 0; c < cols; ++c) mx = std::max(mx, A(to_double(xp[r * cols + c])));
      A total = 0;
      for (int64_t c = 0; c < cols; ++c) total += std::exp(A(to_double(xp[r * cols + c])) - mx);
      for (int64_t c = 0; c < cols; ++c)
        yp[r * cols + c] = from_double<scalar_t>(std::exp(A(to_double(xp[r * cols + c])) - mx) / total);
    }
  });
}

void softmax_backward(Tensor& dx, const Tensor& dy, const Tensor& y) {
  check_softmax("softmax_backward", y, {&dy, &dx});
  REHYAT_ROUTE_CUDA(y, cuda::softmax_backward(dx, dy, y));
  const int64_t cols = y.size(-1), rows = cols ? y.numel() / cols : 0;
  REHYAT_DISPATCH_FLOAT(y.dtype(), "softmax_backward", {
    using A = acc_t<scalar_t>;
    const scalar_t* yp = y.data<scalar_t>();
    const scalar_t* dyp = dy.data<scalar_t>();
    scalar_t* dxp = dx.data<scalar_t>();
    for (int64_t r = 0; r < rows; ++r) {
      A dot = 0;
      for (int64_t c = 0; c < cols; ++c) dot += A(to_double(dyp[r * cols + c])) * A(to_double(yp[r * cols + c]));
      for (int64_t c = 0; c < cols; ++c)
        dxp[r * cols + c] =
            from_double<scalar_t>(A(to_double(yp[r * cols + c])) * (A(to_double(dyp[r * cols + c])) - dot));
    }
  });
}

}  // namespace rehyat::kernels
