// Sampling (train/sampler.h), video output (train/video_io.h) and the pixel metrics
// (train/eval_metrics.h). The solvers are checked on velocity fields with known exact
// solutions (a linear flow, the flow of a Gaussian data distribution); the model wrapper
// on the toy DiT (guidance, parallel vs recurrent); the files by reading them back with
// libpng / giflib; the metrics on constructed videos and trajectories.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attention/attention_config.h"
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/config.h"
#include "data/shapes.h"
#include "layers/hybrid_core.h"
#include "layers/layer_test_util.h"
#include "layers/wan_config.h"
#include "layers/wan_model.h"
#include "temp_dir.h"
#include "train/eval_metrics.h"
#include "train/sampler.h"
#include "train/video_io.h"

#ifdef REHYAT_PNG
#include <png.h>
#endif
#ifdef REHYAT_GIF
#include <gif_lib.h>
#endif

namespace rehyat {
namespace {

using testing::error_message;
using testing::expect_close;
using testing::expect_contains;
using testing::TempDir;
using train::SamplerOptions;

SamplerOptions solver_options(const std::string& solver, int64_t steps, double shift) {
  SamplerOptions o;
  o.solver = solver;
  o.steps = steps;
  o.shift = shift;
  return o;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector(), y = b.to_vector();
  EXPECT_EQ(x.size(), y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

// --- schedule and solvers -------------------------------------------------------------------

TEST(SamplingSigmas, ShiftedLinspaceFromOneToZero) {
  const std::vector<double> plain = train::sampling_sigmas(4, 1.0);
  ASSERT_EQ(plain.size(), 5u);
  for (int i = 0; i <= 4; ++i) EXPECT_NEAR(plain[size_t(i)], 1.0 - i / 4.0, 1e-15);
  const std::vector<double> shifted = train::sampling_sigmas(4, 5.0);
  EXPECT_EQ(shifted.front(), 1.0);
  EXPECT_EQ(shifted.back(), 0.0);
  EXPECT_NEAR(shifted[2], 5 * 0.5 / (1 + 4 * 0.5), 1e-15);  // 0.8333...
  EXPECT_NEAR(shifted[3], 5 * 0.25 / (1 + 4 * 0.25), 1e-15);
  for (size_t i = 1; i < shifted.size(); ++i) EXPECT_LT(shifted[i], shifted[i - 1]);
  EXPECT_THROW(train::sampling_sigmas(0, 5.0), Error);
  EXPECT_THROW(train::sampling_sigmas(4, 0.0), Error);
}

// x_σ = (1−σ)·x0 + σ·ε has the constant velocity ε − x0: both solvers land on x0 exactly.
TEST(SampleFlow, LinearFlowIsIntegratedExactly) {
  const Tensor x0 = Tensor::randn({2, 3, 5}, 1, 0, DType::F64), eps = Tensor::randn({2, 3, 5}, 2, 0, DType::F64);
  const Tensor v = eps - x0;
  for (const std::string solver : {"euler", "unipc"}) {
    for (int64_t steps : {1, 2, 3, 7}) {
      SCOPED_TRACE(fmt::format("{} steps={}", solver, steps));
      const Tensor got = train::sample_flow([&](const Tensor&, double) { return v; }, eps,
                                            solver_options(solver, steps, 5.0));
      EXPECT_LT(max_abs_diff(got, x0), 1e-13);
    }
  }
}

// Data x0 ~ N(μ, s²) per element: the exact flow velocity is
//   v(x, σ) = (σ − (1−σ)s²)/D · (x − (1−σ)μ) − μ,  D = (1−σ)²s² + σ²,
// and the ODE carries x(1) = z to x(σ) = (1−σ)μ + sqrt(D)·z, so x(0) = μ + s·z.
struct GaussianFlow {
  std::vector<double> mu, s;
  Tensor velocity(const Tensor& x, double sigma) const {
    std::vector<double> v = x.to_vector();
    for (size_t i = 0; i < v.size(); ++i) {
      const double d = (1 - sigma) * (1 - sigma) * s[i] * s[i] + sigma * sigma;
      v[i] = (sigma - (1 - sigma) * s[i] * s[i]) / d * (v[i] - (1 - sigma) * mu[i]) - mu[i];
    }
    return Tensor::from_vector(v, x.shape(), DType::F64);
  }
};

TEST(SampleFlow, UniPCConvergesFasterThanEuler) {
  const int64_t n = 64;
  GaussianFlow flow;
  for (int64_t i = 0; i < n; ++i) {
    flow.mu.push_back(std::sin(0.7 * double(i)));
    flow.s.push_back(0.4 + 0.6 * double(i % 7) / 7.0);
  }
  const Tensor z = Tensor::randn({n}, 3, 0, DType::F64);
  std::vector<double> exact = z.to_vector();
  for (int64_t i = 0; i < n; ++i) exact[size_t(i)] = flow.mu[size_t(i)] + flow.s[size_t(i)] * exact[size_t(i)];
  const Tensor want = Tensor::from_vector(exact, {n}, DType::F64);
  auto error = [&](const std::string& solver, int64_t steps, double shift) {
    return max_abs_diff(train::sample_flow([&](const Tensor& x, double sigma) { return flow.velocity(x, sigma); },
                                           z, solver_options(solver, steps, shift)),
                        want);
  };
  // Over 8x the steps, first order shrinks the error ~8x, second order ~64x (less cleanly
  // on shifted schedules, whose first steps are large in λ: ~40x, as diffusers' scheduler).
  for (double shift : {1.0, 3.0, 5.0}) {
    const double euler = error("euler", 20, shift), euler8 = error("euler", 160, shift);
    const double unipc = error("unipc", 20, shift), unipc8 = error("unipc", 160, shift);
    SCOPED_TRACE(fmt::format("shift {}, 20 -> 160 steps: euler {:.3e} -> {:.3e}, unipc {:.3e} -> {:.3e}", shift,
                             euler, euler8, unipc, unipc8));
    EXPECT_GT(euler / euler8, 6.0);
    EXPECT_LT(euler / euler8, 10.0);
    EXPECT_GT(unipc / unipc8, 25.0);
    EXPECT_LT(unipc, 0.5 * euler);
    EXPECT_LT(unipc8, 0.1 * euler8);
  }
}

// Golden values from a NumPy transcription of the same algorithm, which equals a NumPy port
// of diffusers' UniPCMultistepScheduler.step (flow sigmas, bh2, order 2, lower_order_final)
// to 1e-15 on schedules that start below σ = 1, and approaches this σ_0 = 1 result as
// σ_0 -> 1 (slowly: the D1 terms there shrink like 1/|log(1 − σ_0)|).
TEST(SampleFlow, UniPCMatchesReferenceValues) {
  const GaussianFlow flow{{0.3, -0.5, 0.1}, {0.5, 0.8, 0.2}};
  const Tensor z = Tensor::from_vector({-1.2, 0.4, 2.0}, {3}, DType::F64);
  const Tensor got = train::sample_flow([&](const Tensor& x, double sigma) { return flow.velocity(x, sigma); }, z,
                                        solver_options("unipc", 6, 5.0));
  const std::vector<double> want = {0.03652741250417624, -0.3061325787526846, 0.1781504406366331};
  const std::vector<double> values = got.to_vector();
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(values[i], want[i], 1e-12) << i;
}

TEST(SampleFlow, ReportsEveryStepAndRejectsBadOptions) {
  const Tensor x = Tensor::zeros({3}, DType::F64);
  std::vector<int64_t> seen;
  train::sample_flow([](const Tensor& y, double) { return y; }, x, solver_options("unipc", 4, 5.0),
                     [&](int64_t step) { seen.push_back(step); });
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2, 3}));
  auto zero = [](const Tensor& y, double) { return y * 0.0; };
  EXPECT_THROW(train::sample_flow(zero, x, solver_options("heun", 4, 5.0)), Error);
  EXPECT_THROW(train::sample_flow(zero, x, solver_options("euler", 0, 5.0)), Error);
  EXPECT_THROW(train::sample_flow([](const Tensor&, double) { return Tensor::zeros({4}, DType::F64); }, x,
                                  solver_options("euler", 2, 5.0)),
               Error);  // velocity of the wrong shape
}

// --- the model wrapper ----------------------------------------------------------------------

std::string config_path(const std::string& name) {
  return std::string(REHYAT_SOURCE_DIR) + "/configs/models/" + name;
}

// Random weights (live head): the teacher toy.yaml, or toy-rehyat.yaml with its attention.
layers::WanModel toy_model(const std::string& file) {
  ConfigSchema schema;
  layers::declare_model_config(schema);
  attention::declare_attention_config(schema);
  const Config config = load_config(config_path(file), schema);
  const layers::WanConfig wan = layers::from_config(config);
  layers::WanModel model(wan, Device::cpu(), DType::F32, /*seed=*/1);
  layers::apply_attention_config(model, attention::attention_config_from(config, wan), /*seed=*/2);
  testing::randomize_parameters(model.named_parameters(), 3);
  model.set_requires_grad(false);
  return model;
}

struct SampleInputs {
  Tensor noise, context, null_context;
};
// Two videos of 5 latent frames of 4x4 (chunks 3 + 2 for toy-rehyat), a zero null context.
SampleInputs sample_inputs(const layers::WanConfig& c) {
  return {Tensor::randn({2, c.in_dim, 5, 4, 4}, 21), Tensor::randn({2, c.text_len, c.text_dim}, 22),
          Tensor::zeros({1, c.text_len, c.text_dim})};
}

TEST(SampleVideo, GuidanceOneUsesOnlyTheConditionalForward) {
  layers::WanModel model = toy_model("toy.yaml");
  const SampleInputs in = sample_inputs(model.config());
  SamplerOptions o = solver_options("unipc", 3, 5.0);
  // No null context at all: g = 1 must not need one.
  const Tensor got = train::sample_video(model, in.noise, in.context, Tensor(), o);
  const Tensor want = train::sample_flow(
      [&](const Tensor& x, double sigma) {
        return model.forward(x, Tensor::full({2}, 1000 * sigma), in.context);
      },
      in.noise, o);
  EXPECT_EQ(max_abs_diff(got, want), 0.0);
  o.guidance = 2.0;
  EXPECT_THROW(train::sample_video(model, in.noise, in.context, Tensor(), o), Error);
}

TEST(SampleVideo, GuidanceBatchesCondAndUncondInOneForward) {
  layers::WanModel model = toy_model("toy.yaml");
  const SampleInputs in = sample_inputs(model.config());
  const Tensor null_context =
      in.null_context.expand({2, in.null_context.size(1), in.null_context.size(2)}).contiguous();
  for (const std::string solver : {"euler", "unipc"}) {
    SCOPED_TRACE(solver);
    SamplerOptions o = solver_options(solver, 3, 5.0);
    o.guidance = 4.0;
    const Tensor got = train::sample_video(model, in.noise, in.context, in.null_context, o);
    // Reference: separate forwards, v = v_u + g (v_c − v_u).
    const Tensor want = train::sample_flow(
        [&](const Tensor& x, double sigma) {
          const Tensor t = Tensor::full({2}, 1000 * sigma);
          const Tensor v_c = model.forward(x, t, in.context), v_u = model.forward(x, t, null_context);
          return v_u + (v_c - v_u) * 4.0;
        },
        in.noise, o);
    expect_close("batched CFG vs separate forwards", got, want, 1e-5);
    // ... and guidance matters.
    o.guidance = 1.0;
    EXPECT_GT(max_abs_diff(train::sample_video(model, in.noise, in.context, in.null_context, o), got), 1e-3);
  }
}

TEST(SampleVideo, RecurrentEqualsParallelForCausalRehyat) {
  layers::WanModel model = toy_model("toy-rehyat.yaml");
  ASSERT_NE(layers::hybrid_core(model, 0), nullptr);
  const SampleInputs in = sample_inputs(model.config());
  for (const std::string solver : {"euler", "unipc"}) {
    SCOPED_TRACE(solver);
    SamplerOptions o = solver_options(solver, 4, 5.0);
    o.guidance = 3.0;
    const Tensor parallel = train::sample_video(model, in.noise, in.context, in.null_context, o);
    o.recurrent = true;
    const Tensor recurrent = train::sample_video(model, in.noise, in.context, in.null_context, o);
    expect_close("recurrent vs parallel sampling", recurrent, parallel, 1e-4);
    EXPECT_EQ(parallel.shape(), in.noise.shape());
    EXPECT_EQ(parallel.dtype(), DType::F32);
  }
}

TEST(SampleVideo, DeterministicAndRecurrentNeedsCausalRehyat) {
  layers::WanModel model = toy_model("toy.yaml");
  const SampleInputs in = sample_inputs(model.config());
  SamplerOptions o = solver_options("unipc", 3, 5.0);
  o.guidance = 2.5;
  const Tensor a = train::sample_video(model, in.noise, in.context, in.null_context, o);
  const Tensor b = train::sample_video(model, in.noise, in.context, in.null_context, o);
  EXPECT_EQ(max_abs_diff(a, b), 0.0);
  EXPECT_FALSE(a.requires_grad());
  o.recurrent = true;  // the softmax teacher has no recurrent form
  EXPECT_THROW(train::sample_video(model, in.noise, in.context, in.null_context, o), Error);
}

// --- PNG and GIF --------------------------------------------------------------------------

// [3, T, H, W] with distinct values per (channel, frame, pixel), some outside [-1, 1] and a NaN.
Tensor pattern_video(int64_t frames, int64_t height, int64_t width, double phase) {
  std::vector<double> v;
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t t = 0; t < frames; ++t)
      for (int64_t i = 0; i < height * width; ++i) v.push_back(std::sin(phase + 1.3 * c + 0.7 * t + 0.45 * i) * 1.2);
  v[1] = std::numeric_limits<double>::quiet_NaN();
  return Tensor::from_vector(v, {3, frames, height, width});
}

