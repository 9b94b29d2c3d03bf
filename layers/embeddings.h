// The Wan2.1 DiT's input side (SPEC §2): patch embedding, time embedding and text
// embedding, plus patchify / unpatchify.
//
// - Patch embedding: Conv3d(in, D, kernel = stride = patch) with bias is a linear map on
//   patchified input. patchify() lays each patch out in Conv3d weight order (c, p, q, r)
//   so weight.view([D, in*pt*ph*pw]) is the linear weight; tokens are frame-major, then
//   row, then column. Runs in the compute dtype; the result joins the residual stream in
//   the high dtype.
// - Time embedding: sinusoid of freq_dim (cos first; angles in f64), Linear -> SiLU ->
//   Linear gives e [B, D]; SiLU -> Linear(D, 6D) gives e0 [B, 6, D]. High dtype (fp32).
// - Text embedding: the context [B, L, text_dim] zero-padded to text_len (the padded rows
//   still attend: no mask), then Linear -> GELU(tanh) -> Linear in the compute dtype.
// - unpatchify: out[c, f*pt+p, h*ph+q, w*pw+r] = y[token(f,h,w), ((p*ph+q)*pw+r)*out + c].
#pragma once

#include <array>
#include <string>

#include "core/tensor.h"
#include "layers/modules.h"
#include "layers/rope.h"

namespace rehyat::layers {

using PatchSize = std::array<int64_t, 3>;

// latents [B, C, F, H, W] -> tokens [B, f*h*w, C*pt*ph*pw]; F, H, W must be multiples of
// the patch. Differentiable.
Tensor patchify(const Tensor& latents, const PatchSize& patch);
TokenGrid patch_grid(const Shape& latent_shape, const PatchSize& patch);  // checks divisibility
// y [B, f*h*w, pt*ph*pw*out_dim] -> [B, out_dim, f*pt, h*ph, w*pw]. Differentiable.
Tensor unpatchify(const Tensor& y, const TokenGrid& grid, const PatchSize& patch, int64_t out_dim);

// Wan's sinusoidal_embedding_1d: timestep [B] (any float dtype/device) -> [B, freq_dim] =
// [cos(t * 10000^(-k/half)), sin(...)], k < half = freq_dim/2, computed in f64 and stored
// in `dtype` on `device`. Not differentiable (the timestep is an input, not a parameter).
Tensor sinusoidal_embedding(const Tensor& timestep, int64_t freq_dim, DType dtype, Device device);

struct PatchEmbedding {
  Tensor weight;  // [D, in, pt, ph, pw] (Conv3d layout)
  Tensor bias;    // [D]
  PatchSize patch{1, 2, 2};

  PatchEmbedding() = default;
  // Wan's init: Xavier-uniform on weight.flatten(1); bias as torch's Conv3d default,
  // U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  PatchEmbedding(const ParamFactory& f, int64_t in_dim, int64_t dim, const PatchSize& patch);
  // latents [B, in, F, H, W] -> x [B, N, D] in p.high (computed in p.compute).
  Tensor forward(const Tensor& latents, const Precision& p) const;
  void collect(const std::string& prefix, NamedTensors& out) const;
};

struct TimeEmbedding {
  Linear fc1, fc2;    // time_embedding.0 [D, freq_dim], time_embedding.2 [D, D]
  Linear projection;  // time_projection.1 [6D, D]
  int64_t freq_dim = 256;

  struct Output {
    Tensor e;   // [B, D]    (the head's modulation input)
    Tensor e0;  // [B, 6, D] (the blocks' modulation input)
  };

  TimeEmbedding() = default;
  // Wan's init: time_embedding weights N(0, 0.02), time_projection Xavier; biases zero.
  TimeEmbedding(const ParamFactory& f, int64_t freq_dim, int64_t dim);
  Output forward(const Tensor& timestep, const Precision& p, Device device) const;  // in p.high
  void collect(NamedTensors& out) const;  // time_embedding.{0,2}.*, time_projection.1.*
};

struct TextEmbedding {
  GeluMLP mlp;  // text_embedding.0 [D, text_dim], text_embedding.2 [D, D]
  int64_t text_len = 512;

  TextEmbedding() = default;
  // Wan's init: weights N(0, 0.02), biases zero.
  TextEmbedding(const ParamFactory& f, int64_t text_dim, int64_t dim, int64_t text_len);
  // context [B, L <= text_len, text_dim] -> [B, text_len, D] in p.compute.
  Tensor forward(const Tensor& context, const Precision& p) const;
  void collect(NamedTensors& out) const;
};

}  // namespace rehyat::layers
