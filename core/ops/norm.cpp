// Device-agnostic entry points for LayerNorm / RMSNorm, and the CPU reference
// (statistics in double: this is the oracle the CUDA kernels are checked against).
#include "core/ops/norm.h"

#include <cmath>

#include "core/ops/dispatch.h"

namespace rehyat::kernels {

namespace {

struct RowView {
  int64_t rows, cols;
};

RowView check_norm(const char* op, const Tensor& y, const Tensor& x, std::initializer_list<const Tensor*> stats,
                   const Tensor* weight, const Tensor* bias) {
  check_same_device(op, x, {&y});
  check_same_dtype(op, x, {&y});
  check_same_shape(op, x, {&y});
  REHYAT_CHECK(is_floating(x.dtype()) && x.dim() >= 1, "{}: needs a floating tensor with dims, got {}", op, x.str());
  REHYAT_CHECK(x.is_contiguous() && y.is_contiguous(), "{}: needs contiguous tensors, got {} and {}", op, x.str(),
               y.str());
  RowView v{x.dim() ? x.numel() / std::max<int64_t>(x.size(-1), 1) : 1, x.size(-1)};
  for (const Tensor* s : stats) {
    check_same_device(op, x, {s});
    REHYAT_CHECK(s->dtype() == norm_stats_dtype(x.dtype()) && s->is_contiguous() && s->numel() == v.rows,
                 "{}: statistics must be contiguous {} with {} elements, got {}", op,
                 dtype_name(norm_stats_dtype(x.dtype())), v.rows, s->str());
  }
  for (const Tensor* p : {weight, bias}) {
    if (!p) continue;
    check_same_device(op, x, {p});
    check_same_dtype(op, x, {p});
    REHYAT_CHECK(p->is_contiguous() && p->numel() == v.cols, "{}: parameter {} must have {} elements", op, p->str(),
                 v.cols);
  }
  return v;
}

template <typename T>
const T* ptr_or_null(const Tensor* t) { return t ? t->data<T>() : nullptr; }

// Statistics are f32 except for f64 tensors (the gradient checks need full precision).
double load_stat(const Tensor& s, int64_t i) {
  return s.dtype() == DType::F64 ? s.data<double>()[i] : double(s.data<float>()[i]);
}
void store_stat(Tensor& s, int64_t i, double v) {
  if (s.dtype() == DType::F64)
    s.data<double>()[i] = v;
  else
    s.data<float>()[i] = float(v);
}

}  // namespace

void layernorm_forward(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor* weight,
                       const Tensor* bias, double eps) {
  RowView v = check_norm("layer_norm", y, x, {&mean, &rstd}, weight, bias);
  REHYAT_ROUTE_CUDA(x, cuda::layernorm_forward(y, mean, rstd, x, weight, bias, eps));
  REHYAT_DISPATCH_FLOAT(x.dtype(), "layer_norm", {
    const scalar_t* xp = x.data<scalar_t>();
    const scalar_t* w = ptr_or_null<scalar_t>(weight);
    const scalar_t* b = ptr_or_null<scalar_t>(bias);
    scalar_t* yp = y.data<scalar_t>();
    for (int64_t r = 0; r < v.rows; ++r) {
      const scalar_t* row = xp + r * v.cols;
      double m = 0, var = 0;
      for (int64_t c = 0; c < v.cols; ++c) m += to_double(row[c]);
      m /= double(v.cols);
      for (int64_t c = 0; c < v.cols; ++c) var += (to_double(row[c]) - m) * (to_double(row[c]) - m);
      var /= double(v.cols);
      double rs = 1.0 / std::sqrt(var + eps);
      for (int64_t c = 0; c < v.cols; ++c) {
        double o = (to_double(row[c]) - m) * rs;
        if (w) o *= to_double(w[c]);
        if (b) o += to_double(b[c]);
        yp[r * v.cols + c] = from_double<scalar_t>(o);
      }
      store_stat(mean, r, m);
      store_stat(rstd, r, rs);
    }
  });
}

void layernorm_backward(Tensor& dx, Tensor* dweight, Tensor* dbias, const Tensor& dy, const Tensor& x,
                        const Tensor& mean, const Tensor& rstd, const Tensor* weight) {
  RowView v = check_norm("layer_norm_backward", dx, x, {&mean, &rstd}, weight, nullptr);
  check_norm("layer_norm_backward", dy, x, {}, dweight, dbias);
  REHYAT_ROUTE_CUDA(x, cuda::layernorm_backward(dx, dweight, dbias, dy, x, mean, rstd, weight));
  REHYAT_DISPATCH_FLOAT(x.dtype(), "layer_norm_backward", {
    const scalar_t* xp = x.data<scalar_t>();
    const scalar_t* dyp = dy.data<scalar_t>();
    const scalar_t* w = ptr_or_null<scalar_t>(weight);
    std::vector<double> dw(size_t(v.cols), 0.0), db(size_t(v.cols), 0.0), g(size_t(v.cols)), xhat(size_t(v.cols));
    for (int64_t r = 0; r < v.rows; ++r) {
      const double m = load_stat(mean, r), rs = load_stat(rstd, r);
      double mean_g = 0, mean_gx = 0;
      for (int64_t c = 0; c < v.cols; ++c) {
        double d = to_double(dyp[r * v.cols + c]);
        xhat[c] = (to_double(xp[r * v.cols + c]) - m) * rs;
        g[c] = w ? d * to_double(w[c]) : d;
        mean_g += g[c];
        mean_gx += g[c] * xhat[c];
        dw[c] += d * xhat[c];
        db[c] += d;
      }
      mean_g /= double(v.cols);
      mean_gx /= double(v.cols);
      for (int64_t c = 0; c < v.cols; ++c)
        dx.data<scalar_t>()[r * v.cols + c] = from_double<scalar_t>(rs * (g[c] - mean_g - xhat[c] * mean_gx));
    }
    for (int64_t c = 0; c < v.cols; ++c) {
      if (dweight) dweight->data<scalar_t>()[c] = from_double<scalar_t>(dw[c]);
      if (dbias) dbias->data<scalar_t>()[c] = from_double<scalar_t>(db[c]);
    }
  });
}

void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor* weight, double eps) {
  RowView v = check_norm("rms_norm", y, x, {&rstd}, weight, nullptr);
  REHYAT_ROUTE_CUDA(x, cuda::rmsnorm_forward(y, rstd, x, weight, eps));
  REHYAT_DISPATCH_FLOAT(x.dtype(), "rms_norm", {
    const scalar_t* xp = x.data<scalar_t>();
    const scalar_t* w = ptr_or_null<scalar_t>(weight);
    for (int64_t r = 0; r < v.rows; ++r) {
      const scalar_t* row = xp + r * v.cols;
      double ss = 0;
      for (int64_t c = 0; c < v.cols; ++c) ss += to_double(row[c]) * to_double(row[c]);
      double rs = 1.0 / std::sqrt(ss / double(v.cols) + eps);
      for (int64_t c = 0; c < v.cols; ++c) {
        double o = to_double(row[c]) * rs;
        if (w) o *= to_double(w[c]);
        y.data<scalar_t>()[r * v.cols + c] = from_double<scalar_t>(o);
      }
      store_stat(rstd, r, rs);
    }
  });
}

