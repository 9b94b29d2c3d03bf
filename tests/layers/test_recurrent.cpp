// Recurrent (chunk-by-chunk) causal ReHyAt inference: equals the parallel causal form at
// the attention level (attention/recurrent.h) and for a whole toy DiT
// (layers/recurrent_forward.h), and its peak memory does not grow with the video.
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "attention/attention_config.h"
#include "attention/hybrid_attention.h"
#include "attention/recurrent.h"
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/allocator.h"
#include "layers/hybrid_core.h"
#include "layers/layer_test_util.h"
#include "layers/recurrent_forward.h"
#include "layers/wan_model.h"

namespace rehyat {
namespace {

using attention::AttentionKind;
using attention::HybridOptions;
using testing::expect_close;

struct AttentionInputs {
  Tensor q, k, v, phi_q, phi_k;
};

// q, k, v [B, T*ft, H, d] in `dtype`; phi [B, T*ft, H, Dp] positive in the stats dtype.
AttentionInputs random_attention_inputs(int64_t frames, int64_t frame_tokens, DType dtype, Device device,
                                        uint64_t seed) {
  const int64_t B = 2, H = 2, d = 8, Dp = 6, N = frames * frame_tokens;
  const DType stats = dtype == DType::F64 ? DType::F64 : DType::F32;
  auto normal = [&](int64_t width, uint64_t s) {
    return Tensor::randn({B, N, H, width}, seed + s, 0, DType::F64).to(dtype).to(device);
  };
  auto features = [&](uint64_t s) {  // softplus(noise) / 2: positive, O(1)
    autograd::NoGradGuard no_grad;
    return (softplus(Tensor::randn({B, N, H, Dp}, seed + s, 0, DType::F64)) * 0.5).to(stats).to(device);
  };
  return {normal(d, 1), normal(d, 2), normal(d, 3), features(4), features(5)};
}

HybridOptions causal_options(int64_t frame_tokens, int64_t chunk_frames, int64_t overlap_frames) {
  HybridOptions o;
  o.kind = AttentionKind::Rehyat;
  o.causal = true;
  o.frame_tokens = frame_tokens;
  o.chunk_frames = chunk_frames;
  o.overlap_frames = overlap_frames;
  return o;
}

// (frames T, chunk_frames Tc, overlap_frames To): T divisible by Tc or not, To = 0,
// To < Tc, To = Tc, To > Tc, Tc = 1, Tc = T and Tc > T.
const std::vector<std::tuple<int64_t, int64_t, int64_t>> kChunkings = {
    {6, 3, 0}, {7, 3, 1}, {7, 2, 2}, {5, 2, 3}, {8, 1, 2}, {9, 4, 6}, {4, 4, 1}, {3, 5, 2}};

TEST(RecurrentAttention, EqualsParallelCausalHybridF64) {
  const int64_t ft = 3;
  for (auto [T, Tc, To] : kChunkings) {
    SCOPED_TRACE(fmt::format("T={} Tc={} To={}", T, Tc, To));
    const AttentionInputs in = random_attention_inputs(T, ft, DType::F64, Device::cpu(), 10 * T + Tc + To);
    const HybridOptions o = causal_options(ft, Tc, To);
    const Tensor parallel = attention::hybrid_attention(in.q, in.k, in.v, in.phi_q, in.phi_k, o);
    const Tensor recurrent = attention::hybrid_attention_recurrent(in.q, in.k, in.v, in.phi_q, in.phi_k, o);
    expect_close("recurrent vs parallel (f64)", recurrent, parallel, 1e-12);
  }
}

TEST(RecurrentAttention, EqualsParallelCausalHybridF32) {
  const int64_t ft = 4;
  for (auto [T, Tc, To] : kChunkings) {
    SCOPED_TRACE(fmt::format("T={} Tc={} To={}", T, Tc, To));
    const AttentionInputs in = random_attention_inputs(T, ft, DType::F32, Device::cpu(), 7 * T + Tc + To);
    const HybridOptions o = causal_options(ft, Tc, To);
    expect_close("recurrent vs parallel (f32)",
                 attention::hybrid_attention_recurrent(in.q, in.k, in.v, in.phi_q, in.phi_k, o),
                 attention::hybrid_attention(in.q, in.k, in.v, in.phi_q, in.phi_k, o), 2e-6);
  }
}

TEST(RecurrentAttention, StateHoldsOnlyTheLinearSetAndTheLastOverlapFrames) {
  const int64_t ft = 2, T = 7, Tc = 2, To = 3;
  const AttentionInputs in = random_attention_inputs(T, ft, DType::F64, Device::cpu(), 3);
  attention::RecurrentHybridAttention r(causal_options(ft, Tc, To));
  for (int64_t first = 0; first < T; first += Tc) {
    const int64_t last = std::min(first + Tc, T);
    r.step(in.q.slice(1, first * ft, last * ft), in.k.slice(1, first * ft, last * ft),
           in.v.slice(1, first * ft, last * ft), in.phi_q.slice(1, first * ft, last * ft),
           in.phi_k.slice(1, first * ft, last * ft));
    EXPECT_EQ(r.frames_done(), last);
    EXPECT_EQ(r.kept_frames(), std::min(To, last));
    // z = sum of phi_k over frames [0, last - To): the next chunk's linear set.
    const int64_t absorbed = std::max<int64_t>(last - To, 0);
    Tensor want = Tensor::zeros({2, 2, 6}, DType::F64);
    if (absorbed > 0) want = sum(in.phi_k.slice(1, 0, absorbed * ft), 1);
    expect_close("z", r.normalizer(), want, 1e-14);
  }
  EXPECT_THROW(r.step(in.q.slice(1, 0, ft), in.k.slice(1, 0, ft), in.v.slice(1, 0, ft), in.phi_q.slice(1, 0, ft),
                      in.phi_k.slice(1, 0, ft)),
               Error);  // the 1-frame last chunk ended the video
  r.reset();
  EXPECT_EQ(r.frames_done(), 0);
}

TEST(RecurrentAttention, RejectsNonCausalAndOtherKinds) {
  HybridOptions o = causal_options(4, 3, 1);
  o.causal = false;
  EXPECT_THROW(attention::RecurrentHybridAttention{o}, Error);
  o = causal_options(4, 3, 1);
  o.kind = AttentionKind::Linear;
  EXPECT_THROW(attention::RecurrentHybridAttention{o}, Error);
}

TEST(RecurrentAttention, CudaMatchesCpuParallel) {
  REHYAT_SKIP_WITHOUT_GPU("recurrent attention on CUDA");
  const int64_t ft = 4;
  for (DType dtype : {DType::F32, DType::BF16}) {
    for (auto [T, Tc, To] : kChunkings) {
      SCOPED_TRACE(fmt::format("{} T={} Tc={} To={}", dtype_name(dtype), T, Tc, To));
      const AttentionInputs cpu = random_attention_inputs(T, ft, DType::F64, Device::cpu(), 5 * T + Tc + To);
      const HybridOptions o = causal_options(ft, Tc, To);
      const Tensor want = attention::hybrid_attention(cpu.q, cpu.k, cpu.v, cpu.phi_q, cpu.phi_k, o);
      const AttentionInputs gpu = random_attention_inputs(T, ft, dtype, Device::cuda(0), 5 * T + Tc + To);
      const Tensor got = attention::hybrid_attention_recurrent(gpu.q, gpu.k, gpu.v, gpu.phi_q, gpu.phi_k, o);
      expect_close("recurrent CUDA vs parallel CPU f64", got, want, dtype == DType::BF16 ? 3e-2 : 1e-5);
    }
  }
}

// --- whole model -----------------------------------------------------------------------------

std::string toy_config() { return std::string(REHYAT_SOURCE_DIR) + "/configs/models/toy.yaml"; }

attention::AttentionConfig causal_rehyat(int64_t chunk_frames, int64_t overlap_frames) {
  attention::AttentionConfig c;
  c.kind = AttentionKind::Rehyat;
  c.causal = true;
  c.chunk_frames = chunk_frames;
  c.overlap_frames = overlap_frames;
  return c;
}

layers::WanModel toy_hybrid_model(const attention::AttentionConfig& attention, Device device) {
  layers::WanModel model(layers::load_wan_config(toy_config()), device, DType::F32, /*seed=*/1);
  layers::apply_attention_config(model, attention, /*seed=*/2);
  testing::randomize_parameters(model.named_parameters(), 3);  // live head, random phi
  model.set_requires_grad(false);
  return model;
}

struct ModelInputs {
  Tensor latents, timestep, context;
};
ModelInputs toy_inputs(const layers::WanConfig& c, int64_t frames, int64_t height, int64_t width) {
  return {Tensor::randn({1, c.in_dim, frames, height, width}, 11), Tensor::full({1}, 640.0),
          Tensor::randn({1, 12, c.text_dim}, 12)};
}

TEST(RecurrentForward, EqualsParallelCausalModel) {
  for (auto [T, Tc, To] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{5, 2, 1}, {6, 3, 0}, {4, 1, 2}, {3, 4, 1}}) {
    SCOPED_TRACE(fmt::format("T={} Tc={} To={}", T, Tc, To));
    layers::WanModel model = toy_hybrid_model(causal_rehyat(Tc, To), Device::cpu());
    const ModelInputs in = toy_inputs(model.config(), T, 4, 6);
    for (DType compute : {DType::F64, DType::F32}) {
      Tensor parallel;
      {
        autograd::NoGradGuard no_grad;
        parallel = model.forward(in.latents, in.timestep, in.context, compute);
      }
      const Tensor recurrent = layers::recurrent_forward(model, in.latents, in.timestep, in.context, compute, Tc);
      expect_close(fmt::format("recurrent vs parallel model ({})", dtype_name(compute)), recurrent, parallel,
                   compute == DType::F64 ? 1e-11 : 2e-5);
    }
    // The model's own cores are back after the call.
    EXPECT_NE(layers::hybrid_core(model, 0), nullptr);
  }
}

TEST(RecurrentForward, RejectsSoftmaxBlocksAndOtherChunking) {
  attention::AttentionConfig partial = causal_rehyat(2, 1);
  partial.hybrid_block_count = 1;  // block 1 keeps softmax
  layers::WanModel model = toy_hybrid_model(partial, Device::cpu());
  const ModelInputs in = toy_inputs(model.config(), 4, 4, 4);
  try {
    layers::recurrent_forward(model, in.latents, in.timestep, in.context);
    FAIL() << "a softmax block was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("block 1 has softmax attention"), std::string::npos) << e.what();
  }
  layers::WanModel hybrid = toy_hybrid_model(causal_rehyat(2, 1), Device::cpu());
  EXPECT_THROW(layers::recurrent_forward(hybrid, in.latents, in.timestep, in.context, DType::F32, 3), Error);
  attention::AttentionConfig non_causal = causal_rehyat(2, 1);
  non_causal.causal = false;
  layers::WanModel bidirectional = toy_hybrid_model(non_causal, Device::cpu());
  EXPECT_THROW(layers::recurrent_forward(bidirectional, in.latents, in.timestep, in.context), Error);
}

// Peak bytes of one recurrent forward beyond what was allocated before it and beyond the
// velocity it returns (which, like the latents, grows with the video).
size_t recurrent_working_peak(layers::WanModel& model, const ModelInputs& in, DType compute) {
  const Device device = model.device();
  const size_t before = memory_stats(device).current_bytes;
  reset_peak_memory(device);
  const Tensor v = layers::recurrent_forward(model, in.latents, in.timestep, in.context, compute);
  return memory_stats(device).peak_bytes - before - v.nbytes();
}

void expect_constant_peak(Device device) {
  layers::WanModel model = toy_hybrid_model(causal_rehyat(2, 1), device);
  std::vector<size_t> peaks;
  for (int64_t frames : {6, 12, 24}) {
    ModelInputs in = toy_inputs(model.config(), frames, 4, 4);
    in.latents = in.latents.to(device);
    peaks.push_back(recurrent_working_peak(model, in, DType::F32));
  }
  for (size_t i = 1; i < peaks.size(); ++i)
    EXPECT_LE(double(peaks[i]), 1.05 * double(peaks[0])) << "peak " << peaks[i] << " vs " << peaks[0] << " bytes";
  EXPECT_GT(peaks[0], 0u);
}

TEST(RecurrentForward, PeakMemoryDoesNotGrowWithFramesCpu) { expect_constant_peak(Device::cpu()); }

TEST(RecurrentForward, CudaMatchesCpuAndKeepsPeakConstant) {
  REHYAT_SKIP_WITHOUT_GPU("recurrent forward on CUDA");
  layers::WanModel cpu = toy_hybrid_model(causal_rehyat(2, 1), Device::cpu());
  layers::WanModel gpu = toy_hybrid_model(causal_rehyat(2, 1), Device::cuda(0));
  const ModelInputs in = toy_inputs(cpu.config(), 5, 4, 6);
  Tensor want;
  {
    autograd::NoGradGuard no_grad;
    want = cpu.forward(in.latents, in.timestep, in.context, DType::F64);
  }
  expect_close("CUDA recurrent f32 vs CPU parallel f64",
               layers::recurrent_forward(gpu, in.latents, in.timestep, in.context, DType::F32), want, 1e-4);
  expect_constant_peak(Device::cuda(0));
}

}  // namespace
}  // namespace rehyat
