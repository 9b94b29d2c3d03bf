// WanConfig from YAML: schema declaration, typed read-back and consistency checks.
#include "layers/wan_config.h"

#include <fmt/format.h>

#include <vector>

#include "core/check.h"

namespace rehyat::layers {

std::vector<std::pair<std::string, std::string>> WanConfig::problems() const {
  std::vector<std::pair<std::string, std::string>> found;  // (dotted key, message)
  auto positive = [&](const char* key, int64_t v) {
    if (v <= 0) found.emplace_back(fmt::format("model.{}", key), fmt::format("must be positive, got {}", v));
  };
  positive("dim", dim);
  positive("ffn_dim", ffn_dim);
  positive("freq_dim", freq_dim);
  positive("num_heads", num_heads);
  positive("num_layers", num_layers);
  positive("in_dim", in_dim);
  positive("out_dim", out_dim);
  positive("text_len", text_len);
  positive("text_dim", text_dim);
  if (freq_dim > 0 && freq_dim % 2 != 0) found.emplace_back("model.freq_dim", fmt::format("must be even, got {}", freq_dim));
  if (!(eps > 0)) found.emplace_back("model.eps", fmt::format("must be positive, got {}", eps));
  if (patch_size[0] <= 0 || patch_size[1] <= 0 || patch_size[2] <= 0)
    found.emplace_back("model.patch_size", fmt::format("entries must be positive, got [{}]", fmt::join(patch_size, ", ")));
  if (dim > 0 && num_heads > 0) {
    if (dim % num_heads != 0) {
      found.emplace_back("model.num_heads", fmt::format("model.dim {} is not divisible by model.num_heads {}", dim, num_heads));
    } else {
      // 3D RoPE splits the head dim into f/h/w bands of d-4(d/6), 2(d/6), 2(d/6) dims made
      // of whole (even, odd) pairs; the h and w bands must not be empty.
      const int64_t d = head_dim();
      if (d % 2 != 0 || d / 6 == 0)
        found.emplace_back("model.num_heads",
                           fmt::format("head dim {} (dim / num_heads) must be even and at least 6 for 3D RoPE", d));
    }
  }
  return found;
}

void WanConfig::validate(const std::string& where) const {
  std::vector<std::string> lines;
  for (const auto& [key, message] : problems()) lines.push_back(fmt::format("{}: {}", key, message));
  if (!lines.empty()) REHYAT_FAIL("{}: invalid model config:\n  {}", where, fmt::join(lines, "\n  "));
}

std::string WanConfig::to_yaml() const {
  return fmt::format(
      "model:\n  dim: {}\n  ffn_dim: {}\n  freq_dim: {}\n  num_heads: {}\n  num_layers: {}\n"
      "  in_dim: {}\n  out_dim: {}\n  text_len: {}\n  text_dim: {}\n  eps: {}\n  patch_size: [{}]\n",
      dim, ffn_dim, freq_dim, num_heads, num_layers, in_dim, out_dim, text_len, text_dim, eps,
      fmt::join(patch_size, ", "));
}

WanConfig WanConfig::wan_1_3b() { return WanConfig{}; }

WanConfig WanConfig::wan_14b() {
  WanConfig c;
  c.dim = 5120;
  c.ffn_dim = 13824;
  c.num_heads = 40;
  c.num_layers = 40;
  return c;
}

void declare_model_config(ConfigSchema& schema) {
  schema.section("model", "Wan2.1 DiT architecture (Wan's own key names)")
      .required<int64_t>("model.dim", "hidden size D")
      .required<int64_t>("model.ffn_dim", "FFN hidden size")
      .required<int64_t>("model.freq_dim", "sinusoidal time-embedding width")
      .required<int64_t>("model.num_heads", "attention heads (head dim = dim / num_heads)")
      .required<int64_t>("model.num_layers", "transformer blocks")
      .required<int64_t>("model.in_dim", "latent channels in")
      .required<int64_t>("model.out_dim", "velocity channels out")
      .required<int64_t>("model.text_len", "context length (zero-padded to it)")
      .required<int64_t>("model.text_dim", "text-embedding width")
      .optional<double>("model.eps", 1e-6, "LayerNorm / RMSNorm epsilon")
      .optional<std::vector<int64_t>>("model.patch_size", {1, 2, 2}, "patch size (t, h, w)");
}

WanConfig from_config(const Config& config) {
  WanConfig c;
  c.dim = config.get<int64_t>("model.dim");
  c.ffn_dim = config.get<int64_t>("model.ffn_dim");
  c.freq_dim = config.get<int64_t>("model.freq_dim");
  c.num_heads = config.get<int64_t>("model.num_heads");
  c.num_layers = config.get<int64_t>("model.num_layers");
  c.in_dim = config.get<int64_t>("model.in_dim");
  c.out_dim = config.get<int64_t>("model.out_dim");
  c.text_len = config.get<int64_t>("model.text_len");
  c.text_dim = config.get<int64_t>("model.text_dim");
  c.eps = config.get<double>("model.eps");
  const auto patch = config.get<std::vector<int64_t>>("model.patch_size");
  REHYAT_CHECK(patch.size() == 3, "{}: model.patch_size must have 3 entries (t, h, w), got {}",
               config.origin("model.patch_size"), patch.size());
  for (size_t i = 0; i < 3; ++i) c.patch_size[i] = patch[i];
  std::vector<std::string> lines;
  for (const auto& [key, message] : c.problems())
    lines.push_back(fmt::format("{}: {}: {}", config.origin(key), key, message));
  if (!lines.empty()) REHYAT_FAIL("{}: invalid model config:\n  {}", config.source(), fmt::join(lines, "\n  "));
  return c;
}

WanConfig load_wan_config(const std::string& path, const std::vector<std::string>& overrides) {
  ConfigSchema schema;
  declare_model_config(schema);
  return from_config(load_config(path, schema, overrides));
}

}  // namespace rehyat::layers
