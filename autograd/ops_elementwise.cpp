// Differentiable elementwise ops. Each forward is followed by its gradient rule.
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/ops/elementwise.h"

namespace rehyat {

using kernels::BinaryOp;
using kernels::UnaryOp;

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t i = 0; i < rank; ++i) {
    int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    REHYAT_CHECK(da == db || da == 1 || db == 1, "{}: shapes {} and {} do not broadcast", op, shape_str(a),
                 shape_str(b));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {

Tensor run_unary(UnaryOp op, const Tensor& x, double alpha = 0.0, double beta = 0.0) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  kernels::unary(op, y, x, alpha, beta);
  return y;
}

Tensor run_binary(BinaryOp op, const Tensor& a, const Tensor& b, double alpha = 0.0) {
  REHYAT_CHECK(a.dtype() == b.dtype(), "{}: dtypes differ ({} and {}); cast one with to()",
               kernels::binary_op_name(op), a.str(), b.str());
  Shape shape = broadcast_shapes(a.shape(), b.shape(), kernels::binary_op_name(op));
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  autograd::NoGradGuard no_grad;  // the expand views below are not part of the graph
  kernels::binary(op, out, a.expand(shape), b.expand(shape), alpha);
  return out;
}

// Gradient map of a unary op: g * f'(saved).
Tensor grad_map(BinaryOp op, const Tensor& g, const Tensor& saved, double alpha = 0.0) {
  return run_binary(op, g, saved, alpha);
}

}  // namespace

