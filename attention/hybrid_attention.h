// ReHyAt hybrid attention (SPEC §3): softmax attention inside temporal chunks, linear
// attention with feature maps across them, jointly normalized, plus its baselines.
//
// Per head, tokens frame-major (frame_tokens per frame, T frames), chunk t = query frames
// [t*Tc, min((t+1)*Tc, T)):
//   softmax set S_t: key frames [max(t*Tc - To, 0), min((t+1)*Tc, T));
//   linear set L_t:  causal: key frames [0, max(t*Tc - To, 0)); non-causal: all frames not in S_t;
//   s_ij = scale * q_i.k_j, c_i = max_{j in S_t} s_ij (NOT detached: its gradient goes to
//   the arg-max key), aS_i = sum_S exp(s_ij - c_i) v_j, nS_i = sum_S exp(s_ij - c_i),
//   aL_i = phi_q_i^T sum_L phi_k_j v_j^T, nL_i = phi_q_i^T sum_L phi_k_j,
//   y_i = (aS_i + aL_i) / (nS_i + nL_i).
// Kinds: Rehyat (the above); Linear (S_t empty, L_t = every key, y = aL / (nL + eps));
// UniformHybrid (softmax keys = frames whose index is divisible by rate, linear = the
// rest, every query sees all frames); Softmax (full softmax; features unused).
//
// The feature maps themselves (the per-head MLPs, attention/feature_map.h) run before this
// op: it takes their outputs phi_q = phi(q), phi_k = phi(k), so gradients reach the MLP
// parameters through autograd.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace rehyat::attention {

enum class AttentionKind { Softmax, Rehyat, Linear, UniformHybrid };
const char* attention_kind_name(AttentionKind kind);          // "softmax", "rehyat", "linear", "uniform_hybrid"
AttentionKind parse_attention_kind(const std::string& name);  // throws naming the value

struct HybridOptions {
  AttentionKind kind = AttentionKind::Rehyat;
  int64_t frame_tokens = 0;    // tokens per frame (H*W after patching); N = T * frame_tokens
  int64_t chunk_frames = 3;    // Tc >= 1
  int64_t overlap_frames = 1;  // To >= 0 (may exceed Tc)
  bool causal = true;
  int64_t rate = 2;            // UniformHybrid: softmax key frames are those divisible by rate
  double scale = 0.0;          // 0: 1/sqrt(head_dim)
  double linear_eps = 1e-6;    // Linear kind: added to the denominator
};

// q, k, v [B, N, H, d] (compute dtype; unit stride on d); phi_q, phi_k [B, N, H, Dp] f32
// (non-negative features of q and k; f64 with f64 inputs). Returns y [B, N, H, d] in q's
// dtype. Differentiable in q, k, v, phi_q and phi_k. CPU tensors run a plain-loop
// reference, CUDA tensors the fused kernels (attention/hybrid_attention.cu).
Tensor hybrid_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q,
                        const Tensor& phi_k, const HybridOptions& options);

// The same function composed from autograd primitives (masks materialized). Reference
// for tests only.
Tensor hybrid_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q,
                                  const Tensor& phi_k, const HybridOptions& options);

}  // namespace rehyat::attention