uint8_t expected_byte(double v) {
  if (std::isnan(v)) return 0;
  return uint8_t(std::lround(std::clamp((v + 1) * 127.5, 0.0, 255.0)));
}

#ifdef REHYAT_PNG
struct PngPixels {
  int64_t width, height;
  std::vector<uint8_t> rgb;
};
PngPixels read_png(const std::string& path) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  EXPECT_TRUE(png_image_begin_read_from_file(&image, path.c_str())) << image.message;
  image.format = PNG_FORMAT_RGB;
  PngPixels out{image.width, image.height, std::vector<uint8_t>(PNG_IMAGE_SIZE(image))};
  EXPECT_TRUE(png_image_finish_read(&image, nullptr, out.rgb.data(), 0, nullptr)) << image.message;
  return out;
}

// Every pixel of a PNG written from videos [B, 3, T, H, W] at `scale`.
void expect_grid(const PngPixels& png, const Tensor& videos, int scale) {
  const int64_t B = videos.size(0), T = videos.size(2), H = videos.size(3), W = videos.size(4);
  ASSERT_EQ(png.width, T * W * scale + T - 1);
  ASSERT_EQ(png.height, B * H * scale + B - 1);
  const std::vector<double> v = videos.to_vector();
  int64_t mismatches = 0;
  for (int64_t row = 0; row < png.height; ++row)
    for (int64_t col = 0; col < png.width; ++col) {
      const int64_t b = row / (H * scale + 1), py = row % (H * scale + 1);
      const int64_t t = col / (W * scale + 1), px = col % (W * scale + 1);
      const bool separator = py == H * scale || px == W * scale;
      for (int64_t c = 0; c < 3; ++c) {
        const uint8_t want =
            separator ? 255 : expected_byte(v[size_t((((b * 3 + c) * T + t) * H + py / scale) * W + px / scale)]);
        mismatches += png.rgb[size_t((row * png.width + col) * 3 + c)] != want;
      }
    }
  EXPECT_EQ(mismatches, 0);
}

