// Training core: AdamW against a hand-computed double reference (decay, bias
// correction), on a quadratic, CPU vs CUDA bit for bit, and resumed through a saved
// state bit for bit; the learning-rate schedule; gradient clipping and the finite check;
// flow-matching batches (formulas, sigma range and shift, determinism, CPU vs CUDA) and
// loss; the JSONL log on resume; training-state round trips and corruption errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "temp_dir.h"
#include "train/flow_matching.h"
#include "train/optimizer.h"
#include "train/train_log.h"
#include "train/train_state.h"

namespace rehyat::train {
namespace {

using testing::error_message;
using testing::expect_contains;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

#define SKIP_WITHOUT_CUDA(what) \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device: " << (what) << " not run"

Tensor leaf(const std::vector<double>& values, Device device = Device::cpu()) {
  Tensor t = Tensor::from_vector(values, {int64_t(values.size())}, DType::F32, device);
  t.set_requires_grad(true);
  return t;
}

// Sets p.grad to `grad` through a backward pass (d/dp sum(p * grad) = grad).
void set_grad(Tensor& p, const Tensor& grad) {
  p.zero_grad();
  sum(mul(p, grad.detach())).backward();
}

// Quadratic loss sum((p - target)^2): its gradient depends on p, so a resumed run only
// matches when parameters and moments come back exactly.
void quadratic_backward(Tensor& p, const Tensor& target) {
  p.zero_grad();
  sum(square(sub(p, target))).backward();
}

std::vector<double> values(const Tensor& t) { return t.to_vector(); }

// --- AdamW ----------------------------------------------------------------------------

TEST(AdamW, MatchesHandComputedReference) {
  const AdamWOptions options{.lr = 0.1, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.05};
  const std::vector<double> start{0.5, -1.0, 2.0};
  const std::vector<std::vector<double>> grads{{0.2, -0.4, 1.0}, {-0.1, 0.3, 0.5}, {0.05, 0.0, -2.0}};
  const std::vector<double> lrs{0.1, 0.05, 0.02};

  Tensor p = leaf(start);
  AdamW adam({{"p", p}}, options);
  std::vector<double> ref = start, m(3, 0.0), v(3, 0.0);
  for (int t = 1; t <= 3; ++t) {
    set_grad(p, Tensor::from_vector(grads[t - 1], {3}));
    adam.step(lrs[t - 1]);
    const double lr = lrs[t - 1];
    for (size_t i = 0; i < 3; ++i) {
      const double g = grads[t - 1][i];
      ref[i] *= 1.0 - lr * options.weight_decay;
      m[i] = options.beta1 * m[i] + (1 - options.beta1) * g;
      v[i] = options.beta2 * v[i] + (1 - options.beta2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(options.beta1, t));
      const double v_hat = v[i] / (1 - std::pow(options.beta2, t));
      ref[i] -= lr * m_hat / (std::sqrt(v_hat) + options.eps);
    }
    if (t == 1) {
      // First step: m_hat = g, v_hat = g^2, so each moves by lr * sign(g) after decay.
      EXPECT_NEAR(ref[0], 0.5 * (1 - 0.1 * 0.05) - 0.1, 1e-7);
      EXPECT_NEAR(ref[1], -1.0 * (1 - 0.1 * 0.05) + 0.1, 1e-7);
    }
    const std::vector<double> got = values(p);
    for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(got[i], ref[i], 2e-6 * (1 + std::abs(ref[i]))) << "step " << t;
  }
  EXPECT_EQ(adam.steps_taken(), 3);
  const auto state = adam.state();
  ASSERT_EQ(state.size(), 3u);
  EXPECT_EQ(state[0].first, "adam.m.p");
  EXPECT_EQ(state[1].first, "adam.v.p");
  EXPECT_EQ(state[2].first, "adam.step");
  EXPECT_EQ(state[2].second.item(), 3.0);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(values(state[0].second)[i], m[i], 1e-6);
    EXPECT_NEAR(values(state[1].second)[i], v[i], 1e-6);
  }
}

TEST(AdamW, SkipsParametersWithoutGradient) {
  Tensor a = leaf({1.0, 2.0}), b = leaf({3.0});
  AdamW adam({{"a", a}, {"b", b}}, {});
  set_grad(a, Tensor::from_vector({1.0, 1.0}, {2}));
  adam.step(0.1);
  EXPECT_NE(values(a), (std::vector<double>{1.0, 2.0}));
  EXPECT_EQ(values(b), std::vector<double>{3.0});
  adam.zero_grad();
  EXPECT_FALSE(a.grad().defined());
}

TEST(AdamW, MinimizesQuadratic) {
  const Tensor target = Tensor::from_vector({1.0, -2.0, 0.5, 3.0, -0.25, 0.0}, {6});
  Tensor p = leaf({0, 0, 0, 0, 0, 0});
  AdamW adam({{"p", p}}, {.lr = 0.05});
  for (int step = 0; step < 600; ++step) {
    quadratic_backward(p, target);
    adam.step();
  }
  const std::vector<double> got = values(p), want = values(target);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-2);
}

