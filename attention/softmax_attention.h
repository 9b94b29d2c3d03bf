// Softmax attention, full or restricted to ReHyAt's chunked softmax key sets (SPEC §3).
//
// Three implementations of one function, compared by tests/attention:
// - softmax_attention: the fused autograd op. Forward and backward run the raw kernels
//   below: a plain-loop CPU reference on CPU tensors, flash-style CUDA kernels
//   (attention/softmax_attention.cu) on CUDA tensors. Never materializes Nq x Nk on CUDA.
// - softmax_attention_composite: the same function built from autograd primitives
//   (matmul, softmax, masking); materializes Nq x Nk. The reference for tests.
// - kernels::softmax_attention_forward / _backward: raw, non-autograd entry points.
//
// Layout: q [B, Nq, H, d]; k, v [B, Nk, H, d] (token-major, heads inner, so q/k/v can be
// views of a fused [B, N, H*d] projection); o and the gradients are contiguous
// [B, N, H, d]; the per-row statistics are [B, H, Nq].
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace rehyat::attention {

// Which keys each query row sees. Default: every key (full attention).
// Chunked = ReHyAt's softmax key set S_t (SPEC §3): tokens frame-major, frame_tokens per frame;
// a query in frame f belongs to chunk t = f / chunk_frames and sees key frames
// [max(t*chunk_frames - overlap_frames, 0), min((t+1)*chunk_frames, num_frames)).
struct KeyRange {
  int64_t frame_tokens = 0;    // tokens per frame (H*W after patching)
  int64_t chunk_frames = 0;    // 0: full attention
  int64_t overlap_frames = 0;
  bool chunked() const { return chunk_frames > 0; }
};

struct SoftmaxAttentionOptions {
  double scale = 0.0;  // 0: 1/sqrt(head_dim)
  KeyRange keys;
};

// q [B, Nq, H, d]; k, v [B, Nk, H, d]; any strides with a unit stride on d (so q/k/v can be
// views of a fused [B, N, H*d] projection); same dtype and device. Returns o [B, Nq, H, d]
// contiguous in q's dtype. Differentiable in q, k and v (autograd op).
// Chunked key ranges need Nq == Nk (self-attention) and Nk a multiple of frame_tokens.
Tensor softmax_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                         const SoftmaxAttentionOptions& options = {});

// The same function composed from autograd primitives (matmul, softmax, masking);
// materializes Nq x Nk. Reference for tests.
// Whether a layer should run the composite (GEMM-based, through CBLAS) instead of the
// plain-loop op: f32 on the CPU with a CBLAS in the build. The loop is the oracle but
// ~30x slower; the composite is exact too, and the CPU quick start trains on it.
// REHYAT_CPU_ATTENTION=loop keeps the loop.
bool prefer_cpu_composite(const Tensor& q);

Tensor softmax_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const SoftmaxAttentionOptions& options = {});

// Key tokens [begin, end) seen by query token `query` (full attention: [0, num_keys)).
struct TokenRange {
  int64_t begin = 0, end = 0;
};
TokenRange key_tokens_for_query(const KeyRange& keys, int64_t query, int64_t num_keys);
// Throws (naming `op`) unless the key range fits Nq queries and Nk keys.
void check_key_range(const char* op, const KeyRange& keys, int64_t num_queries, int64_t num_keys);
// Number of (query, key) pairs scored: Nq*Nk for full attention, fewer when chunked.
// FLOPs of a forward are 4 * pairs * d * H * B.
int64_t scored_pairs(const KeyRange& keys, int64_t num_queries, int64_t num_keys);
// The scale actually used (options.scale, or 1/sqrt(head_dim) when 0).
double resolved_scale(const SoftmaxAttentionOptions& options, int64_t head_dim);

namespace kernels {

// Per-row statistics dtype: f64 for f64 inputs (exact CPU finite-difference checks),
// f32 otherwise.
DType stats_dtype(DType input);

// Forward. Assigns o [B, Nq, H, d] (contiguous, q's dtype), lse [B, H, Nq] (log-sum-exp
// of the scaled scores over the row's key range) and row_max [B, H, Nq] (max of the
// scaled scores over that range; the hybrid attention's stabilizing constant c).
// Then o_i = sum_j exp(s_ij - lse_i) v_j.
void softmax_attention_forward(Tensor& o, Tensor& lse, Tensor& row_max, const Tensor& q, const Tensor& k,
                               const Tensor& v, double scale, const KeyRange& keys);

// Backward. Assigns dq [B, Nq, H, d], dk, dv [B, Nk, H, d] (contiguous, q's dtype) from
// d_o [B, Nq, H, d] (any strides, unit stride on d) and the forward's o and lse.
void softmax_attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& d_o, const Tensor& q,
                                const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                                double scale, const KeyRange& keys);

}  // namespace kernels
}  // namespace rehyat::attention
