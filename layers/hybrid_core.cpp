// HybridAttentionCore: φq, φk and attention::hybrid_attention for one block; installation
// into a WanModel from an attention config.
#include "layers/hybrid_core.h"

#include <fmt/format.h>

#include "attention/softmax_attention.h"
#include "core/check.h"
#include "layers/wan_model.h"

namespace rehyat::layers {

HybridAttentionCore::HybridAttentionCore(const ParamFactory& factory, const std::string& prefix,
                                         const attention::FeatureMapOptions& feature_map,
                                         const attention::HybridOptions& options)
    : phi_q_(factory, prefix + ".phi_q", feature_map, prefix + ".phi"),
      phi_k_(factory, prefix + ".phi_k", feature_map, prefix + ".phi"),
      options_(options) {}

Tensor HybridAttentionCore::forward(const Tensor& q, const Tensor& k, const Tensor& v, const TokenGrid& grid) {
  REHYAT_CHECK(q.dim() == 4 && q.size(1) == grid.tokens(), "{} attention: q {} does not hold the grid's {} tokens ({}x{}x{})",
               kind(), q.str(), grid.tokens(), grid.frames, grid.height, grid.width);
  attention::HybridOptions options = options_;
  options.frame_tokens = grid.frame_tokens();
  const Tensor phi_q = phi_q_.forward(q), phi_k = phi_k_.forward(k);
  return attention::prefer_cpu_composite(q) ? attention::hybrid_attention_composite(q, k, v, phi_q, phi_k, options)
                                            : attention::hybrid_attention(q, k, v, phi_q, phi_k, options);
}

void HybridAttentionCore::collect(const std::string& prefix, NamedTensors& out) const {
  phi_q_.collect(prefix + ".phi_q", out);
  phi_k_.collect(prefix + ".phi_k", out);
}

std::vector<int> apply_attention_config(WanModel& model, const attention::AttentionConfig& config, uint64_t seed) {
  const WanConfig& wan = model.config();
  config.validate(wan.num_layers, wan.head_dim());
  const std::vector<int> converted = config.converted_blocks(wan.num_layers);
  const attention::FeatureMapOptions feature_map = config.feature_map(wan.num_heads, wan.head_dim());
  const attention::HybridOptions options = config.hybrid_options();
  const ParamFactory factory{model.device(), model.param_dtype(), seed};
  size_t next = 0;  // converted is ascending
  for (int i = 0; i < model.num_blocks(); ++i) {
    SelfAttention& attn = model.block(i).self_attn;
    if (next < converted.size() && converted[next] == i) {
      attn.core = std::make_shared<HybridAttentionCore>(factory, block_prefix(i) + ".self_attn", feature_map, options);
      ++next;
    } else {
      attn.core = std::make_shared<SoftmaxAttentionCore>();
    }
  }
  return converted;
}

HybridAttentionCore* hybrid_core(WanModel& model, int index) {
  return dynamic_cast<HybridAttentionCore*>(model.block(index).self_attn.core.get());
}

}  // namespace rehyat::layers