TEST(AdamW, CudaMatchesCpuBitForBit) {
  SKIP_WITHOUT_CUDA("AdamW CUDA kernel");
  const int64_t n = 10007;  // not a multiple of the block size
  const AdamWOptions options{.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1};
  Tensor cpu_p = Tensor::randn({n}, 1).set_requires_grad(true);
  Tensor gpu_p = cpu_p.detach().to(Device::cuda()).set_requires_grad(true);
  AdamW cpu_adam({{"w", cpu_p}}, options), gpu_adam({{"w", gpu_p}}, options);
  for (int step = 0; step < 5; ++step) {
    const Tensor grad = Tensor::randn({n}, 2, uint64_t(step) * 2 * uint64_t(n), DType::F32, Device::cpu(), 0.0, 0.1);
    set_grad(cpu_p, grad);
    set_grad(gpu_p, grad.to(Device::cuda()));
    cpu_adam.step(1e-3 * (step + 1));
    gpu_adam.step(1e-3 * (step + 1));
  }
  EXPECT_EQ(values(cpu_p), values(gpu_p));
  const auto cpu_state = cpu_adam.state(), gpu_state = gpu_adam.state();
  for (size_t i = 0; i < cpu_state.size(); ++i)
    EXPECT_EQ(values(cpu_state[i].second), values(gpu_state[i].second)) << cpu_state[i].first;
}

// Six steps straight versus three, save, load into a fresh model and optimizer, three more.
void expect_resume_bit_identical(Device device, const std::string& dir) {
  const AdamWOptions options{.lr = 0.01, .weight_decay = 0.01};
  const LrSchedule schedule{.base_lr = 0.01, .warmup_steps = 2, .total_steps = 6};
  const Tensor target = Tensor::randn({5, 7}, 9).to(device);
  auto fresh = [&] { return Tensor::randn({5, 7}, 3).to(device).set_requires_grad(true); };
  auto train = [&](Tensor& p, AdamW& adam, int64_t from, int64_t to) {
    for (int64_t step = from; step < to; ++step) {
      quadratic_backward(p, target);
      adam.step(schedule.at(step));
    }
  };

  Tensor straight = fresh();
  AdamW straight_adam({{"w", straight}}, options);
  train(straight, straight_adam, 0, 6);

  Tensor first = fresh();
  AdamW first_adam({{"w", first}}, options);
  train(first, first_adam, 0, 3);
  TrainState saved;
  saved.step = 3;
  saved.model = {{"w", first}};
  for (auto& [name, t] : first_adam.state()) saved.optimizer.emplace(name, t);
  const std::string path = dir + "/state.safetensors";
  save_train_state(path, saved);

  const TrainState loaded = load_train_state(path);
  Tensor resumed = fresh();
  resumed.copy_(loaded.model.at(0).second);
  AdamW resumed_adam({{"w", resumed}}, options);
  resumed_adam.load_state(loaded.optimizer);
  EXPECT_EQ(resumed_adam.steps_taken(), 3);
  train(resumed, resumed_adam, loaded.step, 6);
  EXPECT_EQ(values(resumed), values(straight));
}

TEST(AdamW, ResumeThroughSavedStateIsBitIdentical) {
  TempDir dir;
  expect_resume_bit_identical(Device::cpu(), dir.path().string());
}

TEST(AdamW, ResumeThroughSavedStateIsBitIdenticalOnCuda) {
  SKIP_WITHOUT_CUDA("AdamW resume on CUDA");
  TempDir dir;
  expect_resume_bit_identical(Device::cuda(), dir.path().string());
}

