// Private to attention/hybrid_attention.{cpp,cu}: shared validation helpers and the CUDA
// entry points of the hybrid attention (only compiled with REHYAT_CUDA).
#pragma once

#include <cstdint>

#include "attention/hybrid_attention.h"

namespace rehyat::attention {
namespace hybrid_detail {

enum class KeyClass : uint8_t { None, Softmax, Linear };
// Which part of the attention key frame `key_frame` belongs to for a query in `query_frame`.
KeyClass key_class(const HybridOptions& options, int64_t frames, int64_t query_frame, int64_t key_frame);

struct Dims {
  int64_t batch, tokens, heads, head_dim, feature_dim, frames;
};
// Throws (naming `op` and the tensor) unless the inputs and options are consistent.
Dims check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q,
                  const Tensor& phi_k, const HybridOptions& options);
double resolved_scale(const HybridOptions& options, int64_t head_dim);

}  // namespace hybrid_detail

#ifdef REHYAT_CUDA
namespace kernels::cuda {
// True when the fused kernels handle these inputs (kind Rehyat, bf16/f16, head dim 64/128).
bool hybrid_supported(const Tensor& q, const Tensor& phi_q, const HybridOptions& options);
// The autograd op on the fused kernels (inputs already checked).
Tensor hybrid_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q,
                        const Tensor& phi_k, const HybridOptions& options);
}  // namespace kernels::cuda
#endif

}  // namespace rehyat::attention
