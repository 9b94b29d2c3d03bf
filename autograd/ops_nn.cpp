// Differentiable softmax, normalizations, matrix products and losses. Each forward is
// followed by its gradient rule; the fused CPU/CUDA kernels live in core/ops.
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"
#include "core/ops/norm.h"
#include "core/ops/softmax.h"

namespace rehyat {

// --- softmax ---------------------------------------------------------------------------

namespace {
Tensor softmax_last(const Tensor& x_in) {
  Tensor x = x_in.detach().contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  kernels::softmax_forward(y, x);
  if (autograd::should_record({&x_in})) {
    Tensor sy = y.detach();
    autograd::record("softmax", y, {x_in}, [sy](const Tensor& g, const Node&) {
      Tensor dx = Tensor::empty(sy.shape(), sy.dtype(), sy.device());
      kernels::softmax_backward(dx, g.contiguous(), sy);
      return std::vector<Tensor>{dx};
    });
  }
  return y;
}
}  // namespace

Tensor softmax(const Tensor& x, int dim) {
  dim = wrap_dim(dim, x.dim(), "softmax");
  if (dim == x.dim() - 1) return softmax_last(x);
  return softmax_last(x.transpose(dim, -1)).transpose(dim, -1);
}

// --- LayerNorm / RMSNorm -------------------------------------------------------------

Tensor layer_norm(const Tensor& x_in, const Tensor& weight, const Tensor& bias, double eps) {
  Tensor x = x_in.detach().contiguous();
  const int64_t cols = x.size(-1), rows = x.numel() / std::max<int64_t>(cols, 1);
  const DType stats = kernels::norm_stats_dtype(x.dtype());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty({rows}, stats, x.device());
  Tensor rstd = Tensor::empty({rows}, stats, x.device());
  Tensor w = weight.defined() ? weight.detach().contiguous() : Tensor();
  Tensor b = bias.defined() ? bias.detach().contiguous() : Tensor();
  kernels::layernorm_forward(y, mean, rstd, x, w.defined() ? &w : nullptr, b.defined() ? &b : nullptr, eps);
  if (autograd::should_record({&x_in, &weight, &bias})) {
    autograd::record("layer_norm", y, {x_in, weight, bias},
                     [x, w, mean, rstd](const Tensor& g, const Node& n) {
                       Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
                       Tensor dw, db;
                       if (n.needs_grad(1)) dw = Tensor::empty(w.shape(), w.dtype(), w.device());
                       if (n.needs_grad(2)) db = Tensor::empty({x.size(-1)}, x.dtype(), x.device());
                       kernels::layernorm_backward(dx, dw.defined() ? &dw : nullptr, db.defined() ? &db : nullptr,
                                                   g.contiguous(), x, mean, rstd, w.defined() ? &w : nullptr);
                       return std::vector<Tensor>{dx, dw, db};
                     });
  }
  return y;
}

Tensor rms_norm(const Tensor& x_in, const Tensor& weight, double eps) {
  Tensor x = x_in.detach().contiguous();
  const int64_t cols = x.size(-1), rows = x.numel() / std::max<int64_t>(cols, 1);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty({rows}, kernels::norm_stats_dtype(x.dtype()), x.device());
  Tensor w = weight.defined() ? weight.detach().contiguous() : Tensor();
  kernels::rmsnorm_forward(y, rstd, x, w.defined() ? &w : nullptr, eps);
  if (autograd::should_record({&x_in, &weight})) {
    autograd::record("rms_norm", y, {x_in, weight}, [x, w, rstd](const Tensor& g, const Node& n) {
      Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
      Tensor dw;
      if (n.needs_grad(1)) dw = Tensor::empty(w.shape(), w.dtype(), w.device());
      kernels::rmsnorm_backward(dx, dw.defined() ? &dw : nullptr, g.contiguous(), x, rstd,
                                w.defined() ? &w : nullptr);
      return std::vector<Tensor>{dx, dw};
    });
  }
  return y;
}

// --- matrix products --------------------------------------------------------------------

namespace {
Tensor matmul_raw(const Tensor& a, const Tensor& b) {
  REHYAT_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: {} @ {} needs 2+ dims on both sides", a.str(), b.str());
  Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  REHYAT_CHECK(batch_a.empty() || batch_b.empty() || batch_a == batch_b,
               "matmul: batch dims of {} and {} must match (or one side has none)", a.str(), b.str());
  Shape shape = batch_a.empty() ? batch_b : batch_a;
  shape.push_back(a.size(-2));
  shape.push_back(b.size(-1));
  Tensor c = Tensor::empty(shape, a.dtype(), a.device());
  kernels::matmul(c, a, b);
  return c;
}
}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  Tensor c = matmul_raw(a.detach(), b.detach());
  if (autograd::should_record({&a, &b})) {
    Tensor sa = b.requires_grad() ? a.detach() : Tensor();
    Tensor sb = a.requires_grad() ? b.detach() : Tensor();
    Shape shape_a = a.shape(), shape_b = b.shape();
    autograd::record("matmul", c, {a, b}, [sa, sb, shape_a, shape_b](const Tensor& g, const Node& n) {
      Tensor da, db;
      if (n.needs_grad(0)) da = sum_to(matmul_raw(g, sb.transpose(-1, -2)), shape_a);
      if (n.needs_grad(1)) db = sum_to(matmul_raw(sa.transpose(-1, -2), g), shape_b);
      return std::vector<Tensor>{da, db};
    });
  }
  return c;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  REHYAT_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1),
               "linear: input {} does not match weight {} ([out, in])", x.str(), weight.str());
  REHYAT_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)),
               "linear: bias {} does not match weight {}", bias.str(), weight.str());
  const int64_t in = weight.size(1), out_features = weight.size(0);
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  Tensor x2 = x.detach().reshape({-1, in});
  Tensor w = weight.detach();
  Tensor y = Tensor::empty({x2.size(0), out_features}, x.dtype(), x.device());
  double beta = 0.0;
  if (bias.defined()) {  // y = bias, then y += x W^T
    kernels::copy(y, bias.detach().expand(y.shape()));
    beta = 1.0;
  }
  kernels::matmul(y, x2, w.transpose(0, 1), 1.0, beta);
  y = y.view(out_shape);
  if (autograd::should_record({&x, &weight, &bias})) {
    Tensor sx = weight.requires_grad() ? x2 : Tensor();
    Tensor sw = x.requires_grad() ? w : Tensor();
    Shape x_shape = x.shape();
    autograd::record("linear", y, {x, weight, bias}, [sx, sw, x_shape, in](const Tensor& g, const Node& n) {
      Tensor g2 = g.reshape({-1, g.size(-1)});
      Tensor dx, dw, db;
      if (n.needs_grad(0)) dx = matmul_raw(g2, sw).view(x_shape);      // [N, out] @ [out, in]
      if (n.needs_grad(1)) dw = matmul_raw(g2.transpose(0, 1), sx);    // [out, N] @ [N, in]
      if (n.needs_grad(2)) db = sum(g2, 0, false);
      return std::vector<Tensor>{dx, dw, db};
    });
  }
  return y;
}

// --- losses -----------------------------------------------------------------------------

Tensor mse_loss(const Tensor& pred, const Tensor& target) {
  REHYAT_CHECK(pred.shape() == target.shape(), "mse_loss: prediction {} and target {} differ", pred.str(),
               target.str());
  return mean(square(sub(pred, target)));
}

}  // namespace rehyat
