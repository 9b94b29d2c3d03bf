// AttentionConfig from YAML: schema declaration, typed read-back and checks against the model.
#include "attention/attention_config.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>

#include "core/check.h"
#include "layers/wan_config.h"

namespace rehyat::attention {

std::vector<int> AttentionConfig::converted_blocks(int64_t num_layers) const {
  std::vector<int> blocks;
  if (kind == AttentionKind::Softmax) return blocks;
  if (!hybrid_blocks.empty()) {
    for (int64_t b : hybrid_blocks) blocks.push_back(int(b));
  } else if (hybrid_block_count > 0) {
    for (int64_t i = 0; i < hybrid_block_count; ++i)
      blocks.push_back(int(block_ranking.empty() ? i : block_ranking[size_t(i)]));
  } else {
    for (int64_t i = 0; i < num_layers; ++i) blocks.push_back(int(i));
  }
  std::sort(blocks.begin(), blocks.end());
  return blocks;
}

FeatureMapOptions AttentionConfig::feature_map(int64_t heads, int64_t head_dim) const {
  FeatureMapOptions o;
  o.heads = heads;
  o.head_dim = head_dim;
  o.hidden_dim = hidden_dim;
  o.feature_dim = feature_dim;
  o.degree = degree;
  o.activation = activation;
  return o;
}

HybridOptions AttentionConfig::hybrid_options() const {
  HybridOptions o;
  o.kind = kind;
  o.chunk_frames = chunk_frames;
  o.overlap_frames = overlap_frames;
  o.causal = causal;
  o.rate = rate;
  return o;
}

std::vector<std::pair<std::string, std::string>> AttentionConfig::problems(int64_t num_layers,
                                                                           int64_t head_dim) const {
  std::vector<std::pair<std::string, std::string>> found;  // (dotted key, message)
  auto add = [&](const char* key, std::string message) { found.emplace_back(fmt::format("attention.{}", key), message); };
  if (chunk_frames < 1) add("chunk_frames", fmt::format("must be at least 1, got {}", chunk_frames));
  if (overlap_frames < 0) add("overlap_frames", fmt::format("must be >= 0, got {}", overlap_frames));
  if (degree < 1 || degree > 3) add("degree", fmt::format("must be 1, 2 or 3, got {}", degree));
  if (hidden_dim < 0) add("hidden_dim", fmt::format("must be >= 0 (0: 2 * head_dim), got {}", hidden_dim));
  if (feature_dim < 0) add("feature_dim", fmt::format("must be >= 0 (0: 2 * head_dim), got {}", feature_dim));
  const int64_t features = feature_dim > 0 ? feature_dim : 2 * head_dim;
  if (feature_dim >= 0 && degree >= 1 && features % degree != 0)
    add("feature_dim", fmt::format("{} (feature dim{}) is not divisible by attention.degree {}", features,
                                   feature_dim == 0 ? ", 2 * head_dim" : "", degree));
  if (rate < 1) add("rate", fmt::format("must be at least 1, got {}", rate));

  auto check_indices = [&](const char* key, const std::vector<int64_t>& list) {
    std::set<int64_t> seen;
    for (int64_t b : list) {
      if (b < 0 || b >= num_layers)
        add(key, fmt::format("block {} is out of range: the model has {} blocks (0..{})", b, num_layers, num_layers - 1));
      else if (!seen.insert(b).second)
        add(key, fmt::format("block {} is listed twice", b));
    }
  };
  check_indices("hybrid_blocks", hybrid_blocks);
  check_indices("block_ranking", block_ranking);
  if (hybrid_block_count < 0 || hybrid_block_count > num_layers)
    add("hybrid_block_count", fmt::format("must be in 0..{} (the model's blocks), got {}", num_layers, hybrid_block_count));
  if (!hybrid_blocks.empty() && hybrid_block_count != 0)
    add("hybrid_block_count", fmt::format("give either attention.hybrid_blocks (a list) or a count, not both (count {})",
                                          hybrid_block_count));
  if (hybrid_blocks.empty() && hybrid_block_count > 0 && !block_ranking.empty() &&
      int64_t(block_ranking.size()) < hybrid_block_count)
    add("block_ranking", fmt::format("ranks {} blocks, fewer than attention.hybrid_block_count {}", block_ranking.size(),
                                     hybrid_block_count));
  return found;
}

void AttentionConfig::validate(int64_t num_layers, int64_t head_dim, const std::string& where) const {
  std::vector<std::string> lines;
  for (const auto& [key, message] : problems(num_layers, head_dim)) lines.push_back(fmt::format("{}: {}", key, message));
  if (!lines.empty()) REHYAT_FAIL("{}: invalid attention config:\n  {}", where, fmt::join(lines, "\n  "));
}

std::string AttentionConfig::to_yaml() const {
  return fmt::format(
      "attention:\n  kind: {}\n  chunk_frames: {}\n  overlap_frames: {}\n  causal: {}\n  degree: {}\n"
      "  feature_dim: {}\n  hidden_dim: {}\n  activation: {}\n  rate: {}\n  hybrid_blocks: [{}]\n"
      "  hybrid_block_count: {}\n  block_ranking: [{}]\n",
      attention_kind_name(kind), chunk_frames, overlap_frames, causal ? "true" : "false", degree, feature_dim,
      hidden_dim, feature_activation_name(activation), rate, fmt::join(hybrid_blocks, ", "), hybrid_block_count,
      fmt::join(block_ranking, ", "));
}

void declare_attention_config(ConfigSchema& schema) {
  schema.section("attention", "self-attention of the DiT blocks: softmax teacher or ReHyAt hybrid (SPEC §3)")
      .choice("attention.kind", {"softmax", "rehyat", "linear", "uniform_hybrid"}, "softmax",
              "attention of the converted blocks (softmax: the teacher, nothing converted)")
      .optional<int64_t>("attention.chunk_frames", 3, "Tc: latent frames per softmax chunk")
      .optional<int64_t>("attention.overlap_frames", 1, "To: earlier frames added to each chunk's softmax keys")
      .optional<bool>("attention.causal", true, "linear keys only from earlier frames (recurrent inference)")
      .optional<int64_t>("attention.degree", 2, "P: feature-map parts raised to the powers 1..P (1, 2 or 3)")
      .optional<int64_t>("attention.feature_dim", 0, "Dp: feature dimension (0: 2 * head_dim)")
      .optional<int64_t>("attention.hidden_dim", 0, "h: feature-map hidden size (0: 2 * head_dim)")
      .choice("attention.activation", {"gelu", "relu", "none"}, "gelu", "feature-map hidden activation")
      .optional<int64_t>("attention.rate", 2, "R: uniform_hybrid softmax key frames are those divisible by R")
      .optional<std::vector<int64_t>>("attention.hybrid_blocks", {}, "converted blocks (empty: use the count)")
      .optional<int64_t>("attention.hybrid_block_count", 0, "convert this many blocks (0: every block)")
      .optional<std::vector<int64_t>>("attention.block_ranking", {},
                                      "blocks best first by distillation error (the count takes the first N)");
}

AttentionConfig attention_config_from(const Config& config, const layers::WanConfig& model) {
  AttentionConfig c;
  c.kind = parse_attention_kind(config.get<std::string>("attention.kind"));
  c.chunk_frames = config.get<int64_t>("attention.chunk_frames");
  c.overlap_frames = config.get<int64_t>("attention.overlap_frames");
  c.causal = config.get<bool>("attention.causal");
  c.degree = config.get<int64_t>("attention.degree");
  c.feature_dim = config.get<int64_t>("attention.feature_dim");
  c.hidden_dim = config.get<int64_t>("attention.hidden_dim");
  c.activation = parse_feature_activation(config.get<std::string>("attention.activation"));
  c.rate = config.get<int64_t>("attention.rate");
  c.hybrid_blocks = config.get<std::vector<int64_t>>("attention.hybrid_blocks");
  c.hybrid_block_count = config.get<int64_t>("attention.hybrid_block_count");
  c.block_ranking = config.get<std::vector<int64_t>>("attention.block_ranking");
  std::vector<std::string> lines;
  for (const auto& [key, message] : c.problems(model.num_layers, model.head_dim()))
    lines.push_back(fmt::format("{}: {}: {}", config.origin(key), key, message));
  if (!lines.empty()) REHYAT_FAIL("{}: invalid attention config:\n  {}", config.source(), fmt::join(lines, "\n  "));
  return c;
}

}  // namespace rehyat::attention
