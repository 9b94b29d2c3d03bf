// Wan2.1's self- and cross-attention layers (SPEC §2).
//
// SelfAttention: q, k, v, o = Linear(D, D) with bias (compute dtype); q and k pass through
// RMSNorm over the full D (high dtype: fp32, as Wan's WanRMSNorm computes in fp32), are
// split into heads [B, N, H, d], rotated by 3D RoPE (high dtype) and cast back to the
// compute dtype; then an AttentionCore maps (q, k, v) to the per-head output, which is
// merged and projected by o.
//
// The AttentionCore is the replaceable part (SPEC §3-4): the teacher uses
// SoftmaxAttentionCore (full softmax, scale 1/sqrt(d), non-causal); the ReHyAt stage
// installs a hybrid core in chosen blocks, which brings its own parameters (listed after
// the projections under the same prefix, e.g. blocks.N.self_attn.phi_q.*) and, for
// recurrent inference, its own state. project() and output() are exposed separately so a
// distillation step can run the pieces around a different core.
//
// CrossAttention: q from x, k and v from the (already D-wide) text context, RMSNorm on q
// and k, no RoPE, full softmax over all text_len context rows (no mask).
#pragma once

#include <memory>
#include <string>

#include "attention/softmax_attention.h"
#include "layers/modules.h"
#include "layers/rope.h"

namespace rehyat::layers {

// Maps post-norm, post-RoPE q, k and v [B, N, H, d] (compute dtype) to the attention
// output [B, N, H, d] before the output projection.
class AttentionCore {
 public:
  virtual ~AttentionCore() = default;
  virtual std::string kind() const = 0;  // "softmax", "rehyat", ...
  virtual Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const TokenGrid& grid) = 0;
  // The core's own parameters under the self-attention prefix ("blocks.N.self_attn").
  virtual void collect(const std::string& prefix, NamedTensors& out) const {}
};

// Softmax attention through attention::softmax_attention. With options.keys.chunk_frames
// set it restricts each query chunk to its softmax key set (frame_tokens is taken from
// the grid); the default is Wan's full attention.
class SoftmaxAttentionCore : public AttentionCore {
 public:
  explicit SoftmaxAttentionCore(attention::SoftmaxAttentionOptions options = {}) : options_(options) {}
  std::string kind() const override { return "softmax"; }
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const TokenGrid& grid) override;
  const attention::SoftmaxAttentionOptions& options() const { return options_; }

 private:
  attention::SoftmaxAttentionOptions options_;
};

class SelfAttention {
 public:
  Linear q, k, v, o;       // [D, D] each
  RMSNorm norm_q, norm_k;  // [D]
  int64_t num_heads = 1;
  std::shared_ptr<AttentionCore> core;  // SoftmaxAttentionCore unless replaced

  SelfAttention() = default;
  SelfAttention(const ParamFactory& f, const std::string& prefix, int64_t dim, int64_t num_heads, double eps);

  struct Projected {
    Tensor q, k, v;  // [B, N, H, d] in the compute dtype; q and k normed and rotated
  };
  // x [B, N, D] (any float dtype; cast to the compute dtype for the projections).
  Projected project(const Tensor& x, const RopeTables& rope, const Precision& p) const;
  // attn [B, N, H, d] -> o(merge heads) [B, N, D] in the compute dtype.
  Tensor output(const Tensor& attn, const Precision& p) const;
  // project -> core -> output.
  Tensor forward(const Tensor& x, const RopeTables& rope, const Precision& p) const;
  void collect(const std::string& prefix, NamedTensors& out) const;  // q, k, v, o, norm_q, norm_k, core's
};

class CrossAttention {
 public:
  Linear q, k, v, o;
  RMSNorm norm_q, norm_k;
  int64_t num_heads = 1;

  CrossAttention() = default;
  CrossAttention(const ParamFactory& f, const std::string& prefix, int64_t dim, int64_t num_heads, double eps);
  // x [B, N, D], context [B, L, D] -> [B, N, D] in the compute dtype.
  Tensor forward(const Tensor& x, const Tensor& context, const Precision& p) const;
  void collect(const std::string& prefix, NamedTensors& out) const;
};

}  // namespace rehyat::layers
