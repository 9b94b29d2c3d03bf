// The assembled model: config files, parameter names and shapes, Wan's init, the staged
// forward and capture hook, a replaced attention core, frame offsets, and the whole toy
// DiT on CUDA in bf16 against the CPU in f32.
#include <gtest/gtest.h>

#include <set>

#include "autograd/ops.h"
#include "layer_test_util.h"
#include "layers/wan_model.h"
#include "temp_dir.h"

namespace rehyat::testing {
namespace {

using layers::WanConfig;
using layers::WanModel;

std::string config_path(const std::string& name) {
  return std::string(REHYAT_SOURCE_DIR) + "/configs/models/" + name + ".yaml";
}

TEST(WanConfig, ShippedConfigsLoad) {
  const WanConfig small = layers::load_wan_config(config_path("wan2.1-t2v-1.3b"));
  const WanConfig ref = WanConfig::wan_1_3b();
  EXPECT_EQ(small.dim, 1536);
  EXPECT_EQ(small.ffn_dim, 8960);
  EXPECT_EQ(small.num_heads, 12);
  EXPECT_EQ(small.num_layers, 30);
  EXPECT_EQ(small.head_dim(), 128);
  EXPECT_EQ(small.text_len, 512);
  EXPECT_EQ(small.text_dim, 4096);
  EXPECT_EQ(small.freq_dim, 256);
  EXPECT_EQ(small.in_dim, 16);
  EXPECT_EQ(small.out_dim, 16);
  EXPECT_DOUBLE_EQ(small.eps, 1e-6);
  EXPECT_EQ(small.patch_size, ref.patch_size);
  const WanConfig big = layers::load_wan_config(config_path("wan2.1-t2v-14b"));
  EXPECT_EQ(big.dim, 5120);
  EXPECT_EQ(big.ffn_dim, 13824);
  EXPECT_EQ(big.num_heads, 40);
  EXPECT_EQ(big.num_layers, 40);
  EXPECT_EQ(layers::load_wan_config(config_path("toy")).head_dim(), 48);
  EXPECT_EQ(layers::load_wan_config(config_path("toy-d64")).head_dim(), 64);
}

TEST(WanConfig, ComposesWithOtherSectionsAndRoundTrips) {
  TempDir dir;
  const std::string path = dir.file("run.yaml");
  WanConfig c = layers::load_wan_config(config_path("toy"));
  write_file(path, c.to_yaml() + "attention:\n  kind: rehyat\n");
  ConfigSchema schema;
  layers::declare_model_config(schema);
  schema.choice("attention.kind", {"softmax", "rehyat"}, "softmax", "attention variant");
  const WanConfig back = layers::from_config(load_config(path, schema));
  EXPECT_EQ(back.to_yaml(), c.to_yaml());
}

TEST(WanConfig, BadValuesNameFileKeyAndLine) {
  TempDir dir;
  const std::string path = dir.file("bad.yaml");
  write_file(path, "model:\n  dim: 96\n  ffn_dim: 64\n  freq_dim: 32\n  num_heads: 5\n  num_layers: 2\n"
                   "  in_dim: 4\n  out_dim: 4\n  text_len: 8\n  text_dim: 16\n  patch_size: [1, 2]\n");
  const std::string msg = error_message([&] { layers::load_wan_config(path); });
  expect_contains(msg, {path, "model.patch_size", ":11"});
  write_file(path, "model:\n  dim: 96\n  ffn_dim: 64\n  freq_dim: 32\n  num_heads: 5\n  num_layers: 2\n"
                   "  in_dim: 4\n  out_dim: 4\n  text_len: 8\n  text_dim: 16\n");
  expect_contains(error_message([&] { layers::load_wan_config(path); }),
                  {path, "model.num_heads", ":5", "not divisible"});
  write_file(path, "model:\n  dim: 96\n  ffn_dim: 64\n");
  expect_contains(error_message([&] { layers::load_wan_config(path); }), {path, "model.num_heads", "model.text_dim"});
}

WanConfig toy_config(int64_t layers = 2) {
  WanConfig c;
  c.dim = 24;
  c.ffn_dim = 40;
  c.freq_dim = 16;
  c.num_heads = 2;
  c.num_layers = layers;
  c.in_dim = 3;
  c.out_dim = 2;
  c.text_len = 6;
  c.text_dim = 10;
  return c;
}

struct Inputs {
  Tensor latents, timestep, context;
};
Inputs toy_inputs(const WanConfig& c, uint64_t seed, int64_t frames = 3) {
  return {Tensor::randn({2, c.in_dim, frames, 4, 6}, seed), Tensor::from_vector({17.0, 733.0}, {2}),
          Tensor::randn({2, c.text_len - 2, c.text_dim}, seed + 1)};
}

TEST(WanModel, NamedParametersUseWanKeysAndShapes) {
  const WanConfig c = toy_config(2);
  WanModel model(c);
  const layers::NamedTensors params = model.named_parameters();
  EXPECT_EQ(params.size(), size_t(15 + 27 * c.num_layers));
  std::map<std::string, Shape> shapes;
  for (const auto& [name, t] : params) {
    EXPECT_TRUE(shapes.emplace(name, t.shape()).second) << "duplicate " << name;
    EXPECT_TRUE(t.requires_grad()) << name;
    EXPECT_EQ(t.dtype(), DType::F32) << name;
  }
  const int64_t D = c.dim;
  const std::map<std::string, Shape> expected = {
      {"patch_embedding.weight", {D, c.in_dim, 1, 2, 2}},
      {"patch_embedding.bias", {D}},
      {"text_embedding.0.weight", {D, c.text_dim}},
      {"text_embedding.2.weight", {D, D}},
      {"time_embedding.0.weight", {D, c.freq_dim}},
      {"time_embedding.2.bias", {D}},
      {"time_projection.1.weight", {6 * D, D}},
      {"time_projection.1.bias", {6 * D}},
      {"blocks.1.modulation", {1, 6, D}},
      {"blocks.1.self_attn.q.weight", {D, D}},
      {"blocks.1.self_attn.o.bias", {D}},
      {"blocks.1.self_attn.norm_q.weight", {D}},
      {"blocks.1.self_attn.norm_k.weight", {D}},
      {"blocks.1.norm3.weight", {D}},
      {"blocks.1.norm3.bias", {D}},
      {"blocks.1.cross_attn.v.weight", {D, D}},
      {"blocks.1.cross_attn.norm_k.weight", {D}},
      {"blocks.1.ffn.0.weight", {c.ffn_dim, D}},
      {"blocks.1.ffn.2.weight", {D, c.ffn_dim}},
      {"head.modulation", {1, 2, D}},
      {"head.head.weight", {c.out_dim * 4, D}},
      {"head.head.bias", {c.out_dim * 4}},
  };
  for (const auto& [name, shape] : expected) {
    ASSERT_TRUE(shapes.count(name)) << name;
    EXPECT_EQ(shapes[name], shape) << name;
  }
  EXPECT_FALSE(shapes.count("blocks.0.norm1.weight"));  // LN1/LN2 have no affine
}

TEST(WanModel, InitFollowsWanAndIsSeeded) {
  const WanConfig c = toy_config(1);
  WanModel a(c, Device::cpu(), DType::F32, 1), b(c, Device::cpu(), DType::F32, 1), other(c, Device::cpu(), DType::F32, 2);
  const auto pa = a.named_parameters(), pb = b.named_parameters(), po = other.named_parameters();
  bool any_differs = false;
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].second.to_vector(), pb[i].second.to_vector()) << pa[i].first;
    any_differs |= pa[i].second.to_vector() != po[i].second.to_vector();
  }
  EXPECT_TRUE(any_differs);
  auto values = [&](const std::string& name) {
    for (const auto& [n, t] : pa)
      if (n == name) return t.to_vector();
    ADD_FAILURE() << "no " << name;
    return std::vector<double>{};
  };
  for (double v : values("head.head.weight")) EXPECT_EQ(v, 0.0);
  for (double v : values("blocks.0.self_attn.norm_q.weight")) EXPECT_EQ(v, 1.0);
  for (double v : values("blocks.0.norm3.bias")) EXPECT_EQ(v, 0.0);
  for (double v : values("blocks.0.ffn.0.bias")) EXPECT_EQ(v, 0.0);
  // Xavier-uniform bound sqrt(6 / (fan_in + fan_out)) on q; std 0.02 on the text embedding.
  const double bound = std::sqrt(6.0 / (2.0 * double(c.dim)));
  double max_q = 0;
  for (double v : values("blocks.0.self_attn.q.weight")) max_q = std::max(max_q, std::abs(v));
  EXPECT_LE(max_q, bound);
  EXPECT_GT(max_q, 0.5 * bound);
  double ss = 0;
  const auto te = values("text_embedding.0.weight");
  for (double v : te) ss += v * v;
  EXPECT_NEAR(std::sqrt(ss / double(te.size())), 0.02, 0.005);
}

