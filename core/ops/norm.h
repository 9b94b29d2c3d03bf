// Row normalizations over the last axis of a contiguous [rows, cols] view.
//   layernorm: y = (x - mean) * rstd * weight + bias   (weight/bias optional, [cols])
//   rmsnorm:   y = x * rstd * weight,  rstd = 1/sqrt(mean(x^2) + eps)  (weight optional)
// Forward saves mean/rstd [rows] for the backward: f32, except f64 for f64 tensors
// (norm_stats_dtype). Statistics are computed in fp32 (fp64 for f64). weight/bias share
// x's dtype.
// Backward assigns dx (=) and assigns dweight/dbias (=) when given; the CUDA adapter
// reduces dweight/dbias deterministically in two passes through a scratch buffer it takes
// from the caching allocator (the kernels themselves never allocate).
#pragma once

#include "core/tensor.h"

namespace rehyat::kernels {

inline DType norm_stats_dtype(DType x) { return x == DType::F64 ? DType::F64 : DType::F32; }

void layernorm_forward(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor* weight,
                       const Tensor* bias, double eps);
void layernorm_backward(Tensor& dx, Tensor* dweight, Tensor* dbias, const Tensor& dy, const Tensor& x,
                        const Tensor& mean, const Tensor& rstd, const Tensor* weight);

void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor* weight, double eps);
void rmsnorm_backward(Tensor& dx, Tensor* dweight, const Tensor& dy, const Tensor& x, const Tensor& rstd,
                      const Tensor* weight);

}  // namespace rehyat::kernels