TEST(AdamW, LoadStateNamesMissingAndMismatchedEntries) {
  Tensor p = leaf({1.0, 2.0});
  AdamW adam({{"layer.weight", p}}, {});
  std::map<std::string, Tensor> state;
  for (auto& [name, t] : adam.state()) state.emplace(name, t.clone());
  state.erase("adam.v.layer.weight");
  expect_contains(error_message([&] { adam.load_state(state); }), {"adam.v.layer.weight", "missing"});
  state["adam.v.layer.weight"] = Tensor::zeros({3});
  expect_contains(error_message([&] { adam.load_state(state); }), {"adam.v.layer.weight", "[2]"});
  state["adam.v.layer.weight"] = Tensor::zeros({2});
  state["adam.m.other"] = Tensor::zeros({2});
  expect_contains(error_message([&] { adam.load_state(state); }), {"adam.m.other"});
}

// --- schedule, clipping, finite check ---------------------------------------------------

TEST(LrSchedule, WarmupThenCosineToMinimum) {
  const LrSchedule s{.base_lr = 1e-3, .warmup_steps = 10, .total_steps = 110, .min_lr_ratio = 0.1};
  EXPECT_DOUBLE_EQ(s.at(0), 1e-4);     // warm-up start: base / warmup
  EXPECT_DOUBLE_EQ(s.at(4), 5e-4);
  EXPECT_DOUBLE_EQ(s.at(9), 1e-3);     // warm-up end
  EXPECT_DOUBLE_EQ(s.at(10), 1e-3);    // cosine start
  EXPECT_NEAR(s.at(60), 5.5e-4, 1e-15);  // half-way: (base + min) / 2
  EXPECT_LT(s.at(109), 1.01e-4);
  EXPECT_GT(s.at(109), 1e-4);
  EXPECT_DOUBLE_EQ(s.at(110), 1e-4);   // end: min_lr_ratio * base
  EXPECT_DOUBLE_EQ(s.at(500), 1e-4);
  const LrSchedule no_warmup{.base_lr = 2.0, .warmup_steps = 0, .total_steps = 4, .min_lr_ratio = 0.0};
  EXPECT_DOUBLE_EQ(no_warmup.at(0), 2.0);
  EXPECT_NEAR(no_warmup.at(2), 1.0, 1e-15);
  EXPECT_DOUBLE_EQ(no_warmup.at(4), 0.0);
}

TEST(ClipGradNorm, ReturnsNormAndScalesAboveMax) {
  Tensor a = leaf({0, 0}), b = leaf({0}), no_grad = leaf({5});
  set_grad(a, Tensor::from_vector({3, 4}, {2}));
  set_grad(b, Tensor::from_vector({12}, {1}));
  EXPECT_DOUBLE_EQ(clip_grad_norm({a, b, no_grad}, 100.0), 13.0);
  EXPECT_EQ(values(a.grad()), (std::vector<double>{3, 4}));  // below max: untouched

  EXPECT_DOUBLE_EQ(clip_grad_norm({a, b, no_grad}, 6.5), 13.0);
  const double scale = 6.5 / (13.0 + 1e-6);
  EXPECT_NEAR(values(a.grad())[0], 3 * scale, 1e-6);
  EXPECT_NEAR(values(a.grad())[1], 4 * scale, 1e-6);
  EXPECT_NEAR(values(b.grad())[0], 12 * scale, 1e-6);
  EXPECT_NEAR(clip_grad_norm({a, b}, 100.0), 6.5, 1e-5);
}

TEST(ClipGradNorm, NonFiniteNormIsReturnedUntouched) {
  Tensor a = leaf({0, 0});
  set_grad(a, Tensor::from_vector({NAN, 1.0}, {2}));
  EXPECT_TRUE(std::isnan(clip_grad_norm({a}, 1.0)));
  EXPECT_EQ(values(a.grad())[1], 1.0);
  set_grad(a, Tensor::from_vector({INFINITY, 1.0}, {2}));
  EXPECT_TRUE(std::isinf(clip_grad_norm({a}, 1.0)));
  EXPECT_EQ(values(a.grad())[1], 1.0);
}

TEST(CheckFinite, ThrowsNamingStepAndQuantity) {
  check_finite("loss", 0.5, 3);
  EXPECT_EQ(error_message([] { check_finite("loss", NAN, 7); }), "step 7: loss is NaN");
  expect_contains(error_message([] { check_finite("gradient norm", INFINITY, 12); }),
                  {"step 12", "gradient norm", "Inf"});
}

// --- flow matching ------------------------------------------------------------------------