TEST(WanModel, StagedForwardAndHookMatchForward) {
  const WanConfig c = toy_config(2);
  WanModel model(c, Device::cpu(), DType::F64, 3);
  randomize_parameters(model.named_parameters(), 4);
  const Inputs in = toy_inputs(c, 5);
  std::vector<layers::BlockActivations> seen(2);
  Tensor v = model.forward(in.latents, in.timestep, in.context, DType::F64,
                           [&](int block, const layers::BlockActivations& a) { seen[size_t(block)] = a; });
  ASSERT_EQ(v.shape(), in.latents.shape().size() == 5 ? (Shape{2, c.out_dim, 3, 4, 6}) : Shape{});
  EXPECT_EQ(v.dtype(), DType::F64);

  const layers::PreparedInputs prep = model.prepare(in.latents, in.timestep, in.context, DType::F64);
  EXPECT_EQ(prep.x.shape(), (Shape{2, 3 * 2 * 3, c.dim}));
  EXPECT_EQ(prep.context.shape(), (Shape{2, c.text_len, c.dim}));
  Tensor x = prep.x;
  for (int i = 0; i < model.num_blocks(); ++i) {
    layers::BlockActivations a;
    x = model.run_block(i, x, prep, &a);
    expect_close("hook input", seen[size_t(i)].self_attn_input, a.self_attn_input, 0.0);
    expect_close("hook output", seen[size_t(i)].self_attn_output, a.self_attn_output, 0.0);
    // The captured output is the self-attention of the captured input.
    expect_close("self-attn of captured input",
                 model.block(i).self_attn.forward(a.self_attn_input, prep.rope, prep.precision), a.self_attn_output, 0.0);
  }
  expect_close("staged", model.run_head(x, prep), v, 0.0);
}

