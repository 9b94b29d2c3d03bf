// Differentiable concat and indexing. Each forward is followed by its gradient rule.
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/ops/elementwise.h"
#include "core/ops/index.h"

namespace rehyat {

Tensor concat(const std::vector<Tensor>& tensors, int dim) {
  REHYAT_CHECK(!tensors.empty(), "concat of no tensors");
  const Tensor& first = tensors[0];
  dim = wrap_dim(dim, first.dim(), "concat");
  Shape shape = first.shape();
  shape[dim] = 0;
  for (const Tensor& t : tensors) {
    REHYAT_CHECK(t.dim() == first.dim() && t.dtype() == first.dtype() && t.device() == first.device(),
                 "concat: {} does not match {}", t.str(), first.str());
    for (int d = 0; d < t.dim(); ++d)
      REHYAT_CHECK(d == dim || t.size(d) == first.size(d), "concat along {}: {} and {} differ in dim {}", dim,
                   first.str(), t.str(), d);
    shape[dim] += t.size(dim);
  }
  Tensor out = Tensor::empty(shape, first.dtype(), first.device());
  std::vector<int64_t> starts;
  int64_t start = 0;
  for (const Tensor& t : tensors) {
    starts.push_back(start);
    Tensor dst = out.detach().slice(dim, start, start + t.size(dim));
    kernels::copy(dst, t);
    start += t.size(dim);
  }
  if (autograd::should_record(tensors)) {
    std::vector<int64_t> sizes;
    for (const Tensor& t : tensors) sizes.push_back(t.size(dim));
    autograd::record("concat", out, tensors, [dim, starts, sizes](const Tensor& g, const Node& n) {
      std::vector<Tensor> grads(sizes.size());
      for (size_t i = 0; i < sizes.size(); ++i)
        if (n.needs_grad(i)) grads[i] = g.slice(dim, starts[i], starts[i] + sizes[i]);
      return grads;
    });
  }
  return out;
}

namespace {

// out = gather(x, dim, index) with a backward that scatters into zeros.
Tensor gather_impl(const char* name, const Tensor& x_in, int dim, const Tensor& index, const Shape& out_shape) {
  Tensor x = x_in.detach().contiguous();
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  kernels::gather(out, x, dim, index);
  if (autograd::should_record({&x_in})) {
    Tensor idx = index.detach();
    Shape in_shape = x.shape();
    DType dtype = x.dtype();
    autograd::record(name, out, {x_in}, [idx, in_shape, dtype, dim](const Tensor& g, const Node&) {
      Tensor gx = Tensor::zeros(in_shape, dtype, g.device());
      kernels::scatter_add(gx, dim, idx, g.contiguous());
      return std::vector<Tensor>{gx};
    });
  }
  return out;
}

}  // namespace

Tensor index_select(const Tensor& x, int dim, const Tensor& index) {
  dim = wrap_dim(dim, x.dim(), "index_select");
  REHYAT_CHECK(index.dim() == 1, "index_select: index {} must be 1-D", index.str());
  Shape out_shape = x.shape();
  out_shape[dim] = index.size(0);
  Shape view_shape(x.dim(), 1);
  view_shape[dim] = index.size(0);
  Tensor expanded = index.detach().view(view_shape).expand(out_shape);  // stride 0 off `dim`
  return gather_impl("index_select", x, dim, expanded, out_shape);
}

Tensor gather(const Tensor& x, int dim, const Tensor& index) {
  dim = wrap_dim(dim, x.dim(), "gather");
  return gather_impl("gather", x, dim, index.detach(), index.shape());
}

}  // namespace rehyat