TEST(VideoIo, PngStripReadsBackPixelForPixel) {
  TempDir dir;
  const Tensor video = pattern_video(3, 2, 3, 0.0);
  train::write_png_strip(dir.file("strip.png"), video, 2);
  expect_grid(read_png(dir.file("strip.png")), video.unsqueeze(0), 2);
  EXPECT_EQ(dir.entry_count(), 1u);  // no temp file left behind
  // Overwrites atomically with the new content.
  const Tensor other = pattern_video(3, 2, 3, 1.0);
  train::write_png_strip(dir.file("strip.png"), other, 2);
  expect_grid(read_png(dir.file("strip.png")), other.unsqueeze(0), 2);
}

TEST(VideoIo, VideoGridHasOneRowPerVideo) {
  TempDir dir;
  const Tensor videos = concat({pattern_video(4, 3, 2, 0.3).unsqueeze(0), pattern_video(4, 3, 2, 2.0).unsqueeze(0),
                                pattern_video(4, 3, 2, 4.0).unsqueeze(0)},
                               0);
  train::write_video_grid(dir.file("grid.png"), videos, 3);
  expect_grid(read_png(dir.file("grid.png")), videos, 3);
  EXPECT_THROW(train::write_video_grid(dir.file("bad.png"), videos.select(0, 0), 3), Error);
  const Tensor two_channels = videos.slice(1, 0, 2).select(0, 0);
  EXPECT_THROW(train::write_png_strip(dir.file("bad.png"), two_channels, 3), Error);
  EXPECT_THROW(train::write_png_strip(dir.file("bad.png"), videos.select(0, 0), 0), Error);
  EXPECT_EQ(dir.entry_count(), 1u);
}
#endif

