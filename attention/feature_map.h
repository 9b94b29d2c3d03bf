// The ReHyAt feature map φ (SPEC §3): a small per-head MLP (a grouped 1×1 conv) whose
// non-negative output replaces exp(q·k/√d) by φq(q)·φk(k) in the linear-attention part.
//
//   ψ(x) = softplus(W2 · act(W1 · x + b1) + b2)   per head: x [d], W1 [h, d], W2 [Dp, h]
//   φ(x) = concat_i ψ_i(x)^i                      ψ split into P equal parts ψ_1..ψ_P (1-based)
//
// act is GELU (tanh form, the default), ReLU or none. Defaults h = Dp = 2d, P = 2; P ∈ {1,
// 2, 3}, Dp divisible by P. Weights are stored per head, nn.Sequential-style:
// `<prefix>.0.weight [H, h, d]`, `.0.bias [H, h]`, `.2.weight [H, Dp, h]`, `.2.bias [H, Dp]`.
// The forward is one autograd op: two batched products (heads as the batch, x read in place
// as a strided view) around two fused maps -- bias + activation, and bias + softplus + part
// powers written straight into the [B, N, H, Dp] layout -- with the matching fused backward
// (attention/feature_map_kernels.h; the bias gradients are summed inside the maps). φ comes
// out in the high dtype (f32, or f64 for f64 inputs) because it feeds sums over many keys,
// and the maps compute in it. The products of a bf16 / f16 model on CUDA run in its compute
// dtype on tensor cores with fp32 sums (as PyTorch autocast would; the softplus input and
// the weight gradients come out in fp32); elsewhere they run in the high dtype. forward_composite() is the same function
// from autograd primitives, the reference the tests compare against.
//
// Initialization (why): φq·φk should start as an approximation of the softmax kernel, so the
// distillation starts from a sensible attention instead of noise. The hidden layer starts as
// a lossless ± split of x (W1 = [I; −I], b1 = 0; act(z) − act(−z) = z exactly for GELU-tanh
// and ReLU; none: halved), so the pre-softplus value is exactly linear in x at init:
// z_i = (ω·x/d^¼ − β)/i with ω ~ N(0, I) per feature (Philox, seeded by parameter name) and
// β = ½·ln Dp + √d/2. While z ≪ 0, softplus(z) ≈ e^z, so each feature ψ_i^i is
// ≈ exp(ω·x/d^¼ − β): Performer's positive random
// features (φq and φk share ω), and φq·φk ≈ (1/Dp)·Σ exp(ω·(q+k)/d^¼) · e^{−√d} ≈ exp(q·k/√d) for RMS-normed heads
// (|q|² ≈ |k|² ≈ d). Dividing part i's pre-activation by i makes softplus^i ≈ exp again, so
// every part estimates the same kernel. It is a rough start, not an exact one: the
// random-feature estimate is noisy (log φq·φk vs q·k/√d correlate ≈ 0.5–0.7 at d = 64..128,
// Dp = 2d..8d), softplus bends away from e^z as z nears 0, and Wan's norm weights change
// |q|, |k|; the distillation takes it from there. With h < 2d only the first ⌊h/2⌋ coordinates of x
// enter; an odd leftover hidden unit starts with a small random input row and a zero output
// column (it is live but contributes nothing at init).
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "layers/modules.h"

namespace rehyat::attention {

enum class FeatureActivation { Gelu, Relu, None };
const char* feature_activation_name(FeatureActivation activation);       // "gelu", "relu", "none"
FeatureActivation parse_feature_activation(const std::string& name);    // throws naming the value

struct FeatureMapOptions {
  int64_t heads = 1;
  int64_t head_dim = 0;     // d
  int64_t hidden_dim = 0;   // h; 0: 2d
  int64_t feature_dim = 0;  // Dp; 0: 2d
  int64_t degree = 2;       // P ∈ {1, 2, 3}; Dp % P == 0
  FeatureActivation activation = FeatureActivation::Gelu;

  int64_t hidden() const { return hidden_dim > 0 ? hidden_dim : 2 * head_dim; }
  int64_t features() const { return feature_dim > 0 ? feature_dim : 2 * head_dim; }
  // Parameters of one feature map: H·(h·d + h + Dp·h + Dp).
  int64_t parameter_count() const;
  // Throws naming `where` when a size is not positive, P ∉ {1,2,3} or Dp % P != 0.
  void validate(const std::string& where = "FeatureMapOptions") const;
};

class FeatureMap {
 public:
  Tensor weight1;  // [H, h, d]   (".0.weight")
  Tensor bias1;    // [H, h]      (".0.bias")
  Tensor weight2;  // [H, Dp, h]  (".2.weight")
  Tensor bias2;    // [H, Dp]     (".2.bias")

  FeatureMap() = default;
  // Parameters are created by `factory` (device, param dtype, seed) for `name`
  // ("blocks.3.self_attn.phi_q"), initialized as described above. The random features ω
  // are drawn from the stream named `feature_stream` (default: name): φq and φk of one
  // block must share it (as Performer's estimate uses the same ω on both sides), so they
  // start as the same function.
  FeatureMap(const layers::ParamFactory& factory, const std::string& name, const FeatureMapOptions& options,
             const std::string& feature_stream = "");

  const FeatureMapOptions& options() const { return options_; }

  // x [B, N, H, d] (any float dtype, any strides) -> φ [B, N, H, Dp] contiguous, f32 (f64
  // when x is f64). Differentiable in x and the four parameters.
  Tensor forward(const Tensor& x) const;
  // The same function composed from autograd primitives, all in the high dtype (tests).
  Tensor forward_composite(const Tensor& x) const;
  // ψ [..., Dp] -> concat_i ψ_i^i over P = degree equal parts of the last dim.
  static Tensor split_powers(const Tensor& psi, int64_t degree);

  // prefix.0.weight, prefix.0.bias, prefix.2.weight, prefix.2.bias.
  void collect(const std::string& prefix, layers::NamedTensors& out) const;

 private:
  void check_input(const Tensor& x) const;  // throws naming x unless it is [B, N, H, d] floating

  FeatureMapOptions options_;
};

}  // namespace rehyat::attention