// A core with a learnable parameter: softmax attention of (q * gain, k, v).
class GainCore : public layers::AttentionCore {
 public:
  explicit GainCore(Tensor gain) : gain_(std::move(gain)) {}
  std::string kind() const override { return "gain"; }
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const layers::TokenGrid&) override {
    ++calls;
    return attention::softmax_attention(q * layers::cast(gain_, q.dtype()), k, v);
  }
  void collect(const std::string& prefix, layers::NamedTensors& out) const override {
    out.emplace_back(prefix + ".phi_q.gain", gain_);
  }
  int calls = 0;

 private:
  Tensor gain_;
};

TEST(WanModel, ReplacedAttentionCoreRunsAndExposesItsParameters) {
  const WanConfig c = toy_config(2);
  WanModel model(c, Device::cpu(), DType::F64, 3);
  randomize_parameters(model.named_parameters(), 4);
  const Inputs in = toy_inputs(c, 6);
  const Tensor before = model.forward(in.latents, in.timestep, in.context, DType::F64);

  Tensor gain = Tensor::full({c.dim / c.num_heads}, 1.0, DType::F64);
  gain.set_requires_grad(true);
  auto core = std::make_shared<GainCore>(gain);
  model.block(1).self_attn.core = core;
  const Tensor same = model.forward(in.latents, in.timestep, in.context, DType::F64);
  EXPECT_EQ(core->calls, 1);
  expect_close("gain 1 == softmax", same, before, 1e-12);

  {
    autograd::NoGradGuard no_grad;
    gain.fill_(1.7);
  }
  Tensor after = model.forward(in.latents, in.timestep, in.context, DType::F64);
  EXPECT_GT(max_rel_error(after, before), 1e-4);
  const auto params = model.named_parameters();
  EXPECT_EQ(params.size(), size_t(15 + 27 * 2 + 1));
  bool found = false;
  for (const auto& [name, t] : params) found |= name == "blocks.1.self_attn.phi_q.gain";
  EXPECT_TRUE(found);
  sum(after).backward();
  ASSERT_TRUE(gain.grad().defined());
  double norm = 0;
  for (double g : gain.grad().to_vector()) norm += std::abs(g);
  EXPECT_GT(norm, 0);
}

TEST(WanModel, FrameOffsetShiftsRopePositions) {
  const WanConfig c = toy_config(1);
  WanModel model(c);
  const Inputs full = toy_inputs(c, 7, 3);
  const Tensor chunk = full.latents.slice(2, 1, 3);  // frames 1, 2
  const auto whole = model.prepare(full.latents, full.timestep, full.context, DType::F32);
  const auto part = model.prepare(chunk, full.timestep, full.context, DType::F32, 1);
  EXPECT_EQ(part.grid.frame_offset, 1);
  const int64_t ft = whole.grid.frame_tokens();
  expect_close("cos", part.rope.cos, whole.rope.cos.slice(0, ft, 3 * ft), 0.0);
  expect_close("sin", part.rope.sin, whole.rope.sin.slice(0, ft, 3 * ft), 0.0);
  // The patch embedding of fewer frames is a GEMM of another shape: BLAS may sum in
  // another order, so the tokens agree to f32 rounding, not bit for bit.
  expect_close("tokens", part.x, whole.x.slice(1, ft, 3 * ft), 1e-6);
}