#ifdef REHYAT_GIF
TEST(VideoIo, GifHasEveryFrameLoopsAndKeepsCubeColours) {
  TempDir dir;
  // Channel values on the cube's levels (-1, -0.6, -0.2, 0.2, 0.6, 1 -> 0, 51, ..., 255).
  const int64_t T = 4, H = 3, W = 5;
  std::vector<double> v;
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < H * W; ++i) v.push_back(-1.0 + 0.4 * double((i + 2 * t + 3 * c) % 6));
  const Tensor video = Tensor::from_vector(v, {3, T, H, W});
  const std::string path = dir.file("video.gif");
  train::write_gif(path, video, 2, 150);
  EXPECT_EQ(dir.entry_count(), 1u);

  int error = 0;
  GifFileType* gif = DGifOpenFileName(path.c_str(), &error);
  ASSERT_NE(gif, nullptr) << GifErrorString(error);
  ASSERT_EQ(DGifSlurp(gif), GIF_OK) << GifErrorString(gif->Error);
  EXPECT_EQ(gif->ImageCount, T);
  EXPECT_EQ(gif->SWidth, W * 2);
  EXPECT_EQ(gif->SHeight, H * 2);
  // NETSCAPE2.0 loop block (count 0 = forever) before the first frame.
  const SavedImage& first = gif->SavedImages[0];
  bool loops = false;
  for (int e = 0; e + 1 < first.ExtensionBlockCount; ++e) {
    const ExtensionBlock& app = first.ExtensionBlocks[e];
    const ExtensionBlock& data = first.ExtensionBlocks[e + 1];
    loops |= app.Function == APPLICATION_EXT_FUNC_CODE && app.ByteCount == 11 &&
             std::string(reinterpret_cast<const char*>(app.Bytes), 11) == "NETSCAPE2.0" &&
             data.Function == CONTINUE_EXT_FUNC_CODE && data.ByteCount == 3 && data.Bytes[0] == 1 &&
             data.Bytes[1] == 0 && data.Bytes[2] == 0;
  }
  EXPECT_TRUE(loops) << "no NETSCAPE2.0 loop extension";
  int64_t mismatches = 0;
  for (int64_t t = 0; t < T; ++t) {
    GraphicsControlBlock gcb;
    ASSERT_EQ(DGifSavedExtensionToGCB(gif, int(t), &gcb), GIF_OK);
    EXPECT_EQ(gcb.DelayTime, 15);
    const SavedImage& frame = gif->SavedImages[t];
    const ColorMapObject* map = frame.ImageDesc.ColorMap ? frame.ImageDesc.ColorMap : gif->SColorMap;
    ASSERT_NE(map, nullptr);
    for (int64_t y = 0; y < H * 2; ++y)
      for (int64_t x = 0; x < W * 2; ++x) {
        const GifColorType colour = map->Colors[frame.RasterBits[y * W * 2 + x]];
        const GifByteType got[3] = {colour.Red, colour.Green, colour.Blue};
        for (int64_t c = 0; c < 3; ++c)
          mismatches += got[c] != expected_byte(v[size_t(((c * T + t) * H + y / 2) * W + x / 2)]);
      }
  }
  EXPECT_EQ(mismatches, 0);
  DGifCloseFile(gif, &error);
  EXPECT_THROW(train::write_gif(path, video.unsqueeze(0), 2, 150), Error);
}
#endif

