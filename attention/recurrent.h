// Recurrent (RNN) form of causal ReHyAt attention (SPEC §3): one chunk of Tc frames at a
// time with memory independent of the video length.
//
// Why it works: in the causal form, chunk t's linear key set L_t = frames [0, t*Tc - To)
// only grows, so sum_L phi_k v^T and sum_L phi_k are running sums (S [Dp, d] and z [Dp]
// per head); its softmax key set S_t = [max(t*Tc - To, 0), (t+1)*Tc) is the chunk plus at
// most To earlier frames, so only those earlier frames' k, v (and phi_k, to absorb them
// later) must be kept.
//
// Per chunk, per (batch, head, query row i), with the flash kernel over the window keys
// (the To kept frames, then the chunk) giving o_i, lse_i and c_i = row max:
//   nS_i = sum_S exp(s_ij - c_i) = exp(lse_i - c_i),
//   aS_i = sum_S exp(s_ij - c_i) v_j = nS_i * o_i          (o_i = sum_S exp(s_ij - lse_i) v_j),
//   aL_i = phi_q_i^T S, nL_i = phi_q_i^T z,
//   y_i  = (aS_i + aL_i) / (nS_i + nL_i)                     (exactly the parallel formula).
// Then the window frames that leave the next chunk's softmax set (frames
// [max(t*Tc - To, 0), max((t+1)*Tc - To, 0))) are absorbed into S and z, and the last
// min(To, frames so far) frames are kept.
//
// State (per converted block): S [B, H, Dp, d] and z [B, H, Dp] in f32 (f64 for f64
// inputs), the kept k, v [B, <=To*frame_tokens, H, d] (compute dtype) and phi_k
// [B, <=To*frame_tokens, H, Dp]. Forward only: nothing is recorded for autograd.
#pragma once

#include <cstdint>

#include "attention/hybrid_attention.h"
#include "core/tensor.h"

namespace rehyat::attention {

class RecurrentHybridAttention {
 public:
  // options: kind Rehyat, causal, frame_tokens > 0, chunk_frames >= 1, overlap_frames >= 0.
  explicit RecurrentHybridAttention(const HybridOptions& options);

  // The next chunk: q, k, v [B, n*frame_tokens, H, d] (compute dtype, unit stride on d),
  // phi_q, phi_k [B, n*frame_tokens, H, Dp] (f32; f64 with f64 inputs), n = chunk_frames
  // frames, or fewer for the video's last chunk (no step may follow a short chunk).
  // Returns y [B, n*frame_tokens, H, d] in q's dtype, equal to the rows of the parallel
  // causal hybrid_attention for these frames.
  Tensor step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q, const Tensor& phi_k);

  // Forgets everything (a new video, or the next denoising step).
  void reset();

  const HybridOptions& options() const { return options_; }
  int64_t frames_done() const { return frames_done_; }
  int64_t kept_frames() const;         // frames whose k, v, phi_k are kept (<= overlap_frames)
  const Tensor& state() const { return state_; }            // S [B, H, Dp, d] (undefined before the first step)
  const Tensor& normalizer() const { return normalizer_; }  // z [B, H, Dp]
  size_t state_bytes() const;  // S, z and the kept frames

 private:
  HybridOptions options_;
  Tensor state_;       // S [B, H, Dp, d] state dtype
  Tensor normalizer_;  // z [B, H, Dp] state dtype
  Tensor kept_k_, kept_v_;  // [B, kept*frame_tokens, H, d] compute dtype (undefined when none)
  Tensor kept_phi_k_;       // [B, kept*frame_tokens, H, Dp]
  int64_t frames_done_ = 0;
  bool finished_ = false;  // a chunk shorter than chunk_frames ended the video
};

// The whole sequence through RecurrentHybridAttention, chunk by chunk (same arguments and
// result as hybrid_attention with kind Rehyat, causal). For tests and tools.
Tensor hybrid_attention_recurrent(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q,
                                  const Tensor& phi_k, const HybridOptions& options);

}  // namespace rehyat::attention
