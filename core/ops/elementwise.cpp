// Device-agnostic entry points for the elementwise kernels (validation, then the CUDA
// adapter or the CPU reference below). The CPU reference computes in double for f64
// and in float otherwise, with the same formulas as elementwise.cu.
#include "core/ops/elementwise.h"

#include <cmath>

#include "core/ops/cpu_loop.h"
#include "core/ops/dispatch.h"
#include "core/philox.h"

namespace rehyat::kernels {

const char* unary_op_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::Neg: return "neg";
    case UnaryOp::Exp: return "exp";
    case UnaryOp::Log: return "log";
    case UnaryOp::Sqrt: return "sqrt";
    case UnaryOp::Rsqrt: return "rsqrt";
    case UnaryOp::Square: return "square";
    case UnaryOp::Abs: return "abs";
    case UnaryOp::Gelu: return "gelu";
    case UnaryOp::Silu: return "silu";
    case UnaryOp::Softplus: return "softplus";
    case UnaryOp::Sigmoid: return "sigmoid";
    case UnaryOp::Pow: return "pow";
    case UnaryOp::Affine: return "affine";
  }
  return "?";
}

const char* binary_op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::Add: return "add";
    case BinaryOp::Sub: return "sub";
    case BinaryOp::Mul: return "mul";
    case BinaryOp::Div: return "div";
    case BinaryOp::Maximum: return "maximum";
    case BinaryOp::GeluGrad: return "gelu_grad";
    case BinaryOp::SiluGrad: return "silu_grad";
    case BinaryOp::SoftplusGrad: return "softplus_grad";
    case BinaryOp::SigmoidGrad: return "sigmoid_grad";
    case BinaryOp::PowGrad: return "pow_grad";
  }
  return "?";
}

namespace cpu {
namespace {

template <typename A>
A sigmoid(A x) { return A(1) / (A(1) + std::exp(-x)); }

template <typename A>
A apply_unary(UnaryOp op, A x, A alpha, A beta) {
  constexpr A kC = A(0.7978845608028654);  // sqrt(2/pi)
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Rsqrt: return A(1) / std::sqrt(x);
    case UnaryOp::Square: return x * x;
    case UnaryOp::Abs: return std::abs(x);
    case UnaryOp::Gelu: return A(0.5) * x * (A(1) + std::tanh(kC * (x + A(0.044715) * x * x * x)));
    case UnaryOp::Silu: return x * sigmoid(x);
    case UnaryOp::Softplus: return x > A(20) ? x : std::log1p(std::exp(x));
    case UnaryOp::Sigmoid: return sigmoid(x);
    case UnaryOp::Pow: return std::pow(x, alpha);
    case UnaryOp::Affine: return alpha * x + beta;
  }
  return x;
}

template <typename A>
A apply_binary(BinaryOp op, A a, A b, A alpha) {
  constexpr A kC = A(0.7978845608028654);
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Maximum: return a > b || std::isnan(a) ? a : b;
    case BinaryOp::GeluGrad: {
      A inner = kC * (b + A(0.044715) * b * b * b);
      A t = std::tanh(inner);
      A dinner = kC * (A(1) + A(3) * A(0.044715) * b * b);
      return a * (A(0.5) * (A(1) + t) + A(0.5) * b * (A(1) - t * t) * dinner);
    }
    case BinaryOp::SiluGrad: {
      A s = sigmoid(b);
      return a * s * (A(1) + b * (A(1) - s));
    }
    case BinaryOp::SoftplusGrad: return b > A(20) ? a : a * sigmoid(b);
    case BinaryOp::SigmoidGrad: return a * b * (A(1) - b);
    case BinaryOp::PowGrad: return a * alpha * std::pow(b, alpha - A(1));
  }
  return a;
}

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

void unary(UnaryOp op, Tensor& out, const Tensor& x, double alpha, double beta) {
  REHYAT_DISPATCH_FLOAT(out.dtype(), unary_op_name(op), {
    using A = acc_t<scalar_t>;
    scalar_t* y = out.data<scalar_t>();
    const scalar_t* xp = x.data<scalar_t>();
    for_each_offset<2>(out.shape(), {&out.strides(), &x.strides()}, [&](const std::array<int64_t, 2>& o) {
      y[o[0]] = from_double<scalar_t>(apply_unary<A>(op, A(to_double(xp[o[1]])), A(alpha), A(beta)));
    });
  });
}

void binary(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b, double alpha) {
  REHYAT_DISPATCH_FLOAT(out.dtype(), binary_op_name(op), {
    using A = acc_t<scalar_t>;
    scalar_t* y = out.data<scalar_t>();
    const scalar_t* ap = a.data<scalar_t>();
    const scalar_t* bp = b.data<scalar_t>();
    for_each_offset<3>(out.shape(), {&out.strides(), &a.strides(), &b.strides()},
                       [&](const std::array<int64_t, 3>& o) {
                         y[o[0]] = from_double<scalar_t>(
                             apply_binary<A>(op, A(to_double(ap[o[1]])), A(to_double(bp[o[2]])), A(alpha)));
                       });
  });
}

