// WanConfig: the Wan2.1 DiT architecture numbers, read from the `model:` section of a
// YAML config under Wan's own key names (dim, ffn_dim, freq_dim, num_heads, num_layers,
// in_dim, out_dim, text_len, text_dim, eps, patch_size), so a config can be written from
// Wan's config.json by hand. Tools compose schemas: declare_model_config() adds the
// `model:` section to a schema that other code extends with its own sections, and
// from_config() reads the validated values back and checks their consistency (head dim
// even and RoPE-splittable, positive sizes), naming the file and key at fault.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"

namespace rehyat::layers {

struct WanConfig {
  int64_t dim = 1536;        // hidden size D
  int64_t ffn_dim = 8960;    // FFN hidden size
  int64_t freq_dim = 256;    // sinusoidal time-embedding width
  int64_t num_heads = 12;
  int64_t num_layers = 30;
  int64_t in_dim = 16;       // latent channels in
  int64_t out_dim = 16;      // velocity channels out
  int64_t text_len = 512;    // the context is zero-padded to this many tokens
  int64_t text_dim = 4096;   // text-encoder width (umT5-XXL)
  double eps = 1e-6;         // LayerNorm / RMSNorm epsilon
  std::array<int64_t, 3> patch_size = {1, 2, 2};  // (t, h, w)

  int64_t head_dim() const { return dim / num_heads; }
  int64_t patch_volume() const { return patch_size[0] * patch_size[1] * patch_size[2]; }

  // Inconsistent values as (dotted key, message) pairs; empty when the config is usable.
  std::vector<std::pair<std::string, std::string>> problems() const;
  // Throws rehyat::Error naming `where` (a file or "WanConfig") and every problem.
  void validate(const std::string& where = "WanConfig") const;
  // The config as a `model:` YAML section (the inverse of from_config).
  std::string to_yaml() const;

  static WanConfig wan_1_3b();  // Wan2.1-T2V-1.3B
  static WanConfig wan_14b();   // Wan2.1-T2V-14B
};

// Adds the `model:` section (all keys required except eps and patch_size, which default
// to Wan's 1e-6 and [1, 2, 2]).
void declare_model_config(ConfigSchema& schema);

// Reads and validates the `model:` section of a config loaded with a schema that
// includes declare_model_config(). Errors name the file and key (with line).
WanConfig from_config(const Config& config);

// Convenience for a file that holds only a `model:` section (configs/models/*.yaml);
// files with more sections go through a composed schema and load_config().
WanConfig load_wan_config(const std::string& path, const std::vector<std::string>& overrides = {});

}  // namespace rehyat::layers
