// The differentiable op library: each function runs the device kernels (core/ops) for
// the forward pass and records its gradient rule, which sits right below the forward
// in the matching .cpp file. Broadcasting follows NumPy rules. Floating operands of one
// op must share a dtype (cast explicitly with to(dtype)); errors name the op and shapes.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace rehyat {

// --- elementwise ---------------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double s);
Tensor mul(const Tensor& a, double s);
Tensor affine(const Tensor& x, double alpha, double beta);  // alpha * x + beta
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor natural_log(const Tensor& x);  // not `log`: that name is the logging namespace (core/log.h)
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor square(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);
Tensor gelu(const Tensor& x);  // tanh approximation
Tensor silu(const Tensor& x);
Tensor softplus(const Tensor& x);
Tensor sigmoid(const Tensor& x);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, double s) { return add(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return add(a, -s); }
inline Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return mul(a, s); }
inline Tensor operator-(const Tensor& a) { return neg(a); }

// Output shape of broadcasting a and b; throws naming `op` when incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
// Sums x over the broadcast dimensions so that it has `shape` (gradient of expand).
Tensor sum_to(const Tensor& x, const Shape& shape);

// --- reductions ------------------------------------------------------------------------
Tensor sum(const Tensor& x, int dim, bool keepdim = false);
Tensor sum(const Tensor& x);  // all elements, 0-d result
Tensor mean(const Tensor& x, int dim, bool keepdim = false);
Tensor mean(const Tensor& x);
// Maximum over dim; the gradient goes to the (first) arg-max.
Tensor max(const Tensor& x, int dim, bool keepdim = false);
// Values and i64 arg-max indices.
std::pair<Tensor, Tensor> max_with_indices(const Tensor& x, int dim, bool keepdim = false);

// --- normalization and softmax --------------------------------------------------------
Tensor softmax(const Tensor& x, int dim = -1);
// weight / bias may be undefined Tensors (no affine).
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);

// --- products ---------------------------------------------------------------------------
// [..., m, k] @ [..., k, n]; batch dims broadcast when one side has none.
Tensor matmul(const Tensor& a, const Tensor& b);
// x [..., in] @ weight[out, in]^T + bias[out] (bias may be undefined).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// --- structure -------------------------------------------------------------------------
Tensor concat(const std::vector<Tensor>& tensors, int dim);
Tensor index_select(const Tensor& x, int dim, const Tensor& index);  // index: 1-D i32/i64
Tensor gather(const Tensor& x, int dim, const Tensor& index);        // torch.gather

// --- losses --------------------------------------------------------------------------
// mean((pred - target)^2) over all elements, 0-d result.
Tensor mse_loss(const Tensor& pred, const Tensor& target);

}  // namespace rehyat