// --- metrics -------------------------------------------------------------------------------

TEST(EvalMetrics, PsnrOfKnownErrors) {
  const Tensor a = Tensor::randn({3, 4, 5, 6}, 5);
  EXPECT_NEAR(train::psnr(a, a + 0.1), 10 * std::log10(4 / 0.01), 1e-4);
  // Half the elements off by 0.2: MSE = 0.02.
  std::vector<double> b = a.to_vector();
  for (size_t i = 0; i < b.size(); i += 2) b[i] -= 0.2;
  EXPECT_NEAR(train::psnr(a, Tensor::from_vector(b, a.shape())), 10 * std::log10(4 / 0.02), 1e-4);
  EXPECT_EQ(train::psnr(a, a), std::numeric_limits<double>::infinity());
  b[3] = std::nan("");
  EXPECT_TRUE(std::isnan(train::psnr(a, Tensor::from_vector(b, a.shape()))));
  EXPECT_THROW(train::psnr(a, a.slice(0, 0, 2)), Error);
}

Tensor centres(const std::vector<std::pair<double, double>>& points) {
  std::vector<double> v;
  for (auto [x, y] : points) {
    v.push_back(x);
    v.push_back(y);
  }
  return Tensor::from_vector(v, {int64_t(points.size()), 2});
}

