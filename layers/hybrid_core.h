// The ReHyAt self-attention core (SPEC §3) for one converted block, and the function that
// installs it into a WanModel from an `attention:` config.
//
// HybridAttentionCore owns the block's two feature maps φq and φk (per head) and the
// hybrid options; forward computes φq(q), φk(k) (f32, or f64 for f64 inputs) and calls
// attention::hybrid_attention with frame_tokens taken from the token grid. Its parameters
// are listed under the block's self-attention prefix:
//   blocks.N.self_attn.phi_q.{0,2}.{weight,bias}, blocks.N.self_attn.phi_k.{0,2}.{weight,bias}
// so they load, save and train through the same named_parameters() as the DiT's own.
// The feature maps are public (phi_q(), phi_k()) for the recurrent engine, which builds a
// block's running state S = Σ φk(k) vᵀ, z = Σ φk(k) from them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention/attention_config.h"
#include "attention/feature_map.h"
#include "attention/hybrid_attention.h"
#include "layers/attention_layers.h"

namespace rehyat::layers {

class WanModel;

class HybridAttentionCore : public AttentionCore {
 public:
  // prefix: the block's self-attention ("blocks.3.self_attn"); the feature maps are created
  // by `factory` as prefix.phi_q / prefix.phi_k, sharing their random features (stream
  // prefix.phi), so φq = φk at init. options.frame_tokens is ignored (set per forward from
  // the grid).
  HybridAttentionCore(const ParamFactory& factory, const std::string& prefix,
                      const attention::FeatureMapOptions& feature_map, const attention::HybridOptions& options);

  std::string kind() const override { return attention::attention_kind_name(options_.kind); }
  // q, k, v [B, N, H, d] (compute dtype), N = grid.tokens() -> [B, N, H, d] in q's dtype.
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const TokenGrid& grid) override;
  void collect(const std::string& prefix, NamedTensors& out) const override;  // prefix.phi_q.*, prefix.phi_k.*

  attention::FeatureMap& phi_q() { return phi_q_; }
  attention::FeatureMap& phi_k() { return phi_k_; }
  const attention::FeatureMap& phi_q() const { return phi_q_; }
  const attention::FeatureMap& phi_k() const { return phi_k_; }
  const attention::HybridOptions& options() const { return options_; }
  attention::HybridOptions& options() { return options_; }  // e.g. to change chunking after install

 private:
  attention::FeatureMap phi_q_, phi_k_;
  attention::HybridOptions options_;
};

// Installs a HybridAttentionCore (parameters on the model's device in its param dtype,
// initialized from `seed`) into every block config.converted_blocks() names, and a fresh
// SoftmaxAttentionCore into every other block, so the model then runs what the config
// says (kind softmax: the teacher everywhere). Returns the converted block indices.
// Throws naming the problem when the config does not fit the model.
std::vector<int> apply_attention_config(WanModel& model, const attention::AttentionConfig& config, uint64_t seed = 0);

// The core of block `index` when it is a HybridAttentionCore, else nullptr.
HybridAttentionCore* hybrid_core(WanModel& model, int index);

}  // namespace rehyat::layers