// --- binary arithmetic -------------------------------------------------------------------

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = run_binary(BinaryOp::Add, a, b);
  if (autograd::should_record({&a, &b})) {
    Shape sa = a.shape(), sb = b.shape();
    autograd::record("add", out, {a, b}, [sa, sb](const Tensor& g, const Node& n) {
      return std::vector<Tensor>{n.needs_grad(0) ? sum_to(g, sa) : Tensor(),
                                 n.needs_grad(1) ? sum_to(g, sb) : Tensor()};
    });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = run_binary(BinaryOp::Sub, a, b);
  if (autograd::should_record({&a, &b})) {
    Shape sa = a.shape(), sb = b.shape();
    autograd::record("sub", out, {a, b}, [sa, sb](const Tensor& g, const Node& n) {
      return std::vector<Tensor>{n.needs_grad(0) ? sum_to(g, sa) : Tensor(),
                                 n.needs_grad(1) ? sum_to(neg(g), sb) : Tensor()};
    });
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = run_binary(BinaryOp::Mul, a, b);
  if (autograd::should_record({&a, &b})) {
    // Each gradient needs only the other operand: save just what will be used.
    Tensor sa = b.requires_grad() ? a.detach() : Tensor();
    Tensor sb = a.requires_grad() ? b.detach() : Tensor();
    Shape shape_a = a.shape(), shape_b = b.shape();
    autograd::record("mul", out, {a, b}, [sa, sb, shape_a, shape_b](const Tensor& g, const Node& n) {
      return std::vector<Tensor>{n.needs_grad(0) ? sum_to(mul(g, sb), shape_a) : Tensor(),
                                 n.needs_grad(1) ? sum_to(mul(g, sa), shape_b) : Tensor()};
    });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = run_binary(BinaryOp::Div, a, b);
  if (autograd::should_record({&a, &b})) {
    Tensor sb = b.detach(), so = out.detach();
    Shape sa = a.shape();
    autograd::record("div", out, {a, b}, [sa, sb, so](const Tensor& g, const Node& n) {
      Tensor g_over_b = div(g, sb);
      return std::vector<Tensor>{n.needs_grad(0) ? sum_to(g_over_b, sa) : Tensor(),
                                 n.needs_grad(1) ? sum_to(neg(mul(g_over_b, so)), sb.shape()) : Tensor()};
    });
  }
  return out;
}

// --- scalar and unary ops -----------------------------------------------------------------

Tensor affine(const Tensor& x, double alpha, double beta) {
  Tensor y = run_unary(UnaryOp::Affine, x, alpha, beta);
  if (autograd::should_record({&x})) {
    autograd::record("affine", y, {x}, [alpha](const Tensor& g, const Node&) {
      return std::vector<Tensor>{run_unary(UnaryOp::Affine, g, alpha, 0.0)};
    });
  }
  return y;
}

Tensor add(const Tensor& a, double s) { return affine(a, 1.0, s); }
Tensor mul(const Tensor& a, double s) { return affine(a, s, 0.0); }
Tensor neg(const Tensor& x) { return affine(x, -1.0, 0.0); }

Tensor exp(const Tensor& x) {
  Tensor y = run_unary(UnaryOp::Exp, x);
  if (autograd::should_record({&x})) {
    Tensor sy = y.detach();
    autograd::record("exp", y, {x}, [sy](const Tensor& g, const Node&) { return std::vector<Tensor>{mul(g, sy)}; });
  }
  return y;
}

Tensor natural_log(const Tensor& x) {
  Tensor y = run_unary(UnaryOp::Log, x);
  if (autograd::should_record({&x})) {
    Tensor sx = x.detach();
    autograd::record("log", y, {x}, [sx](const Tensor& g, const Node&) { return std::vector<Tensor>{div(g, sx)}; });
  }
  return y;
}

Tensor sqrt(const Tensor& x) {
  Tensor y = run_unary(UnaryOp::Sqrt, x);
  if (autograd::should_record({&x})) {
    Tensor sy = y.detach();
    autograd::record("sqrt", y, {x}, [sy](const Tensor& g, const Node&) {
      return std::vector<Tensor>{div(mul(g, 0.5), sy)};  // 1 / (2 sqrt(x))
    });
  }
  return y;
}

Tensor rsqrt(const Tensor& x) {
  Tensor y = run_unary(UnaryOp::Rsqrt, x);
  if (autograd::should_record({&x})) {
    Tensor sx = x.detach();
    autograd::record("rsqrt", y, {x}, [sx](const Tensor& g, const Node&) {
      return std::vector<Tensor>{grad_map(BinaryOp::PowGrad, g, sx, -0.5)};  // -1/2 x^-3/2
    });
  }
  return y;
}

Tensor square(const Tensor& x) {
  Tensor y = run_unary(UnaryOp::Square, x);
  if (autograd::should_record({&x})) {
    Tensor sx = x.detach();
    autograd::record("square", y, {x}, [sx](const Tensor& g, const Node&) {
      return std::vector<Tensor>{mul(mul(g, sx), 2.0)};
    });
  }
  return y;
}

Tensor pow(const Tensor& x, double exponent) {
  Tensor y = run_unary(UnaryOp::Pow, x, exponent);
  if (autograd::should_record({&x})) {
    Tensor sx = x.detach();
    autograd::record("pow", y, {x}, [sx, exponent](const Tensor& g, const Node&) {
      return std::vector<Tensor>{grad_map(BinaryOp::PowGrad, g, sx, exponent)};
    });
  }
  return y;
}

#define REHYAT_ACTIVATION(fn, UNARY, GRAD, SAVE_OUTPUT)                                       \
  Tensor fn(const Tensor& x) {                                                                \
    Tensor y = run_unary(UnaryOp::UNARY, x);                                                  \
    if (autograd::should_record({&x})) {                                                      \
      Tensor saved = (SAVE_OUTPUT) ? y.detach() : x.detach();                                 \
      autograd::record(#fn, y, {x}, [saved](const Tensor& g, const Node&) {                   \
        return std::vector<Tensor>{grad_map(BinaryOp::GRAD, g, saved)};                       \
      });                                                                                     \
    }                                                                                         \
    return y;                                                                                 \
  }

REHYAT_ACTIVATION(gelu, Gelu, GeluGrad, false)
REHYAT_ACTIVATION(silu, Silu, SiluGrad, false)
REHYAT_ACTIVATION(softplus, Softplus, SoftplusGrad, false)
REHYAT_ACTIVATION(sigmoid, Sigmoid, SigmoidGrad, true)
#undef REHYAT_ACTIVATION

}  // namespace rehyat
