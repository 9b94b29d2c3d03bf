// The `attention:` section of a config (beside `model:`): which attention the DiT's
// self-attention blocks run, and how.
//
//   attention:
//     kind: rehyat            # softmax (the teacher; default) | rehyat | linear | uniform_hybrid
//     chunk_frames: 3         # Tc, query/softmax chunk length in latent frames
//     overlap_frames: 1       # To, extra softmax key frames before each chunk (may exceed Tc)
//     causal: true            # linear keys only from earlier frames (recurrent inference)
//     degree: 2               # P, powers 1..P of the feature-map parts (1, 2 or 3)
//     feature_dim: 0          # Dp, 0: 2 * head_dim
//     hidden_dim: 0           # h,  0: 2 * head_dim
//     activation: gelu        # gelu | relu | none (the feature map's hidden activation)
//     rate: 2                 # R, uniform_hybrid: softmax key frames are those divisible by R
//     hybrid_blocks: [3, 7]   # explicit converted blocks (default []: see the count)
//     hybrid_block_count: 0   # N > 0: convert N blocks (default 0: every block)
//     block_ranking: []       # blocks best first by distillation error (written by distillation)
//
// Which blocks get the hybrid core (kind != softmax; kind softmax converts none):
//   hybrid_blocks non-empty  -> exactly those (hybrid_block_count must then be 0);
//   hybrid_block_count N > 0 -> the first N of block_ranking when one is given (it must
//                               then name at least N blocks), else blocks 0..N-1 (a
//                               placeholder until the distillation ranks them);
//   neither                  -> every block.
// A config's count and list are two keys because a schema field has one type; the
// ranking is a key of its own so a resolved config records why those blocks were chosen.
// Errors name the file, line and key (load_config's and ours); command-line overrides such
// as `attention.chunk_frames=5` go through load_config.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "attention/feature_map.h"
#include "attention/hybrid_attention.h"
#include "core/config.h"

namespace rehyat::layers {
struct WanConfig;
}

namespace rehyat::attention {

struct AttentionConfig {
  AttentionKind kind = AttentionKind::Softmax;
  int64_t chunk_frames = 3;    // Tc >= 1
  int64_t overlap_frames = 1;  // To >= 0
  bool causal = true;
  int64_t degree = 2;          // P
  int64_t feature_dim = 0;     // Dp; 0: 2 * head_dim
  int64_t hidden_dim = 0;      // h; 0: 2 * head_dim
  FeatureActivation activation = FeatureActivation::Gelu;
  int64_t rate = 2;            // R >= 1
  std::vector<int64_t> hybrid_blocks;  // explicit list; empty: use the count
  int64_t hybrid_block_count = 0;      // 0: every block (when the list is empty)
  std::vector<int64_t> block_ranking;  // best first; empty: block order

  // Converted block indices, ascending (empty for kind softmax). Assumes valid().
  std::vector<int> converted_blocks(int64_t num_layers) const;
  // The feature-map shape for a model's heads.
  FeatureMapOptions feature_map(int64_t heads, int64_t head_dim) const;
  // The op options; frame_tokens is left 0 (the core takes it from the token grid).
  HybridOptions hybrid_options() const;

  // Problems as (dotted key, message) pairs for a model of num_layers blocks and head_dim;
  // empty when usable.
  std::vector<std::pair<std::string, std::string>> problems(int64_t num_layers, int64_t head_dim) const;
  // Throws rehyat::Error naming `where` and every problem.
  void validate(int64_t num_layers, int64_t head_dim, const std::string& where = "AttentionConfig") const;
  // The config as an `attention:` YAML section (the inverse of attention_config_from).
  std::string to_yaml() const;
};

// Adds the optional `attention:` section (every key has a default; a file without it
// runs the softmax teacher).
void declare_attention_config(ConfigSchema& schema);

// Reads the `attention:` section of a config loaded with a schema that includes
// declare_attention_config(), and checks it against the model (block indices, feature
// sizes). Errors name the file, line and key.
AttentionConfig attention_config_from(const Config& config, const layers::WanConfig& model);

}  // namespace rehyat::attention
