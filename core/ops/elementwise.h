// Elementwise kernels: unary maps, binary maps (the caller broadcasts operands to the
// output shape with stride-0 views), gradient maps of the unary ops, dtype casts/copies,
// fill, and counter-based random fills.
//
// Contract for every function here (the adapter checks it): `out` has the same shape as
// the inputs; inputs and outputs may be strided (the CUDA kernels take a vectorized path
// when everything is contiguous); all floating operands share out's dtype except in
// copy(), which converts. Math runs in fp32 for bf16/f16/f32 and in fp64 for f64.
// Outputs are assigned (=), never accumulated.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace rehyat::kernels {

enum class UnaryOp : uint8_t {
  Neg,
  Exp,
  Log,
  Sqrt,
  Rsqrt,
  Square,
  Abs,
  Gelu,      // tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  Silu,      // x * sigmoid(x)
  Softplus,  // log(1 + exp(x)), linear above x = 20 like PyTorch
  Sigmoid,
  Pow,       // x ^ alpha
  Affine,    // alpha * x + beta (scalar add/mul/sub/rsub are this)
};

enum class BinaryOp : uint8_t {
  Add,
  Sub,
  Mul,
  Div,
  Maximum,
  // Gradient maps: out = a * f'(b) with a = upstream gradient, b = forward input.
  GeluGrad,
  SiluGrad,
  SoftplusGrad,
  SigmoidGrad,  // b is the forward *output* y: a * y * (1 - y)
  PowGrad,      // a * alpha * b^(alpha - 1)
};

const char* unary_op_name(UnaryOp op);
const char* binary_op_name(BinaryOp op);

void unary(UnaryOp op, Tensor& out, const Tensor& x, double alpha = 0.0, double beta = 0.0);
void binary(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b, double alpha = 0.0);
// dst = src converted to dst's dtype; same shape, any strides, same device.
void copy(Tensor& dst, const Tensor& src);
void fill(Tensor& dst, double value);
// Philox fills (see core/philox.h): dst must be contiguous and floating.
void random_uniform(Tensor& dst, uint64_t seed, uint64_t offset, double low, double high);
void random_normal(Tensor& dst, uint64_t seed, uint64_t offset, double mean, double stddev);

}  // namespace rehyat::kernels