TEST(FlowMatching, ShiftedSigma) {
  const Tensor s = Tensor::from_vector({1e-6, 0.25, 0.5, 1.0}, {4});
  const std::vector<double> shifted = values(shifted_sigma(s, 5.0));
  const std::vector<double> expected{5e-6 / (1 + 4e-6), 1.25 / 2.0, 2.5 / 3.0, 1.0};
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(shifted[i], expected[i], 1e-6);
  EXPECT_EQ(values(shifted_sigma(s, 1.0)), values(s));
}

TEST(FlowMatching, BatchFollowsTheFormulas) {
  const Tensor x0 = Tensor::rand({4, 3, 2, 4, 4}, 11, 0, DType::F32, Device::cpu(), -1.0, 1.0);
  const FlowMatchingBatch b = make_flow_matching_batch(x0, 42, 17, {.shift = 5.0});
  ASSERT_EQ(b.noisy.shape(), x0.shape());
  ASSERT_EQ(b.target.shape(), x0.shape());
  ASSERT_EQ(b.sigma.shape(), Shape{4});
  ASSERT_EQ(b.timestep.shape(), Shape{4});
  const std::vector<double> x = values(x0), noisy = values(b.noisy), target = values(b.target),
                            sigma = values(b.sigma), t = values(b.timestep);
  const int64_t per_sample = x0.numel() / 4;
  double eps_sum = 0, eps_sq = 0;
  for (int64_t i = 0; i < x0.numel(); ++i) {
    const double eps = target[i] + x[i];  // target = eps - x0
    const double s = sigma[size_t(i / per_sample)];
    EXPECT_NEAR(noisy[i], (1 - s) * x[i] + s * eps, 1e-5) << i;
    eps_sum += eps;
    eps_sq += eps * eps;
  }
  EXPECT_NEAR(eps_sum / double(x0.numel()), 0.0, 0.15);
  EXPECT_NEAR(eps_sq / double(x0.numel()), 1.0, 0.2);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_GT(sigma[i], 0.0);
    EXPECT_LE(sigma[i], 1.0);
    EXPECT_NEAR(t[i], 1000.0 * sigma[i], 1e-3);
  }
  EXPECT_NE(sigma[0], sigma[1]);  // one draw per sample
}

TEST(FlowMatching, SigmaRangeAndShift) {
  const Tensor x0 = Tensor::zeros({4000, 1});
  double mean_plain = 0, mean_shifted = 0;
  for (double shift : {1.0, 5.0}) {
    const std::vector<double> sigma = values(make_flow_matching_batch(x0, 5, 0, {.shift = shift}).sigma);
    double mean = 0;
    for (double s : sigma) {
      ASSERT_GT(s, 0.0);
      ASSERT_LE(s, 1.0);
      mean += s / double(sigma.size());
    }
    (shift == 1.0 ? mean_plain : mean_shifted) = mean;
  }
  EXPECT_NEAR(mean_plain, 0.5, 0.02);  // s uniform
  // E[5s / (1 + 4s)] for s ~ U(0, 1) = 5/4 - 5 ln(5) / 16 = 0.747
  EXPECT_NEAR(mean_shifted, 1.25 - 5.0 * std::log(5.0) / 16.0, 0.02);
}

TEST(FlowMatching, DeterministicInSeedAndStep) {
  const Tensor x0 = Tensor::randn({2, 3, 2, 2, 2}, 1);
  auto draw = [&](uint64_t seed, int64_t step) {
    const FlowMatchingBatch b = make_flow_matching_batch(x0, seed, step, {});
    std::vector<double> all = values(b.noisy);
    for (double s : values(b.sigma)) all.push_back(s);
    return all;
  };
  EXPECT_EQ(draw(7, 3), draw(7, 3));
  EXPECT_NE(draw(7, 3), draw(7, 4));
  EXPECT_NE(draw(7, 3), draw(8, 3));
}

// Data-parallel ranks (first = rank, stride = world) draw exactly the rows of the
// one-process batch they hold.
TEST(FlowMatching, RankSlicesDrawTheirRowsOfTheGlobalBatch) {
  const Tensor x0 = Tensor::randn({6, 3, 2, 4, 4}, 21);
  const FlowMatchingBatch whole = make_flow_matching_batch(x0, 13, 9, {});
  for (int64_t world : {2, 3}) {
    for (int64_t rank = 0; rank < world; ++rank) {
      std::vector<Tensor> rows;
      for (int64_t i = rank; i < 6; i += world) rows.push_back(x0.select(0, i).unsqueeze(0));
      const FlowMatchingBatch part = make_flow_matching_batch(concat(rows, 0), 13, 9, {}, {rank, world});
      for (int64_t j = 0; j < int64_t(rows.size()); ++j) {
        const int64_t i = rank + j * world;
        EXPECT_EQ(values(part.noisy.select(0, j)), values(whole.noisy.select(0, i))) << world << " " << rank;
        EXPECT_EQ(values(part.target.select(0, j)), values(whole.target.select(0, i)));
        EXPECT_EQ(values(part.sigma)[size_t(j)], values(whole.sigma)[size_t(i)]);
      }
    }
  }
  // A contiguous slice (stride 1) too: the batch's second half.
  const FlowMatchingBatch tail = make_flow_matching_batch(x0.slice(0, 3, 6), 13, 9, {}, {3, 1});
  EXPECT_EQ(values(tail.noisy), values(whole.noisy.slice(0, 3, 6)));
}

