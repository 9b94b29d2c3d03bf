// What model a checkpoint holds, written into its safetensors header so the file says it
// itself: `rehyat export` and other runtimes (PyTorch, diffusers) rebuild the DiT and its
// attention from the checkpoint alone, with no YAML beside it.
//
//   __metadata__ (safetensors header; values are strings, here JSON objects):
//     "rehyat.model_config":     {"dim": 64, "ffn_dim": 128, "freq_dim": 64, "num_heads": 2,
//                                 "num_layers": 2, "in_dim": 3, "out_dim": 3, "text_len": 12,
//                                 "text_dim": 32, "eps": 1e-06, "patch_size": [1, 2, 2]}
//                                (Wan's own config.json key names, layers/wan_config.h)
//     "rehyat.attention_config": {"kind": "rehyat", "chunk_frames": 3, "overlap_frames": 1,
//                                 "causal": true, "degree": 2, "feature_dim": 0, "hidden_dim": 0,
//                                 "activation": "gelu", "rate": 2, "hybrid_blocks": [1],
//                                 "hybrid_block_count": 0, "block_ranking": [1, 0],
//                                 "converted_blocks": [1]}
//                                (the keys of the `attention:` section, attention/attention_config.h,
//                                plus converted_blocks: the blocks that hold phi_q/phi_k tensors,
//                                resolved from the others so a reader need not know the rule)
//
// Reading follows the YAML sections' rules (model: every key but eps and patch_size required;
// attention: every key optional, with its default; converted_blocks optional, and when given
// it must match). Invalid JSON, an unknown or mistyped field, or values the model cannot take
// fail naming the file, the metadata key and the field. A checkpoint without either key (a
// Wan2.1 release, or one written before this existed) has no description; one with a single
// key is malformed.
//
// A description may also come from YAML: a run config (with a `run:` section) or a model
// file (`model:` and optionally `attention:`), as `rehyat forward --model` takes.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "attention/attention_config.h"
#include "core/safetensors.h"
#include "layers/wan_config.h"

namespace rehyat::exporting {

inline constexpr const char* kModelConfigKey = "rehyat.model_config";
inline constexpr const char* kAttentionConfigKey = "rehyat.attention_config";

// A DiT and the attention its blocks run, with where that was read.
struct ModelDescription {
  layers::WanConfig model;
  attention::AttentionConfig attention;
  // False for a YAML file without any `attention:` key: it says nothing about attention
  // (and reads as the softmax teacher).
  bool attention_given = true;
  std::string source;  // "FILE (safetensors metadata)" or the YAML path
};

// JSON text of each config (one line), and back. `where` names the file and key in errors.
std::string model_config_json(const layers::WanConfig& config);
std::string attention_config_json(const attention::AttentionConfig& config, int64_t num_layers);
layers::WanConfig parse_model_config_json(const std::string& text, const std::string& where);
// Checked against `model` (block indices, feature sizes) like attention_config_from().
attention::AttentionConfig parse_attention_config_json(const std::string& text, const layers::WanConfig& model,
                                                       const std::string& where);

// The two __metadata__ entries above, for layers::save_checkpoint(..., metadata).
std::map<std::string, std::string> checkpoint_metadata(const layers::WanConfig& model,
                                                       const attention::AttentionConfig& attention);

// The description in one file's metadata; nullopt when it has neither key.
std::optional<ModelDescription> read_checkpoint_metadata(const SafetensorsFile& file);
// The same for a checkpoint path (a file, a shard index or a folder: layers::checkpoint_files);
// shards that carry a description must agree.
std::optional<ModelDescription> read_checkpoint_description(const std::string& checkpoint);

// From YAML: a run config (a file with a `run:` section, itself or through `include:`) or a
// model file; `overrides` are key=value strings as load_config takes them.
ModelDescription load_model_description(const std::string& yaml_path, const std::vector<std::string>& overrides = {});

// Where `given` (a YAML file) disagrees with `stored` (a checkpoint's metadata), one line per
// key: "model.dim: 64 vs 96" (stored first). Attention is compared only when
// given.attention_given, and only where it changes the model: nothing else for two softmax
// configs; the converted blocks, except that a count without a ranking (blocks chosen later
// by distillation) matches any choice of that many blocks.
std::vector<std::string> description_differences(const ModelDescription& stored, const ModelDescription& given);

}  // namespace rehyat::exporting
