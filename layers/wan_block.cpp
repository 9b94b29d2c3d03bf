// Wan2.1 block and head.
#include "layers/wan_block.h"

#include <cmath>

#include "autograd/ops.h"

namespace rehyat::layers {

namespace {
// LN(x)·(1 + scale) + shift in the high dtype.
Tensor modulate(const Tensor& normed, const Tensor& shift, const Tensor& scale) {
  return normed * (scale + 1.0) + shift;
}
}  // namespace

WanBlock::WanBlock(const ParamFactory& f, const std::string& prefix, int64_t dim, int64_t ffn_dim, int64_t num_heads,
                   double eps)
    : modulation(f.normal(prefix + ".modulation", {1, 6, dim}, 1.0 / std::sqrt(double(dim)))),
      norm1(f, dim, eps, false),
      self_attn(f, prefix + ".self_attn", dim, num_heads, eps),
      norm3(f, dim, eps, true),
      cross_attn(f, prefix + ".cross_attn", dim, num_heads, eps),
      norm2(f, dim, eps, false),
      ffn(f, prefix + ".ffn", dim, ffn_dim, dim) {}

std::vector<Tensor> WanBlock::modulation_chunks(const Tensor& e0, const Precision& p) const {
  const int64_t D = modulation.size(2);
  REHYAT_CHECK(e0.dim() == 3 && e0.size(1) == 6 && e0.size(2) == D, "block modulation input e0 {} must be [B, 6, {}]",
               e0.str(), D);
  const Tensor m = cast(modulation, p.high) + cast(e0, p.high);  // [B, 6, D]
  return m.chunk(6, 1);                                          // 6 x [B, 1, D]
}

Tensor WanBlock::forward(const Tensor& x_in, const Tensor& e0, const Tensor& context, const RopeTables& rope,
                         const Precision& p, BlockActivations* capture) const {
  const std::vector<Tensor> m = modulation_chunks(e0, p);
  Tensor x = cast(x_in, p.high);

  const Tensor attn_in = modulate(norm1.forward(x, p.high), m[0], m[1]);
  const Tensor attn_out = self_attn.forward(attn_in, rope, p);
  if (capture) {
    capture->self_attn_input = attn_in;
    capture->self_attn_output = attn_out;
  }
  x = x + cast(attn_out, p.high) * m[2];

  x = x + cast(cross_attn.forward(norm3.forward(x, p.high), context, p), p.high);

  const Tensor ffn_in = modulate(norm2.forward(x, p.high), m[3], m[4]);
  x = x + cast(ffn.forward(ffn_in, p.compute), p.high) * m[5];
  return x;
}

void WanBlock::collect(const std::string& prefix, NamedTensors& out) const {
  out.emplace_back(prefix + ".modulation", modulation);
  self_attn.collect(prefix + ".self_attn", out);
  norm3.collect(prefix + ".norm3", out);
  cross_attn.collect(prefix + ".cross_attn", out);
  ffn.collect(prefix + ".ffn", out);
}

// --- head ------------------------------------------------------------------------------------

Head::Head(const ParamFactory& f, int64_t dim, int64_t out_features, double eps)
    : modulation(f.normal("head.modulation", {1, 2, dim}, 1.0 / std::sqrt(double(dim)))), norm(f, dim, eps, false) {
  head.weight = f.zeros({out_features, dim});
  head.bias = f.zeros({out_features});
}

Tensor Head::forward(const Tensor& x, const Tensor& e, const Precision& p) const {
  const int64_t D = modulation.size(2);
  REHYAT_CHECK(e.dim() == 2 && e.size(1) == D, "head modulation input e {} must be [B, {}]", e.str(), D);
  const Tensor m = cast(modulation, p.high) + cast(e, p.high).unsqueeze(1);  // [B, 2, D]
  const std::vector<Tensor> shift_scale = m.chunk(2, 1);                    // 2 x [B, 1, D]
  return head.forward(modulate(norm.forward(x, p.high), shift_scale[0], shift_scale[1]), p.high);
}

void Head::collect(NamedTensors& out) const {
  out.emplace_back("head.modulation", modulation);
  head.collect("head.head", out);
}

}  // namespace rehyat::layers