TEST(FlowMatching, CudaMatchesCpuBitForBit) {
  SKIP_WITHOUT_CUDA("flow matching on CUDA");
  const Tensor x0 = Tensor::randn({3, 3, 5, 8, 8}, 4);
  const FlowMatchingBatch cpu = make_flow_matching_batch(x0, 99, 1234, {});
  const FlowMatchingBatch gpu = make_flow_matching_batch(x0.to(Device::cuda()), 99, 1234, {});
  EXPECT_TRUE(gpu.noisy.device().is_cuda());
  EXPECT_EQ(values(cpu.sigma), values(gpu.sigma));
  EXPECT_EQ(values(cpu.timestep), values(gpu.timestep));
  EXPECT_EQ(values(cpu.noisy), values(gpu.noisy));
  EXPECT_EQ(values(cpu.target), values(gpu.target));
}

TEST(FlowMatching, LossValueAndGradient) {
  Tensor predicted = Tensor::from_vector({1.0, 2.0, -1.0, 0.5}, {2, 2}).set_requires_grad(true);
  const Tensor target = Tensor::from_vector({0.0, 2.5, 1.0, 0.5}, {2, 2});
  const Tensor loss = flow_matching_loss(predicted, target);
  EXPECT_EQ(loss.dim(), 0);
  EXPECT_EQ(loss.dtype(), DType::F32);
  EXPECT_NEAR(loss.item(), (1.0 + 0.25 + 4.0 + 0.0) / 4.0, 1e-7);
  loss.backward();
  const std::vector<double> grad = values(predicted.grad());  // 2 (p - t) / N
  const std::vector<double> expected{0.5, -0.25, -1.0, 0.0};
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(grad[i], expected[i], 1e-7);
  const Tensor bf16_loss = flow_matching_loss(predicted.detach().to(DType::BF16), target);
  EXPECT_EQ(bf16_loss.dtype(), DType::F32);
}

// --- metrics log ----------------------------------------------------------------------------

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> entries;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) entries.push_back(nlohmann::json::parse(line));  // throws if invalid
  return entries;
}

TEST(TrainLog, WritesJsonLinesAndDropsStaleLinesOnResume) {
  TempDir dir;
  const std::string path = dir.file("metrics.jsonl");
  {
    TrainLog log(path, "test", 10);
    for (int64_t done = 1; done <= 5; ++done) log.log(done, {{"loss", 1.0 / double(done)}, {"lr", 1e-3}});
    // Flushed per line: readable before the log is closed.
    EXPECT_EQ(read_jsonl(path).size(), 5u);
  }
  std::vector<nlohmann::json> entries = read_jsonl(path);
  ASSERT_EQ(entries.size(), 5u);
  for (int64_t done = 1; done <= 5; ++done) {
    const nlohmann::json& entry = entries[size_t(done - 1)];
    EXPECT_EQ(entry["step"], done);
    EXPECT_TRUE(entry["time"].is_number());
    EXPECT_DOUBLE_EQ(entry["loss"].get<double>(), 1.0 / double(done));
  }
  // A killed run leaves a torn last line; the checkpoint it resumes from is after step 3.
  write_file(path, read_file(path) + "{\"step\": 6, \"lo");
  {
    TrainLog log(path, "test", 10, 3);
    for (int64_t done = 4; done <= 6; ++done) log.log(done, {{"loss", 0.5}});
    log.finish();
  }
  entries = read_jsonl(path);
  ASSERT_EQ(entries.size(), 6u);
  for (int64_t done = 1; done <= 6; ++done) EXPECT_EQ(entries[size_t(done - 1)]["step"], done);
  EXPECT_DOUBLE_EQ(entries[2]["loss"].get<double>(), 1.0 / 3.0);  // step 3 kept from the first run
  EXPECT_EQ(entries[3]["loss"], 0.5);                             // step 4 from the resumed run

  { TrainLog fresh(path, "test", 10); }  // a new run starts a new file
  EXPECT_TRUE(read_jsonl(path).empty());
}

