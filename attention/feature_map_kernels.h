// The fused elementwise stages of the feature map φ (attention/feature_map.h), between its
// two batched products. CPU loops and CUDA kernels behind one entry point each (routed by
// the output's device); tests compare the two on random data.
//
// Layouts (R = B·N token rows, H heads, C columns, all contiguous):
//   head-major [H, R, C]  a product's output per head (a1, g, a2, dz, dg, du)
//   token-major [R, H, C] φ and dφ, i.e. [B, N, H, Dp]
//   bias [H, C]           in the high dtype (f32; f64 for f64 models)
// Head-major tensors are in the product dtype (bf16 / f16 on CUDA for bf16 / f16 models,
// else the high dtype), except a2, the input of the softplus, which its product writes in
// the high dtype: φ grows like exp(a2), so a bf16 a2 (half an ulp is 0.03 at |a2| = 10)
// would cost a few percent per feature. Math runs in fp32 (fp64 for f64); φ, dφ and the
// bias gradients are in the high dtype. Bias gradients are column sums over the R rows, in a fixed order
// (per-block partial sums, then a sum over the blocks): deterministic on every device.
#pragma once

#include <cstdint>

#include "attention/feature_map.h"
#include "core/tensor.h"

namespace rehyat::attention::kernels {

// g = act(a1 + b1).
void phi_hidden_forward(Tensor& g, const Tensor& a1, const Tensor& b1, FeatureActivation act);
// du = dg · act'(a1 + b1) (du may be dg itself); db1 = Σ_rows du (before du's rounding).
void phi_hidden_backward(Tensor& du, Tensor& db1, const Tensor& dg, const Tensor& a1, const Tensor& b1,
                         FeatureActivation act);
// φ[r, h, c] = softplus(a2[h, r, c] + b2[h, c])^(part(c) + 1), part(c) = c / (C / degree);
// a2 in the high dtype.
void phi_features_forward(Tensor& phi, const Tensor& a2, const Tensor& b2, int64_t degree);
// dz[h, r, c] = dφ[r, h, c] · dφ/dz (dz in the product dtype); db2 = Σ_rows dz.
void phi_features_backward(Tensor& dz, Tensor& db2, const Tensor& dphi, const Tensor& a2, const Tensor& b2,
                           int64_t degree);

#ifdef REHYAT_CUDA
namespace cuda {
void phi_hidden_forward(Tensor& g, const Tensor& a1, const Tensor& b1, FeatureActivation act);
void phi_hidden_backward(Tensor& du, Tensor& db1, const Tensor& dg, const Tensor& a1, const Tensor& b1,
                         FeatureActivation act);
void phi_features_forward(Tensor& phi, const Tensor& a2, const Tensor& b2, int64_t degree);
void phi_features_backward(Tensor& dz, Tensor& db2, const Tensor& dphi, const Tensor& a2, const Tensor& b2,
                           int64_t degree);
}  // namespace cuda
#endif

}  // namespace rehyat::attention::kernels