TEST(EvalMetrics, TrajectorySmoothness) {
  const double nan = std::nan("");
  EXPECT_NEAR(train::trajectory_smoothness(centres({{1, 2}, {2.5, 1}, {4, 0}, {5.5, -1}})), 0.0, 1e-6);
  // c_t = (1.5 t², 2 t²): second difference (3, 4), norm 5, at every frame.
  std::vector<std::pair<double, double>> accelerating;
  for (int t = 0; t < 6; ++t) accelerating.push_back({1.5 * t * t, 2.0 * t * t});
  EXPECT_NEAR(train::trajectory_smoothness(centres(accelerating)), 5.0, 1e-5);
  // A missing detection drops the three second differences that would use it: the rest of
  // this linear track is smooth (a NaN read as 0 would not be).
  EXPECT_NEAR(train::trajectory_smoothness(centres({{0, 0}, {1, 1}, {2, 2}, {nan, nan}, {4, 4}, {5, 5}, {6, 6}})), 0.0,
              1e-6);
  // Mixed: second differences 0 (t=1) and |(0, 3)| = 3 (t=2), the NaN at t=4 removes t=3..5.
  EXPECT_NEAR(train::trajectory_smoothness(centres({{0, 0}, {1, 0}, {2, 0}, {3, 3}, {nan, 1}, {5, 0}, {6, 0}})), 1.5,
              1e-6);
  EXPECT_TRUE(std::isnan(train::trajectory_smoothness(centres({{0, 0}, {1, 1}}))));
  EXPECT_TRUE(std::isnan(train::trajectory_smoothness(centres({{0, 0}, {nan, 1}, {2, 2}, {nan, nan}}))));
  EXPECT_THROW(train::trajectory_smoothness(Tensor::zeros({4, 3})), Error);
}