void rmsnorm_backward(Tensor& dx, Tensor* dweight, const Tensor& dy, const Tensor& x, const Tensor& rstd,
                      const Tensor* weight) {
  RowView v = check_norm("rms_norm_backward", dx, x, {&rstd}, weight, nullptr);
  check_norm("rms_norm_backward", dy, x, {}, dweight, nullptr);
  REHYAT_ROUTE_CUDA(x, cuda::rmsnorm_backward(dx, dweight, dy, x, rstd, weight));
  REHYAT_DISPATCH_FLOAT(x.dtype(), "rms_norm_backward", {
    const scalar_t* xp = x.data<scalar_t>();
    const scalar_t* dyp = dy.data<scalar_t>();
    const scalar_t* w = ptr_or_null<scalar_t>(weight);
    std::vector<double> dw(size_t(v.cols), 0.0), g(size_t(v.cols)), xhat(size_t(v.cols));
    for (int64_t r = 0; r < v.rows; ++r) {
      const double rs = load_stat(rstd, r);
      double mean_gx = 0;
      for (int64_t c = 0; c < v.cols; ++c) {
        double d = to_double(dyp[r * v.cols + c]);
        xhat[c] = to_double(xp[r * v.cols + c]) * rs;
        g[c] = w ? d * to_double(w[c]) : d;
        mean_gx += g[c] * xhat[c];
        dw[c] += d * xhat[c];
      }
      mean_gx /= double(v.cols);
      for (int64_t c = 0; c < v.cols; ++c)
        dx.data<scalar_t>()[r * v.cols + c] = from_double<scalar_t>(rs * (g[c] - xhat[c] * mean_gx));
    }
    if (dweight)
      for (int64_t c = 0; c < v.cols; ++c) dweight->data<scalar_t>()[c] = from_double<scalar_t>(dw[c]);
  });
}

}  // namespace rehyat::kernels
