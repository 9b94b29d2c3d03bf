// The feature map's fused elementwise stages: argument checks, the CPU loops, and the
// routing to CUDA (attention/feature_map_kernels.cu). Contract: feature_map_kernels.h.
#include "attention/feature_map_kernels.h"

#include <vector>

#include "attention/feature_map_math.h"
#include "core/check.h"
#include "core/ops/dispatch.h"

namespace rehyat::attention::kernels {

namespace {

struct Dims {
  int64_t heads, rows, cols;
};

DType high_dtype(DType product) { return product == DType::F64 ? DType::F64 : DType::F32; }

// A head-major product tensor [H, R, C] (contiguous, floating).
Dims head_major(const char* op, const Tensor& t, const char* name) {
  REHYAT_CHECK(t.defined() && t.dim() == 3 && t.is_contiguous() && is_floating(t.dtype()),
               "{}: {} must be a contiguous floating [H, R, C] tensor, got {}", op, name, t.str());
  return {t.size(0), t.size(1), t.size(2)};
}

void expect_like(const char* op, const Tensor& t, const char* name, const Tensor& ref, const char* ref_name) {
  REHYAT_CHECK(t.defined() && t.shape() == ref.shape() && t.dtype() == ref.dtype() && t.device() == ref.device() &&
                   t.is_contiguous(),
               "{}: {} {} must be contiguous and match {} {}", op, name, t.defined() ? t.str() : "(undefined)",
               ref_name, ref.str());
}

// A [H, C] tensor (bias or its gradient) in the high dtype of `product`, on its device.
void expect_bias(const char* op, const Tensor& t, const char* name, const Dims& n, const Tensor& product) {
  REHYAT_CHECK(t.defined() && t.dim() == 2 && t.size(0) == n.heads && t.size(1) == n.cols && t.is_contiguous() &&
                   t.dtype() == high_dtype(product.dtype()) && t.device() == product.device(),
               "{}: {} must be a contiguous {} [{}, {}] tensor on {}, got {}", op, name,
               dtype_name(high_dtype(product.dtype())), n.heads, n.cols, product.device().str(),
               t.defined() ? t.str() : "(undefined)");
}

// A token-major tensor [..., H, C] with R rows (φ or dφ), high dtype, contiguous.
void expect_token_major(const char* op, const Tensor& t, const char* name, const Dims& n, const Tensor& product) {
  REHYAT_CHECK(t.defined() && t.dim() >= 2 && t.size(-2) == n.heads && t.size(-1) == n.cols &&
                   t.numel() == n.rows * n.heads * n.cols && t.is_contiguous() &&
                   t.dtype() == high_dtype(product.dtype()) && t.device() == product.device(),
               "{}: {} must be a contiguous {} [..., {}, {}] tensor of {} rows on {}, got {}", op, name,
               dtype_name(high_dtype(product.dtype())), n.heads, n.cols, n.rows, product.device().str(),
               t.defined() ? t.str() : "(undefined)");
}

// a2 comes out of its product in the high dtype (f32 / f64): φ is an exponential-like
// function of it, so it is not rounded to the product dtype first.
void expect_high(const char* op, const Tensor& t, const char* name) {
  REHYAT_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64, "{}: {} must be f32 or f64, got {}", op, name,
               t.str());
}

void check_degree(const char* op, const Dims& n, int64_t degree) {
  REHYAT_CHECK(degree >= 1 && degree <= 3 && n.cols % degree == 0, "{}: {} features do not split into {} parts", op,
               n.cols, degree);
}

// --- CPU loops (math in float, double for f64, like the CUDA kernels) ----------------------

template <typename T>
using host_acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename G, typename F>
void hidden_forward_cpu(G* g, const G* a1, const F* b1, const Dims& n, FeatureActivation act) {
  using A = host_acc<G>;
  for (int64_t h = 0; h < n.heads; ++h)
    for (int64_t r = 0; r < n.rows; ++r) {
      const int64_t base = (h * n.rows + r) * n.cols;
      for (int64_t c = 0; c < n.cols; ++c) {
        const A u = A(to_double(a1[base + c])) + A(b1[h * n.cols + c]);
        g[base + c] = from_double<G>(double(phi_math::activation(act, u)));
      }
    }
}

// out[h, r, c] = value(h, r, i) with i = (h R + r) C + c, rounded to G; bias_grad[h, c] =
// Σ_r value (unrounded, summed in f64). value reads its inputs at i before out[i] is
// written, so out may be one of them.
template <typename G, typename F, typename Value>
void map_with_column_sums(G* out, F* bias_grad, const Dims& n, Value&& value) {
  std::vector<double> sums(size_t(n.cols));
  for (int64_t h = 0; h < n.heads; ++h) {
    std::fill(sums.begin(), sums.end(), 0.0);
    for (int64_t r = 0; r < n.rows; ++r)
      for (int64_t c = 0; c < n.cols; ++c) {
        const int64_t i = (h * n.rows + r) * n.cols + c;
        const double v = double(value(h, r, c, i));
        out[i] = from_double<G>(v);
        sums[size_t(c)] += v;
      }
    for (int64_t c = 0; c < n.cols; ++c) bias_grad[h * n.cols + c] = F(sums[size_t(c)]);
  }
}

template <typename G, typename F>
void hidden_backward_cpu(G* du, F* db1, const G* dg, const G* a1, const F* b1, const Dims& n,
                         FeatureActivation act) {
  using A = host_acc<G>;
  map_with_column_sums(du, db1, n, [&](int64_t h, int64_t, int64_t c, int64_t i) {
    const A u = A(to_double(a1[i])) + A(b1[h * n.cols + c]);
    return A(to_double(dg[i])) * phi_math::activation_grad(act, u);
  });
}

template <typename F>
void features_forward_cpu(F* phi, const F* a2, const F* b2, const Dims& n, int64_t degree) {
  const int64_t part = n.cols / degree;
  for (int64_t r = 0; r < n.rows; ++r)
    for (int64_t h = 0; h < n.heads; ++h)
      for (int64_t c = 0; c < n.cols; ++c) {
        const F z = a2[(h * n.rows + r) * n.cols + c] + b2[h * n.cols + c];
        phi[(r * n.heads + h) * n.cols + c] = phi_math::feature(z, int(c / part) + 1);
      }
}

template <typename G, typename F>
void features_backward_cpu(G* dz, F* db2, const F* dphi, const F* a2, const F* b2, const Dims& n, int64_t degree) {
  using A = host_acc<G>;
  const int64_t part = n.cols / degree;
  map_with_column_sums(dz, db2, n, [&](int64_t h, int64_t r, int64_t c, int64_t i) {
    const A z = A(a2[i]) + A(b2[h * n.cols + c]);
    return A(dphi[(r * n.heads + h) * n.cols + c]) * phi_math::feature_grad(z, int(c / part) + 1);
  });
}

// Binds scalar_t to the product dtype's host type and `high_t` to float or double.
#define REHYAT_PHI_DISPATCH(dtype, what, ...)                                                        \
  REHYAT_DISPATCH_FLOAT(dtype, what, {                                                               \
    using high_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;             \
    __VA_ARGS__;                                                                                     \
  })

}  // namespace