template <typename D, typename S>
D convert(S v) {
  if constexpr (std::is_same_v<D, S>)
    return v;
  else if constexpr (std::is_integral_v<D> && std::is_integral_v<S>)
    return D(v);  // integer to integer without a detour through double
  else
    return from_double<D>(to_double(v));
}

template <typename D, typename S>
void copy_typed(Tensor& dst, const Tensor& src) {
  D* d = static_cast<D*>(dst.data_ptr());
  const S* s = static_cast<const S*>(src.data_ptr());
  for_each_offset<2>(dst.shape(), {&dst.strides(), &src.strides()},
                     [&](const std::array<int64_t, 2>& o) { d[o[0]] = convert<D>(s[o[1]]); });
}

void copy(Tensor& dst, const Tensor& src) {
  REHYAT_DISPATCH_ALL(dst.dtype(), "copy", {
    using D = scalar_t;
    REHYAT_DISPATCH_ALL(src.dtype(), "copy", { copy_typed<D, scalar_t>(dst, src); });
  });
}

void fill(Tensor& dst, double value) {
  REHYAT_DISPATCH_ALL(dst.dtype(), "fill", {
    scalar_t* d = dst.data<scalar_t>();
    const scalar_t v = from_double<scalar_t>(value);
    for_each_offset<1>(dst.shape(), {&dst.strides()}, [&](const std::array<int64_t, 1>& o) { d[o[0]] = v; });
  });
}

template <typename Gen>
void random_fill(Tensor& dst, Gen&& gen) {
  REHYAT_DISPATCH_FLOAT(dst.dtype(), "random", {
    scalar_t* d = dst.data<scalar_t>();
    const int64_t n = dst.numel();
    for (int64_t i = 0; i < n; ++i) d[i] = from_double<scalar_t>(double(gen(uint64_t(i))));
  });
}

}  // namespace
}  // namespace cpu

void unary(UnaryOp op, Tensor& out, const Tensor& x, double alpha, double beta) {
  const char* name = unary_op_name(op);
  check_same_device(name, out, {&x});
  check_same_dtype(name, out, {&x});
  check_same_shape(name, out, {&x});
  REHYAT_CHECK(is_floating(out.dtype()), "{}: needs a floating tensor, got {}", name, out.str());
  REHYAT_ROUTE_CUDA(out, cuda::unary(op, out, x, alpha, beta));
  cpu::unary(op, out, x, alpha, beta);
}

void binary(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b, double alpha) {
  const char* name = binary_op_name(op);
  check_same_device(name, out, {&a, &b});
  check_same_dtype(name, out, {&a, &b});
  check_same_shape(name, out, {&a, &b});
  REHYAT_CHECK(is_floating(out.dtype()), "{}: needs floating tensors, got {}", name, out.str());
  REHYAT_ROUTE_CUDA(out, cuda::binary(op, out, a, b, alpha));
  cpu::binary(op, out, a, b, alpha);
}

void copy(Tensor& dst, const Tensor& src) {
  check_same_device("copy", dst, {&src});
  check_same_shape("copy", dst, {&src});
  REHYAT_ROUTE_CUDA(dst, cuda::copy(dst, src));
  cpu::copy(dst, src);
}

void fill(Tensor& dst, double value) {
  REHYAT_CHECK(dst.defined(), "fill: undefined tensor");
  REHYAT_ROUTE_CUDA(dst, cuda::fill(dst, value));
  cpu::fill(dst, value);
}

void random_uniform(Tensor& dst, uint64_t seed, uint64_t offset, double low, double high) {
  REHYAT_CHECK(dst.is_contiguous() && is_floating(dst.dtype()), "random_uniform: needs a contiguous floating tensor, got {}",
               dst.str());
  REHYAT_ROUTE_CUDA(dst, cuda::random_uniform(dst, seed, offset, low, high));
  const float scale = float(high - low), shift = float(low);
  cpu::random_fill(dst, [&](uint64_t i) {
    float u = philox::uniform(philox::word(seed, offset + i));
    return philox::add_rn(philox::mul_rn(u, scale), shift);
  });
}

void random_normal(Tensor& dst, uint64_t seed, uint64_t offset, double mean, double stddev) {
  REHYAT_CHECK(dst.is_contiguous() && is_floating(dst.dtype()), "random_normal: needs a contiguous floating tensor, got {}",
               dst.str());
  REHYAT_ROUTE_CUDA(dst, cuda::random_normal(dst, seed, offset, mean, stddev));
  const float scale = float(stddev), shift = float(mean);
  cpu::random_fill(dst, [&](uint64_t i) {
    return philox::add_rn(philox::mul_rn(philox::normal(seed, offset + i), scale), shift);
  });
}

}  // namespace rehyat::kernels
