// One Wan2.1 DiT block and the output head (SPEC §2; wan/modules/model.py
// WanAttentionBlock and Head).
//
// Block, with m = modulation [1, 6, D] + e0 [B, 6, D] split into m0..m5 = shift_sa,
// scale_sa, gate_sa, shift_ffn, scale_ffn, gate_ffn:
//   a = LN1(x)·(1+m1) + m0                    (the self-attention input)
//   x = x + SelfAttn(a) · m2
//   x = x + CrossAttn(LN3(x), context)        (LN3 affine)
//   x = x + FFN(LN2(x)·(1+m4) + m3) · m5
// LN1/LN2 without affine, eps from the config. Norms, modulation and residual adds run in
// the high dtype (fp32; x stays fp32 as in Wan), the projections/attention/FFN in the
// compute dtype.
// Head: (shift, scale) = head.modulation [1, 2, D] + e (e, not e0);
//   y = Linear(D, out*pt*ph*pw)(LN(x)·(1+scale) + shift), all in the high dtype (Wan runs
//   its head under fp32 autocast).
#pragma once

#include <string>

#include "layers/attention_layers.h"
#include "layers/modules.h"
#include "layers/rope.h"

namespace rehyat::layers {

// What a block hands to a capture: the tensors the distillation cache stores (SPEC §4.1).
struct BlockActivations {
  Tensor self_attn_input;   // [B, N, D] high dtype: LN1(x)·(1+m1) + m0, fed to q/k/v
  Tensor self_attn_output;  // [B, N, D] compute dtype: after the o projection, before the gate
};

class WanBlock {
 public:
  Tensor modulation;  // [1, 6, D]
  LayerNorm norm1;    // no affine
  SelfAttention self_attn;
  LayerNorm norm3;    // affine (cross-attention norm)
  CrossAttention cross_attn;
  LayerNorm norm2;    // no affine
  GeluMLP ffn;        // ffn.0 [ffn_dim, D], ffn.2 [D, ffn_dim]

  WanBlock() = default;
  // prefix: "blocks.N" (names the RNG streams). Wan's init: modulation N(0, 1/D).
  WanBlock(const ParamFactory& f, const std::string& prefix, int64_t dim, int64_t ffn_dim, int64_t num_heads,
           double eps);

  // x [B, N, D] high dtype; e0 [B, 6, D] high; context [B, L, D] compute. Returns the new
  // x [B, N, D] (high). When `capture` is given it receives the self-attention input and
  // output of this call.
  Tensor forward(const Tensor& x, const Tensor& e0, const Tensor& context, const RopeTables& rope,
                 const Precision& p, BlockActivations* capture = nullptr) const;

  // m = modulation + e0 as six [B, 1, D] chunks (high dtype).
  std::vector<Tensor> modulation_chunks(const Tensor& e0, const Precision& p) const;

  void collect(const std::string& prefix, NamedTensors& out) const;
};

class Head {
 public:
  Tensor modulation;  // [1, 2, D]
  LayerNorm norm;     // no affine
  Linear head;        // [out*pt*ph*pw, D]

  Head() = default;
  // Wan's init: modulation N(0, 1/D), head weight and bias zero.
  Head(const ParamFactory& f, int64_t dim, int64_t out_features, double eps);
  // x [B, N, D], e [B, D] -> [B, N, out*pt*ph*pw] in the high dtype.
  Tensor forward(const Tensor& x, const Tensor& e, const Precision& p) const;
  void collect(NamedTensors& out) const;  // head.modulation, head.head.*
};

}  // namespace rehyat::layers
