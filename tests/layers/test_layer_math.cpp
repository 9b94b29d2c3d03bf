// Layer forwards against direct formulas written independently of the layer code:
// RoPE bands and rotation, the sinusoidal time embedding against hand-computed values,
// patchify / unpatchify element maps and round trip, the patch embedding against a
// Conv3d loop, and the time/text embeddings against host loops.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/ops.h"
#include "layer_test_util.h"
#include "layers/embeddings.h"
#include "layers/rope.h"

namespace rehyat::testing {
namespace {

using layers::Precision;
using layers::TokenGrid;

TEST(Rope, BandsFollowWanSplit) {
  // d = 128: 64 pairs = 22 (frames) + 21 (rows) + 21 (columns), SPEC §2.
  auto b = layers::rope_bands(128);
  EXPECT_EQ(b.frame_pairs, 22);
  EXPECT_EQ(b.row_pairs, 21);
  EXPECT_EQ(b.col_pairs, 21);
  b = layers::rope_bands(64);  // 64 - 4*10 = 24 dims, 20, 20
  EXPECT_EQ(b.frame_pairs, 12);
  EXPECT_EQ(b.row_pairs, 10);
  EXPECT_EQ(b.col_pairs, 10);
  b = layers::rope_bands(48);
  EXPECT_EQ(b.frame_pairs, 8);
  EXPECT_EQ(b.row_pairs, 8);
  EXPECT_EQ(b.col_pairs, 8);
  EXPECT_THROW(layers::rope_bands(4), Error);
  EXPECT_THROW(layers::rope_bands(13), Error);
}

TEST(Rope, AnglesMatchDirectFormula) {
  const int64_t d = 128;
  const TokenGrid grid{3, 4, 5, 2};  // frame offset 2
  const std::vector<double> a = layers::rope_angles(d, grid);
  ASSERT_EQ(a.size(), size_t(grid.tokens() * d / 2));
  // Token (f=1, h=2, w=3) is number (1*4 + 2)*5 + 3 = 33; its frame position is 1 + 2.
  const double* t = a.data() + 33 * 64;
  for (int j = 0; j < 22; ++j) EXPECT_DOUBLE_EQ(t[j], 3.0 * std::pow(10000.0, -2.0 * j / 44.0)) << j;
  for (int j = 0; j < 21; ++j) EXPECT_DOUBLE_EQ(t[22 + j], 2.0 * std::pow(10000.0, -2.0 * j / 42.0)) << j;
  for (int j = 0; j < 21; ++j) EXPECT_DOUBLE_EQ(t[43 + j], 3.0 * std::pow(10000.0, -2.0 * j / 42.0)) << j;
  // Spot values: pair 1 of the frame band turns by 3 * 10000^(-2/44); pair 22 (first row pair) by h.
  EXPECT_NEAR(t[1], 3.0 * 0.6579332246575682, 1e-15);
  EXPECT_DOUBLE_EQ(t[22], 2.0);
  EXPECT_DOUBLE_EQ(t[43], 3.0);
}

TEST(Rope, RotationMatchesDirectFormulaOnCpu) {
  const int64_t B = 2, H = 3, d = 48;
  const TokenGrid grid{2, 3, 2, 1};
  const int64_t N = grid.tokens();
  Tensor x = Tensor::randn({B, N, H, d}, 3, 0, DType::F64);
  const auto tables = layers::RopeTables::build(d, grid, DType::F64, Device::cpu());
  const std::vector<double> got = layers::apply_rope(x, tables).to_vector(), in = x.to_vector();
  const std::vector<double> angles = layers::rope_angles(d, grid);
  double worst = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t j = 0; j < d / 2; ++j) {
          const size_t base = size_t(((b * N + n) * H + h) * d + 2 * j);
          const double th = angles[size_t(n * d / 2 + j)];
          const double x0 = in[base], x1 = in[base + 1];
          worst = std::max(worst, std::abs(got[base] - (x0 * std::cos(th) - x1 * std::sin(th))));
          worst = std::max(worst, std::abs(got[base + 1] - (x0 * std::sin(th) + x1 * std::cos(th))));
        }
  EXPECT_LT(worst, 1e-14);
}

TEST(Rope, F32TablesAgreeWithF64) {
  const TokenGrid grid{4, 3, 5, 0};
  Tensor x = Tensor::randn({1, grid.tokens(), 2, 64}, 4, 0, DType::F64);
  Tensor ref = layers::apply_rope(x, layers::RopeTables::build(64, grid, DType::F64, Device::cpu()));
  Tensor got = layers::apply_rope(x.to(DType::F32), layers::RopeTables::build(64, grid, DType::F32, Device::cpu()));
  EXPECT_EQ(got.dtype(), DType::F32);
  expect_close("f32 rope", got, ref, 1e-6);
}

TEST(TimeEmbedding, SinusoidMatchesHandComputedValues) {
  // freq_dim 8: half = 4, s_k = t * 10000^(-k/4) = t * {1, 0.1, 0.01, 0.001}; [cos(s), sin(s)].
  Tensor t = Tensor::from_vector({0.0, 1.0, 637.5}, {3}, DType::F32);
  const std::vector<double> e = layers::sinusoidal_embedding(t, 8, DType::F64, Device::cpu()).to_vector();
  const std::vector<double> want = {
      1, 1, 1, 1, 0, 0, 0, 0,
      0.5403023058681398, 0.9950041652780258, 0.9999500004166653, 0.9999995000000417,
      0.8414709848078965, 0.09983341664682815, 0.009999833334166664, 0.0009999998333333417,
      -0.9705461778774241, 0.6072934225674604, 0.9957879912530557, 0.8035862383845647,
      0.24091516475208297, 0.79447762643532, 0.09168574849017776, 0.5951883378216895};
  ASSERT_EQ(e.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(e[i], want[i], 1e-12) << i;
}

// Host reference of y = x W^T + b on row-major vectors.
std::vector<double> host_linear(const std::vector<double>& x, int64_t rows, const Tensor& w, const Tensor& b) {
  const std::vector<double> W = w.to_vector(), bias = b.to_vector();
  const int64_t out = w.size(0), in = w.size(1);
  std::vector<double> y(size_t(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double s = bias[size_t(o)];
      for (int64_t i = 0; i < in; ++i) s += x[size_t(r * in + i)] * W[size_t(o * in + i)];
      y[size_t(r * out + o)] = s;
    }
  return y;
}

TEST(TimeEmbedding, MatchesHostComposition) {
  layers::TimeEmbedding m(layers::ParamFactory{Device::cpu(), DType::F64, 3}, 16, 8);
  layers::NamedTensors params;
  m.collect(params);
  randomize_parameters(params, 5);
  Tensor t = Tensor::from_vector({12.5, 999.0}, {2}, DType::F32);
  const auto out = m.forward(t, Precision::for_compute(DType::F64), Device::cpu());
  ASSERT_EQ(out.e.shape(), (Shape{2, 8}));
  ASSERT_EQ(out.e0.shape(), (Shape{2, 6, 8}));
  auto silu = [](std::vector<double> v) {
    for (double& x : v) x = x / (1 + std::exp(-x));
    return v;
  };
  const std::vector<double> s = layers::sinusoidal_embedding(t, 16, DType::F64, Device::cpu()).to_vector();
  const std::vector<double> e = host_linear(silu(host_linear(s, 2, m.fc1.weight, m.fc1.bias)), 2, m.fc2.weight, m.fc2.bias);
  const std::vector<double> e0 = host_linear(silu(e), 2, m.projection.weight, m.projection.bias);
  expect_close("e", out.e, Tensor::from_vector(e, {2, 8}, DType::F64), 1e-13);
  expect_close("e0", out.e0, Tensor::from_vector(e0, {2, 6, 8}, DType::F64), 1e-13);
}

TEST(TextEmbedding, PadsWithZerosToTextLenAndAppliesGeluMlp) {
  const int64_t text_dim = 6, dim = 8, text_len = 5, L = 3;
  layers::TextEmbedding m(layers::ParamFactory{Device::cpu(), DType::F64, 3}, text_dim, dim, text_len);
  layers::NamedTensors params;
  m.collect(params);
  randomize_parameters(params, 6);
  Tensor ctx = Tensor::randn({1, L, text_dim}, 9, 0, DType::F64);
  Tensor got = m.forward(ctx, Precision::for_compute(DType::F64));
  ASSERT_EQ(got.shape(), (Shape{1, text_len, dim}));
  std::vector<double> padded = ctx.to_vector();
  padded.resize(size_t(text_len * text_dim), 0.0);
  std::vector<double> h = host_linear(padded, text_len, m.mlp.fc1.weight, m.mlp.fc1.bias);
  for (double& x : h) x = 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
  const std::vector<double> want = host_linear(h, text_len, m.mlp.fc2.weight, m.mlp.fc2.bias);
  expect_close("text embedding", got, Tensor::from_vector(want, {1, text_len, dim}, DType::F64), 1e-13);
  // Padded rows are the MLP of zeros (= MLP biases only), the same for every padded row.
  const std::vector<double> g = got.to_vector();
  for (int64_t i = 0; i < dim; ++i) EXPECT_DOUBLE_EQ(g[size_t(3 * dim + i)], g[size_t(4 * dim + i)]);
  EXPECT_THROW(m.forward(Tensor::randn({1, text_len + 1, text_dim}, 1, 0, DType::F64),
                         Precision::for_compute(DType::F64)),
               Error);
}

TEST(Patchify, ElementMapAndRoundTripWithGeneralPatch) {
  const layers::PatchSize patch{2, 3, 2};
  const int64_t B = 2, C = 3, F = 4, H = 6, W = 4;
  Tensor x = Tensor::randn({B, C, F, H, W}, 10, 0, DType::F64);
  Tensor tokens = layers::patchify(x, patch);
  const TokenGrid g = layers::patch_grid(x.shape(), patch);
  ASSERT_EQ(g.frames, 2);
  ASSERT_EQ(g.height, 2);
  ASSERT_EQ(g.width, 2);
  ASSERT_EQ(tokens.shape(), (Shape{B, 8, C * 12}));
  const std::vector<double> xv = x.to_vector(), tv = tokens.to_vector();
  // tokens[b, (f*h + hh)*w + ww, ((c*pt + p)*ph + q)*pw + r] == x[b, c, f*pt+p, hh*ph+q, ww*pw+r]
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t f = 0; f < F; ++f)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) {
            const int64_t token = ((f / 2) * 2 + h / 3) * 2 + w / 2;
            const int64_t feature = ((c * 2 + f % 2) * 3 + h % 3) * 2 + w % 2;
            ASSERT_EQ(tv[size_t((b * 8 + token) * C * 12 + feature)], xv[size_t((((b * C + c) * F + f) * H + h) * W + w)]);
          }

  // unpatchify: out[c, f*pt+p, h*ph+q, w*pw+r] = y[token, ((p*ph+q)*pw+r)*out + c].
  const int64_t out_ch = 2;
  Tensor y = Tensor::randn({B, 8, 12 * out_ch}, 11, 0, DType::F64);
  Tensor u = layers::unpatchify(y, g, patch, out_ch);
  ASSERT_EQ(u.shape(), (Shape{B, out_ch, F, H, W}));
  const std::vector<double> yv = y.to_vector(), uv = u.to_vector();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < out_ch; ++c)
      for (int64_t f = 0; f < F; ++f)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) {
            const int64_t token = ((f / 2) * 2 + h / 3) * 2 + w / 2;
            const int64_t feature = (((f % 2) * 3 + h % 3) * 2 + w % 2) * out_ch + c;
            ASSERT_EQ(uv[size_t((((b * out_ch + c) * F + f) * H + h) * W + w)], yv[size_t((b * 8 + token) * 12 * out_ch + feature)]);
          }

  // Round trip: with one channel the two layouts agree, so unpatchify(patchify(x)) == x.
  Tensor x1 = Tensor::randn({B, 1, F, H, W}, 12, 0, DType::F64);
  expect_close("round trip", layers::unpatchify(layers::patchify(x1, patch), g, patch, 1), x1, 0.0);
  EXPECT_THROW(layers::patchify(Tensor::randn({1, 1, 3, 6, 4}, 1, 0, DType::F64), patch), Error);
}

