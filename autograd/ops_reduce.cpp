// Differentiable reductions. Each forward is followed by its gradient rule.
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/ops/index.h"
#include "core/ops/reduce.h"

namespace rehyat {

namespace {

struct AxisSplit {
  int64_t outer = 1, n = 1, inner = 1;
  Shape out_shape;   // without the reduced dim (or with size 1 when keepdim)
  Shape keep_shape;  // with the reduced dim as size 1
};

AxisSplit split_axis(const Tensor& x, int dim, bool keepdim) {
  AxisSplit s;
  for (int d = 0; d < x.dim(); ++d) {
    if (d < dim) s.outer *= x.size(d);
    if (d > dim) s.inner *= x.size(d);
  }
  s.n = x.size(dim);
  s.keep_shape = x.shape();
  s.keep_shape[dim] = 1;
  s.out_shape = s.keep_shape;
  if (!keepdim) s.out_shape.erase(s.out_shape.begin() + dim);
  return s;
}

Tensor sum_scaled(const Tensor& x_in, int dim, bool keepdim, double scale, const char* name) {
  REHYAT_CHECK(x_in.dim() > 0, "{}: use the all-elements form for a 0-d tensor {}", name, x_in.str());
  dim = wrap_dim(dim, x_in.dim(), name);
  AxisSplit s = split_axis(x_in, dim, keepdim);
  Tensor x = x_in.detach().contiguous();
  Tensor out = Tensor::empty(s.out_shape, x.dtype(), x.device());
  kernels::sum_axis(out, x, s.outer, s.n, s.inner, scale);
  if (autograd::should_record({&x_in})) {
    Shape in_shape = x_in.shape(), keep = s.keep_shape;
    autograd::record(name, out, {x_in}, [in_shape, keep, scale](const Tensor& g, const Node&) {
      Tensor gx = g.reshape(keep).expand(in_shape);
      return std::vector<Tensor>{scale == 1.0 ? gx : mul(gx, scale)};
    });
  }
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, int dim, bool keepdim) { return sum_scaled(x, dim, keepdim, 1.0, "sum"); }

Tensor mean(const Tensor& x, int dim, bool keepdim) {
  const int d = wrap_dim(dim, x.dim(), "mean");
  REHYAT_CHECK(x.size(d) > 0, "mean over an empty dim of {}", x.str());
  return sum_scaled(x, d, keepdim, 1.0 / double(x.size(d)), "mean");
}

Tensor sum(const Tensor& x) { return sum(x.reshape({-1}), 0, false); }

Tensor mean(const Tensor& x) {
  REHYAT_CHECK(x.numel() > 0, "mean of empty {}", x.str());
  return mean(x.reshape({-1}), 0, false);
}

std::pair<Tensor, Tensor> max_with_indices(const Tensor& x_in, int dim, bool keepdim) {
  dim = wrap_dim(dim, x_in.dim(), "max");
  AxisSplit s = split_axis(x_in, dim, keepdim);
  Tensor x = x_in.detach().contiguous();
  Tensor values = Tensor::empty(s.out_shape, x.dtype(), x.device());
  Tensor indices = Tensor::empty(s.out_shape, DType::I64, x.device());
  kernels::max_axis(values, indices, x, s.outer, s.n, s.inner);
  if (autograd::should_record({&x_in})) {
    Tensor saved_indices = indices.detach();
    Shape in_shape = x_in.shape();
    DType dtype = x_in.dtype();
    autograd::record("max", values, {x_in}, [saved_indices, in_shape, dtype, s](const Tensor& g, const Node&) {
      // The gradient goes to the arg-max of each reduced row.
      Tensor gx = Tensor::zeros(in_shape, dtype, g.device());
      Tensor gx3 = gx.view({s.outer, s.n, s.inner});
      Tensor src = g.contiguous().view({s.outer, 1, s.inner});
      kernels::scatter_add(gx3, 1, saved_indices.view({s.outer, 1, s.inner}), src);
      return std::vector<Tensor>{gx};
    });
  }
  return {values, indices};
}

Tensor max(const Tensor& x, int dim, bool keepdim) { return max_with_indices(x, dim, keepdim).first; }

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  REHYAT_CHECK(x.dim() >= int(shape.size()), "sum_to: cannot reduce {} to {}", x.str(), shape_str(shape));
  Tensor r = x;
  while (r.dim() > int(shape.size())) r = sum(r, 0, false);
  for (int d = 0; d < r.dim(); ++d) {
    if (shape[d] == r.size(d)) continue;
    REHYAT_CHECK(shape[d] == 1, "sum_to: cannot reduce {} to {}", x.str(), shape_str(shape));
    r = sum(r, d, true);
  }
  return r;
}

}  // namespace rehyat
