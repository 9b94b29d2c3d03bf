// Patch / time / text embeddings and (un)patchify.
#include "layers/embeddings.h"

#include <cmath>

#include "autograd/ops.h"

namespace rehyat::layers {

TokenGrid patch_grid(const Shape& s, const PatchSize& patch) {
  REHYAT_CHECK(s.size() == 5, "latents must be [B, C, F, H, W], got {}", shape_str(s));
  REHYAT_CHECK(s[2] % patch[0] == 0 && s[3] % patch[1] == 0 && s[4] % patch[2] == 0,
               "latents {}: frames/height/width must be multiples of the patch size [{}]", shape_str(s),
               fmt::join(patch, ", "));
  return TokenGrid{s[2] / patch[0], s[3] / patch[1], s[4] / patch[2], 0};
}

Tensor patchify(const Tensor& latents, const PatchSize& patch) {
  const TokenGrid g = patch_grid(latents.shape(), patch);
  const int64_t B = latents.size(0), C = latents.size(1);
  const auto [pt, ph, pw] = patch;
  return latents.reshape({B, C, g.frames, pt, g.height, ph, g.width, pw})
      .permute({0, 2, 4, 6, 1, 3, 5, 7})  // [B, f, h, w, C, pt, ph, pw]
      .reshape({B, g.tokens(), C * pt * ph * pw});
}

Tensor unpatchify(const Tensor& y, const TokenGrid& g, const PatchSize& patch, int64_t out_dim) {
  const auto [pt, ph, pw] = patch;
  REHYAT_CHECK(y.dim() == 3 && y.size(1) == g.tokens() && y.size(2) == pt * ph * pw * out_dim,
               "unpatchify: {} does not match grid {}x{}x{} with patch [{}] and {} channels", y.str(), g.frames,
               g.height, g.width, fmt::join(patch, ", "), out_dim);
  const int64_t B = y.size(0);
  return y.reshape({B, g.frames, g.height, g.width, pt, ph, pw, out_dim})
      .permute({0, 7, 1, 4, 2, 5, 3, 6})  // [B, out, f, pt, h, ph, w, pw]
      .reshape({B, out_dim, g.frames * pt, g.height * ph, g.width * pw});
}

Tensor sinusoidal_embedding(const Tensor& timestep, int64_t freq_dim, DType dtype, Device device) {
  REHYAT_CHECK(timestep.dim() == 1, "timestep must be [B], got {}", timestep.str());
  REHYAT_CHECK(freq_dim % 2 == 0, "sinusoidal embedding width must be even, got {}", freq_dim);
  const std::vector<double> t = timestep.to_vector();
  const int64_t B = int64_t(t.size()), half = freq_dim / 2;
  std::vector<double> emb(size_t(B * freq_dim));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < half; ++k) {
      const double s = t[size_t(b)] * std::pow(10000.0, -double(k) / double(half));
      emb[size_t(b * freq_dim + k)] = std::cos(s);
      emb[size_t(b * freq_dim + half + k)] = std::sin(s);
    }
  return Tensor::from_vector(emb, {B, freq_dim}, dtype, device);
}

// --- patch embedding ------------------------------------------------------------------------

PatchEmbedding::PatchEmbedding(const ParamFactory& f, int64_t in_dim, int64_t dim, const PatchSize& patch_)
    : patch(patch_) {
  const int64_t fan_in = in_dim * patch[0] * patch[1] * patch[2];
  weight = f.xavier_uniform("patch_embedding.weight", {dim, in_dim, patch[0], patch[1], patch[2]});
  bias = f.uniform("patch_embedding.bias", {dim}, 1.0 / std::sqrt(double(fan_in)));
}

Tensor PatchEmbedding::forward(const Tensor& latents, const Precision& p) const {
  const int64_t in = weight.size(1);
  REHYAT_CHECK(latents.dim() == 5 && latents.size(1) == in, "latents {} must be [B, {}, F, H, W]", latents.str(), in);
  const Tensor tokens = patchify(cast(latents, p.compute), patch);
  const Tensor w = cast(weight, p.compute).reshape({weight.size(0), -1});
  return cast(linear(tokens, w, cast(bias, p.compute)), p.high);
}

void PatchEmbedding::collect(const std::string& prefix, NamedTensors& out) const {
  out.emplace_back(prefix + ".weight", weight);
  out.emplace_back(prefix + ".bias", bias);
}

// --- time embedding -------------------------------------------------------------------------

TimeEmbedding::TimeEmbedding(const ParamFactory& f, int64_t freq_dim_, int64_t dim)
    : projection(f, "time_projection.1", dim, 6 * dim), freq_dim(freq_dim_) {
  fc1.weight = f.normal("time_embedding.0.weight", {dim, freq_dim}, 0.02);
  fc1.bias = f.zeros({dim});
  fc2.weight = f.normal("time_embedding.2.weight", {dim, dim}, 0.02);
  fc2.bias = f.zeros({dim});
}

TimeEmbedding::Output TimeEmbedding::forward(const Tensor& timestep, const Precision& p, Device device) const {
  const Tensor sinusoid = sinusoidal_embedding(timestep, freq_dim, p.high, device);
  Output out;
  out.e = fc2.forward(silu(fc1.forward(sinusoid, p.high)), p.high);  // [B, D]
  const int64_t B = out.e.size(0), D = out.e.size(1);
  out.e0 = projection.forward(silu(out.e), p.high).view({B, 6, D});
  return out;
}

void TimeEmbedding::collect(NamedTensors& out) const {
  fc1.collect("time_embedding.0", out);
  fc2.collect("time_embedding.2", out);
  projection.collect("time_projection.1", out);
}

// --- text embedding -------------------------------------------------------------------------

TextEmbedding::TextEmbedding(const ParamFactory& f, int64_t text_dim, int64_t dim, int64_t text_len_)
    : text_len(text_len_) {
  mlp.fc1.weight = f.normal("text_embedding.0.weight", {dim, text_dim}, 0.02);
  mlp.fc1.bias = f.zeros({dim});
  mlp.fc2.weight = f.normal("text_embedding.2.weight", {dim, dim}, 0.02);
  mlp.fc2.bias = f.zeros({dim});
}

Tensor TextEmbedding::forward(const Tensor& context, const Precision& p) const {
  const int64_t text_dim = mlp.fc1.weight.size(1);
  REHYAT_CHECK(context.dim() == 3 && context.size(2) == text_dim && context.size(1) <= text_len,
               "context {} must be [B, L <= {}, {}]", context.str(), text_len, text_dim);
  Tensor padded = cast(context, p.compute);
  if (context.size(1) < text_len) {
    const Tensor zeros = Tensor::zeros({context.size(0), text_len - context.size(1), text_dim}, p.compute,
                                       context.device());
    padded = concat({padded, zeros}, 1);
  }
  return mlp.forward(padded, p.compute);
}

void TextEmbedding::collect(NamedTensors& out) const { mlp.collect("text_embedding", out); }

}  // namespace rehyat::layers