void phi_hidden_forward(Tensor& g, const Tensor& a1, const Tensor& b1, FeatureActivation act) {
  const char* op = "phi_hidden_forward";
  const Dims n = head_major(op, a1, "a1");
  expect_like(op, g, "g", a1, "a1");
  expect_bias(op, b1, "b1", n, a1);
  REHYAT_ROUTE_CUDA(g, cuda::phi_hidden_forward(g, a1, b1, act));
  REHYAT_PHI_DISPATCH(a1.dtype(), op, hidden_forward_cpu(g.data<scalar_t>(), a1.data<scalar_t>(), b1.data<high_t>(), n, act));
}

void phi_hidden_backward(Tensor& du, Tensor& db1, const Tensor& dg, const Tensor& a1, const Tensor& b1,
                         FeatureActivation act) {
  const char* op = "phi_hidden_backward";
  const Dims n = head_major(op, a1, "a1");
  expect_like(op, dg, "dg", a1, "a1");
  expect_like(op, du, "du", a1, "a1");
  expect_bias(op, b1, "b1", n, a1);
  expect_bias(op, db1, "db1", n, a1);
  REHYAT_ROUTE_CUDA(du, cuda::phi_hidden_backward(du, db1, dg, a1, b1, act));
  REHYAT_PHI_DISPATCH(a1.dtype(), op,
                      hidden_backward_cpu(du.data<scalar_t>(), db1.data<high_t>(), dg.data<scalar_t>(),
                                          a1.data<scalar_t>(), b1.data<high_t>(), n, act));
}

void phi_features_forward(Tensor& phi, const Tensor& a2, const Tensor& b2, int64_t degree) {
  const char* op = "phi_features_forward";
  const Dims n = head_major(op, a2, "a2");
  expect_high(op, a2, "a2");
  check_degree(op, n, degree);
  expect_bias(op, b2, "b2", n, a2);
  expect_token_major(op, phi, "phi", n, a2);
  REHYAT_ROUTE_CUDA(phi, cuda::phi_features_forward(phi, a2, b2, degree));
  if (a2.dtype() == DType::F64)
    features_forward_cpu(phi.data<double>(), a2.data<double>(), b2.data<double>(), n, degree);
  else
    features_forward_cpu(phi.data<float>(), a2.data<float>(), b2.data<float>(), n, degree);
}

void phi_features_backward(Tensor& dz, Tensor& db2, const Tensor& dphi, const Tensor& a2, const Tensor& b2,
                           int64_t degree) {
  const char* op = "phi_features_backward";
  const Dims n = head_major(op, a2, "a2");
  expect_high(op, a2, "a2");
  check_degree(op, n, degree);
  REHYAT_CHECK(dz.defined() && dz.shape() == a2.shape() && dz.device() == a2.device() && dz.is_contiguous() &&
                   is_floating(dz.dtype()) && high_dtype(dz.dtype()) == a2.dtype(),
               "{}: dz {} must be contiguous, shaped like a2 {}, in a dtype whose high dtype is a2's", op,
               dz.defined() ? dz.str() : "(undefined)", a2.str());
  expect_bias(op, b2, "b2", n, a2);
  expect_bias(op, db2, "db2", n, a2);
  expect_token_major(op, dphi, "dphi", n, a2);
  REHYAT_ROUTE_CUDA(dz, cuda::phi_features_backward(dz, db2, dphi, a2, b2, degree));
  REHYAT_PHI_DISPATCH(dz.dtype(), op,
                      features_backward_cpu(dz.data<scalar_t>(), db2.data<high_t>(), dphi.data<high_t>(),
                                            a2.data<high_t>(), b2.data<high_t>(), n, degree));
}

}  // namespace rehyat::attention::kernels