TEST(WanModel, RejectsBadInputs) {
  const WanConfig c = toy_config(1);
  WanModel model(c);
  const Inputs in = toy_inputs(c, 8);
  EXPECT_THROW(model.forward(in.latents.slice(3, 0, 3), in.timestep, in.context), Error);  // odd height
  EXPECT_THROW(model.forward(in.latents, in.timestep, Tensor::randn({2, c.text_len + 1, c.text_dim}, 1)), Error);
  EXPECT_THROW(model.forward(in.latents, Tensor::from_vector({1.0}, {1}), in.context), Error);
  EXPECT_THROW(WanModel(toy_config(0)), Error);
}

// The whole toy DiT (head dims 48 and 64) on CUDA in bf16 (f32 parameters) against the CPU
// in f32: forward and parameter gradients within bf16 tolerance.
class WanModelBf16 : public ::testing::TestWithParam<std::string> {};

TEST_P(WanModelBf16, CudaBf16MatchesCpuF32Loosely) {
  REHYAT_SKIP_WITHOUT_GPU("bf16 model " + GetParam());
  const WanConfig c = layers::load_wan_config(config_path(GetParam()));
  WanModel cpu(c, Device::cpu()), gpu(c, Device::cuda(0));
  randomize_parameters(cpu.named_parameters(), 9);
  randomize_parameters(gpu.named_parameters(), 9);
  const Tensor latents = Tensor::randn({2, c.in_dim, 3, 8, 6}, 10);
  const Tensor t = Tensor::from_vector({250.0, 875.0}, {2});
  const Tensor ctx = Tensor::randn({2, c.text_len - 4, c.text_dim}, 11);
  Tensor ref = cpu.forward(latents, t, ctx, DType::F32);
  Tensor got = gpu.forward(latents, t, ctx, DType::BF16);
  EXPECT_EQ(got.dtype(), DType::F32);
  expect_close("bf16 velocity", got, ref, 3e-2);
  const Tensor g = Tensor::randn(ref.shape(), 12);
  ref.backward(g);
  got.backward(g.to(Device::cuda(0)));
  const auto pc = cpu.named_parameters(), pg = gpu.named_parameters();
  for (size_t i = 0; i < pc.size(); ++i) {
    ASSERT_TRUE(pg[i].second.grad().defined()) << pg[i].first;
    EXPECT_EQ(pg[i].second.grad().dtype(), DType::F32) << pg[i].first;
    expect_close("bf16 grad of " + pc[i].first, pg[i].second.grad(), pc[i].second.grad(), 1e-1);
  }
}

INSTANTIATE_TEST_SUITE_P(Toys, WanModelBf16, ::testing::Values("toy", "toy-d64"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param == "toy" ? std::string("d48") : std::string("d64");
                         });

TEST(WanModel, SameSeedGivesSameInitOnCpuAndCuda) {
  REHYAT_SKIP_WITHOUT_GPU("CPU vs CUDA init");
  const WanConfig c = toy_config(1);
  WanModel cpu(c, Device::cpu(), DType::F32, 42), gpu(c, Device::cuda(0), DType::F32, 42);
  const auto pc = cpu.named_parameters(), pg = gpu.named_parameters();
  for (size_t i = 0; i < pc.size(); ++i) expect_close(pc[i].first, pg[i].second, pc[i].second, 1e-7);
}

// Wan2.1-1.3B's real sizes (D 1536, head dim 128, text_len 512, text_dim 4096) on CUDA at a
// small latent: bf16 compute against f32 compute on the same weights (Wan's init, with a
// random head so the output is not the zero-initialized head's constant).
TEST(WanModel, Wan13BSizesRunOnCudaInBf16) {
  REHYAT_SKIP_WITHOUT_GPU("Wan2.1-1.3B sizes");
  const WanConfig c = layers::load_wan_config(config_path("wan2.1-t2v-1.3b"));
  WanModel model(c, Device::cuda(0), DType::F32, 0);
  EXPECT_EQ(model.parameter_count(), 1418996800);  // Wan2.1-T2V-1.3B
  randomize_parameters({{"head.head.weight", model.head().head.weight}}, 3);
  autograd::NoGradGuard no_grad;
  const Tensor latents = Tensor::randn({1, 16, 3, 16, 20}, 1);
  const Tensor t = Tensor::from_vector({500.0}, {1});
  const Tensor ctx = Tensor::randn({1, 37, 4096}, 2);
  const Tensor ref = model.forward(latents, t, ctx, DType::F32);
  const Tensor got = model.forward(latents, t, ctx, DType::BF16);
  ASSERT_EQ(got.shape(), (Shape{1, 16, 3, 16, 20}));
  expect_close("1.3B bf16 vs f32", got, ref, 5e-2);
  double mag = 0;
  for (double v : ref.to_vector()) mag = std::max(mag, std::abs(v));
  EXPECT_GT(mag, 1e-3);
}

}  // namespace
}  // namespace rehyat::testing