TEST(PatchEmbedding, MatchesConv3dLoop) {
  const layers::PatchSize patch{1, 2, 2};
  const int64_t B = 2, C = 3, F = 2, H = 4, W = 6, D = 5;
  layers::PatchEmbedding m(layers::ParamFactory{Device::cpu(), DType::F64, 1}, C, D, patch);
  layers::NamedTensors params;
  m.collect("patch_embedding", params);
  randomize_parameters(params, 8);
  Tensor x = Tensor::randn({B, C, F, H, W}, 13, 0, DType::F64);
  Tensor got = m.forward(x, Precision::for_compute(DType::F64));
  ASSERT_EQ(got.shape(), (Shape{B, F * (H / 2) * (W / 2), D}));
  const std::vector<double> wv = m.weight.to_vector(), bv = m.bias.to_vector(), xv = x.to_vector(), gv = got.to_vector();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t f = 0; f < F; ++f)
      for (int64_t i = 0; i < H / 2; ++i)
        for (int64_t j = 0; j < W / 2; ++j)
          for (int64_t o = 0; o < D; ++o) {
            double s = bv[size_t(o)];
            for (int64_t c = 0; c < C; ++c)
              for (int64_t q = 0; q < 2; ++q)
                for (int64_t r = 0; r < 2; ++r)
                  s += wv[size_t(((o * C + c) * 2 + q) * 2 + r)] *
                       xv[size_t((((b * C + c) * F + f) * H + 2 * i + q) * W + 2 * j + r)];
            const int64_t token = (f * (H / 2) + i) * (W / 2) + j;
            EXPECT_NEAR(gv[size_t((b * 12 + token) * D + o)], s, 1e-12);
          }
}

}  // namespace
}  // namespace rehyat::testing
