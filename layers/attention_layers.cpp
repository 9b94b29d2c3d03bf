// Self- and cross-attention layers around attention::softmax_attention.
#include "layers/attention_layers.h"

#include "autograd/ops.h"

namespace rehyat::layers {

Tensor SoftmaxAttentionCore::forward(const Tensor& q, const Tensor& k, const Tensor& v, const TokenGrid& grid) {
  attention::SoftmaxAttentionOptions options = options_;
  if (options.keys.chunked()) options.keys.frame_tokens = grid.frame_tokens();
  return attention::prefer_cpu_composite(q) ? attention::softmax_attention_composite(q, k, v, options)
                                             : attention::softmax_attention(q, k, v, options);
}

namespace {
// [B, N, D] -> [B, N, H, d] (a view when contiguous).
Tensor split_heads(const Tensor& x, int64_t heads) {
  return x.reshape({x.size(0), x.size(1), heads, x.size(2) / heads});
}
Tensor merge_heads(const Tensor& x) { return x.reshape({x.size(0), x.size(1), x.size(2) * x.size(3)}); }
}  // namespace

// --- self-attention ---------------------------------------------------------------------------

SelfAttention::SelfAttention(const ParamFactory& f, const std::string& prefix, int64_t dim, int64_t heads,
                             double eps)
    : q(f, prefix + ".q", dim, dim),
      k(f, prefix + ".k", dim, dim),
      v(f, prefix + ".v", dim, dim),
      o(f, prefix + ".o", dim, dim),
      norm_q(f, dim, eps),
      norm_k(f, dim, eps),
      num_heads(heads),
      core(std::make_shared<SoftmaxAttentionCore>()) {}

SelfAttention::Projected SelfAttention::project(const Tensor& x, const RopeTables& rope, const Precision& p) const {
  const Tensor xc = cast(x, p.compute);
  Projected out;
  // RMSNorm and RoPE in the high dtype, back to the compute dtype for attention.
  out.q = cast(apply_rope(split_heads(norm_q.forward(q.forward(xc, p.compute), p.high), num_heads), rope), p.compute);
  out.k = cast(apply_rope(split_heads(norm_k.forward(k.forward(xc, p.compute), p.high), num_heads), rope), p.compute);
  out.v = split_heads(v.forward(xc, p.compute), num_heads);
  return out;
}

Tensor SelfAttention::output(const Tensor& attn, const Precision& p) const {
  return o.forward(merge_heads(attn), p.compute);
}

Tensor SelfAttention::forward(const Tensor& x, const RopeTables& rope, const Precision& p) const {
  REHYAT_CHECK(core, "self-attention has no attention core");
  const Projected qkv = project(x, rope, p);
  return output(core->forward(qkv.q, qkv.k, qkv.v, rope.grid), p);
}

void SelfAttention::collect(const std::string& prefix, NamedTensors& out) const {
  q.collect(prefix + ".q", out);
  k.collect(prefix + ".k", out);
  v.collect(prefix + ".v", out);
  o.collect(prefix + ".o", out);
  norm_q.collect(prefix + ".norm_q", out);
  norm_k.collect(prefix + ".norm_k", out);
  if (core) core->collect(prefix, out);
}

// --- cross-attention --------------------------------------------------------------------------

CrossAttention::CrossAttention(const ParamFactory& f, const std::string& prefix, int64_t dim, int64_t heads,
                               double eps)
    : q(f, prefix + ".q", dim, dim),
      k(f, prefix + ".k", dim, dim),
      v(f, prefix + ".v", dim, dim),
      o(f, prefix + ".o", dim, dim),
      norm_q(f, dim, eps),
      norm_k(f, dim, eps),
      num_heads(heads) {}

Tensor CrossAttention::forward(const Tensor& x, const Tensor& context, const Precision& p) const {
  const Tensor xc = cast(x, p.compute), cc = cast(context, p.compute);
  const Tensor qh = cast(split_heads(norm_q.forward(q.forward(xc, p.compute), p.high), num_heads), p.compute);
  const Tensor kh = cast(split_heads(norm_k.forward(k.forward(cc, p.compute), p.high), num_heads), p.compute);
  const Tensor vh = split_heads(v.forward(cc, p.compute), num_heads);
  return o.forward(merge_heads(attention::softmax_attention(qh, kh, vh)), p.compute);
}

void CrossAttention::collect(const std::string& prefix, NamedTensors& out) const {
  q.collect(prefix + ".q", out);
  k.collect(prefix + ".k", out);
  v.collect(prefix + ".v", out);
  o.collect(prefix + ".o", out);
  norm_q.collect(prefix + ".norm_q", out);
  norm_k.collect(prefix + ".norm_k", out);
}

}  // namespace rehyat::layers
