// Tiny causal ReHyAt DiTs for the ONNX export tests (test_onnx_export.cpp and the
// reference writer onnx_reference.cpp): dim 48, 2 heads (head dim 24: RoPE bands of 4
// pairs each), 2 layers, every parameter random and non-zero (live head), so every part of
// the step graph changes the output. The feature maps get weights that make φ depend on
// its input (N(0, 1/fan_in) per head) and biases near −2.5, so the linear part φq·S is of
// the softmax part's size rather than swamping it (with layer_test_util's generic scales
// φ ≈ softplus(0) everywhere and the softmax part would hardly matter).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <string>

#include "attention/attention_config.h"
#include "autograd/graph.h"
#include "layers/hybrid_core.h"
#include "layers/layer_test_util.h"
#include "layers/wan_model.h"

namespace rehyat::testing {

inline layers::WanConfig tiny_onnx_config(const std::array<int64_t, 3>& patch = {1, 2, 2}) {
  layers::WanConfig c;
  c.dim = 48;
  c.ffn_dim = 96;
  c.freq_dim = 32;
  c.num_heads = 2;
  c.num_layers = 2;
  c.in_dim = 4;
  c.out_dim = 4;
  c.text_len = 8;
  c.text_dim = 16;
  c.patch_size = patch;
  return c;
}

inline attention::AttentionConfig causal_rehyat_attention(int64_t chunk_frames, int64_t overlap_frames,
                                                         int64_t degree = 2) {
  attention::AttentionConfig a;
  a.kind = attention::AttentionKind::Rehyat;
  a.causal = true;
  a.chunk_frames = chunk_frames;
  a.overlap_frames = overlap_frames;
  a.degree = degree;
  return a;
}

inline layers::WanModel tiny_onnx_model(const layers::WanConfig& config, const attention::AttentionConfig& attention,
                                        uint64_t seed = 5) {
  layers::WanModel model(config, Device::cpu(), DType::F32, seed);
  layers::apply_attention_config(model, attention, seed + 1);
  randomize_parameters(model.named_parameters(), seed + 2);
  autograd::NoGradGuard no_grad;
  for (const auto& [name, p] : model.named_parameters()) {
    if (name.find(".phi_") == std::string::npos) continue;
    const uint64_t s = seed ^ layers::name_hash(name);
    const bool bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    const double mean = bias && name.find(".2.") != std::string::npos ? -2.5 : 0.0;
    const double stddev = bias ? 0.3 : 1.0 / std::sqrt(double(p.size(2)));  // weights [H, out, in]
    Tensor dst = p;
    dst.copy_(Tensor::randn(p.shape(), s, 0, DType::F64, Device::cpu(), mean, stddev));
  }
  model.set_requires_grad(false);
  return model;
}

}  // namespace rehyat::testing