// A straight path across the edges of a wrapped frame is smooth when read wrapped, where
// read plainly every crossing is a jump of a frame's width; wrapping hides no acceleration.
// Detected tracks of rendered wrapped videos (one object, crossing edges) score about 0:
// below 0.5 px (0.32 measured; the detected centres are off by up to 0.37 px per axis,
// tests/data/test_shapes.cpp), against 4.8 px read plainly.
TEST(EvalMetrics, TrajectorySmoothnessAcrossWrappedEdges) {
  // x = (3 + 1.3 t) mod 16 and y = (10 - 0.7 t) mod 12 cross both edges.
  std::vector<std::pair<double, double>> straight, accelerating;
  for (int t = 0; t < 16; ++t)
    straight.push_back({data::wrap_coordinate(3 + 1.3 * t, 16), data::wrap_coordinate(10 - 0.7 * t, 12)});
  EXPECT_NEAR(train::trajectory_smoothness(centres(straight), true, 16, 12), 0.0, 1e-5);
  EXPECT_GT(train::trajectory_smoothness(centres(straight)), 1.0);
  // c_t = (0.3 t², 0.4 t²) mod (16, 12): second difference (0.6, 0.8), norm 1, at every frame.
  for (int t = 0; t < 8; ++t)
    accelerating.push_back({data::wrap_coordinate(0.3 * t * t, 16), data::wrap_coordinate(0.4 * t * t, 12)});
  EXPECT_NEAR(train::trajectory_smoothness(centres(accelerating), true, 16, 12), 1.0, 1e-5);
  expect_contains(error_message([&] { train::trajectory_smoothness(centres(straight), true); }),
                  {"width and height"});

  data::ShapesOptions options;  // 9 frames of 16 x 16
  options.wrap = true;
  options.min_objects = options.max_objects = 1;
  double worst = 0, worst_plain = 0;
  for (int64_t index = 0; index < 40; ++index) {
    const data::ShapesSample sample = data::render_shapes_sample(options, 2, index);
    const std::vector<data::ObjectTrack> tracks = data::detect_objects(sample.video, true);
    ASSERT_EQ(tracks.size(), 1u) << sample.caption;
    worst = std::max(worst, train::trajectory_smoothness(tracks[0].centres, true, 16, 16));
    worst_plain = std::max(worst_plain, train::trajectory_smoothness(tracks[0].centres));
  }
  std::printf("detected wrapped tracks: worst smoothness %.3f px (read plainly %.3f px)\n", worst, worst_plain);
  EXPECT_LT(worst, 0.5);
  EXPECT_GT(worst_plain, 1.0);
}

// [3, T, 2, 2] whose pixels move by the given per-transition steps (alternating sign per
// pixel, so only |difference| counts).
Tensor stepped_video(const std::vector<double>& steps) {
  const int64_t T = int64_t(steps.size()) + 1;
  std::vector<double> level(size_t(T), 0.0);
  for (int64_t t = 1; t < T; ++t) level[size_t(t)] = level[size_t(t - 1)] + steps[size_t(t - 1)];
  std::vector<double> v;
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < 4; ++i) v.push_back((i % 2 ? -1.0 : 1.0) * level[size_t(t)] + 0.1 * c);
  return Tensor::from_vector(v, {3, T, 2, 2});
}

TEST(EvalMetrics, ChunkBoundaryIncoherence) {
  // T = 6, Tc = 3: transitions 0-1, 1-2 | 2-3 boundary | 3-4, 4-5.
  EXPECT_NEAR(train::chunk_boundary_incoherence(stepped_video({0.1, 0.1, 0.4, 0.1, 0.1}), 3), 4.0, 1e-5);
  EXPECT_NEAR(train::chunk_boundary_incoherence(stepped_video({0.1, 0.1, 0.1, 0.1, 0.1}), 3), 1.0, 1e-5);
  // Shorter last chunk (T = 7, Tc = 3): boundaries 2-3 and 5-6.
  EXPECT_NEAR(train::chunk_boundary_incoherence(stepped_video({0.1, 0.3, 0.5, 0.2, 0.1, 0.3}), 3),
              ((0.5 + 0.3) / 2) / ((0.1 + 0.3 + 0.2 + 0.1) / 4), 1e-5);
  // Tc = 2 on T = 5: boundaries 1-2, 3-4.
  EXPECT_NEAR(train::chunk_boundary_incoherence(stepped_video({0.1, 0.6, 0.1, 0.2}), 2), (0.6 + 0.2) / 2 / 0.1, 1e-4);
  // Undefined cases.
  EXPECT_TRUE(std::isnan(train::chunk_boundary_incoherence(stepped_video({0.1, 0.2}), 3)));        // T <= Tc
  EXPECT_TRUE(std::isnan(train::chunk_boundary_incoherence(stepped_video({0.1, 0.2, 0.3}), 1)));   // no inside
  EXPECT_TRUE(std::isnan(train::chunk_boundary_incoherence(stepped_video({0, 0, 0, 0}), 2)));      // static
  EXPECT_EQ(train::chunk_boundary_incoherence(stepped_video({0, 0.5, 0, 0.5}), 2),
            std::numeric_limits<double>::infinity());  // static chunks that jump
  EXPECT_THROW(train::chunk_boundary_incoherence(stepped_video({0.1}).unsqueeze(0), 2), Error);
  EXPECT_THROW(train::chunk_boundary_incoherence(stepped_video({0.1}), 0), Error);
}

}  // namespace
}  // namespace rehyat