// A run of 0 steps (teacher.steps: 0 keeps the initialized model, finetune.steps: 0 the
// distilled one) logs nothing and finishes; a start past the end is still refused.
TEST(TrainLog, ZeroStepsFinishWithAnEmptyLog) {
  TempDir dir;
  const std::string path = dir.file("metrics.jsonl");
  {
    TrainLog log(path, "test", 0);
    log.finish();
  }
  EXPECT_TRUE(read_jsonl(path).empty());
  EXPECT_THROW(TrainLog(path, "test", 0, 1), Error);
}

// --- training state -------------------------------------------------------------------------

TrainState sample_state() {
  TrainState s;
  s.step = 1234;
  s.seed = 0xfedcba9876543210ull;  // above INT64_MAX
  s.data = {.epoch = 3, .index = 17};
  s.extra = {{"stage", "finetune"}, {"lr", 1e-5}};
  s.model = {{"blocks.0.weight", Tensor::randn({4, 3}, 1)},
             {"alpha", Tensor::randn({8}, 2)},
             {"head.bias", Tensor::randn({2}, 3).to(DType::BF16)}};
  s.optimizer = {{"adam.m.alpha", Tensor::randn({8}, 4)}, {"adam.step", Tensor::from_vector({5}, {1}, DType::I64)}};
  return s;
}

TEST(TrainState, RoundTrip) {
  TempDir dir;
  const std::string path = dir.file("state.safetensors");
  const TrainState saved = sample_state();
  save_train_state(path, saved);
  const TrainState loaded = load_train_state(path);
  EXPECT_EQ(loaded.step, saved.step);
  EXPECT_EQ(loaded.seed, saved.seed);
  EXPECT_EQ(loaded.data.epoch, 3);
  EXPECT_EQ(loaded.data.index, 17);
  EXPECT_EQ(loaded.extra, saved.extra);
  ASSERT_EQ(loaded.model.size(), saved.model.size());
  for (size_t i = 0; i < saved.model.size(); ++i) {  // names in the saved order
    EXPECT_EQ(loaded.model[i].first, saved.model[i].first);
    EXPECT_EQ(loaded.model[i].second.dtype(), saved.model[i].second.dtype());
    EXPECT_EQ(values(loaded.model[i].second), values(saved.model[i].second));
  }
  ASSERT_EQ(loaded.optimizer.size(), 2u);
  EXPECT_EQ(values(loaded.optimizer.at("adam.m.alpha")), values(saved.optimizer.at("adam.m.alpha")));
  EXPECT_EQ(loaded.optimizer.at("adam.step").item(), 5.0);
  EXPECT_EQ(dir.entry_count(), 1u);  // no temp file left
}

TEST(TrainState, CorruptByteIsNamedByTensor) {
  TempDir dir;
  const std::string path = dir.file("state.safetensors");
  save_train_state(path, sample_state());
  uint64_t data_start = 0, begin = 0;
  {
    const SafetensorsFile file = SafetensorsFile::open(path);
    data_start = 8 + file.header_bytes();
    begin = file.info("blocks.0.weight").data_begin;
  }
  std::string bytes = read_file(path);
  bytes[size_t(data_start + begin + 5)] ^= 0x10;
  write_file(path, bytes);
  expect_contains(error_message([&] { load_train_state(path); }), {path, "blocks.0.weight", "checksum"});
}

TEST(TrainState, TruncatedFileIsNamed) {
  TempDir dir;
  const std::string path = dir.file("state.safetensors");
  save_train_state(path, sample_state());
  const std::string bytes = read_file(path);
  write_file(path, bytes.substr(0, bytes.size() - 10));
  expect_contains(error_message([&] { load_train_state(path); }), {path});
  write_file(path, bytes.substr(0, 4));
  expect_contains(error_message([&] { load_train_state(path); }), {path});
}

TEST(TrainState, PlainSafetensorsIsRejectedNamingTheKey) {
  TempDir dir;
  const std::string path = dir.file("weights.safetensors");
  save_safetensors(path, {{"w", Tensor::zeros({2})}});
  expect_contains(error_message([&] { load_train_state(path); }), {path, "format"});
}

}  // namespace
}  // namespace rehyat::train
