// Hybrid attention (SPEC §3): the plain-loop CPU reference against the composite (values
// and autograd gradients) for every kind, f64 finite differences of the CPU gradients
// (rows whose max matters included), chunks covering every frame equal full softmax, and
// the CUDA op against the CPU reference (both head dims, bf16/f16, causal and non-causal,
// frame sizes that are not tile multiples, To >= Tc). GPU cases skip without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attention/hybrid_attention.h"
#include "attention/softmax_attention.h"
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/device.h"

namespace rehyat::attention {
namespace {

double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

struct Case {
  int64_t batch, frames, frame_tokens, heads, head_dim, feature_dim;
  HybridOptions options;
  std::string name() const {
    return fmt::format("B{} T{} ft{} H{} d{} Dp{} {} Tc{} To{} causal{} rate{}", batch, frames, frame_tokens, heads,
                       head_dim, feature_dim, attention_kind_name(options.kind), options.chunk_frames,
                       options.overlap_frames, options.causal, options.rate);
  }
};

HybridOptions make_options(AttentionKind kind, int64_t frame_tokens, int64_t tc, int64_t to, bool causal,
                           int64_t rate = 2) {
  HybridOptions o;
  o.kind = kind;
  o.frame_tokens = frame_tokens;
  o.chunk_frames = tc;
  o.overlap_frames = to;
  o.causal = causal;
  o.rate = rate;
  return o;
}

struct Inputs {
  Tensor q, k, v, pq, pk;
  std::vector<Tensor> list() const { return {q, k, v, pq, pk}; }
};

// f64 CPU inputs; q/k scaled so rows are peaky (the max matters); features positive.
Inputs random_inputs(const Case& c, uint64_t seed, double qk_std = 1.5) {
  const int64_t n = c.frames * c.frame_tokens;
  auto normal = [&](int64_t dim, uint64_t s, double stddev) {
    return Tensor::randn({c.batch, n, c.heads, dim}, s, 0, DType::F64, Device::cpu(), 0.0, stddev);
  };
  auto feature = [&](uint64_t s) {
    return Tensor::rand({c.batch, n, c.heads, c.feature_dim}, s, 0, DType::F64, Device::cpu(), 0.0,
                        0.6 / std::sqrt(double(c.feature_dim)));
  };
  return {normal(c.head_dim, seed, qk_std), normal(c.head_dim, seed + 1, qk_std), normal(c.head_dim, seed + 2, 1.0),
          feature(seed + 3), feature(seed + 4)};
}

void compare_with_composite(const Case& c, uint64_t seed) {
  SCOPED_TRACE(c.name());
  Inputs in = random_inputs(c, seed);
  Tensor dy = Tensor::randn(in.q.shape(), seed + 9, 0, DType::F64);
  std::vector<std::vector<double>> grads[2];
  std::vector<double> outs[2];
  for (int which = 0; which < 2; ++which) {
    std::vector<Tensor> x;
    for (const Tensor& t : in.list()) x.push_back(t.detach().clone().set_requires_grad(true));
    Tensor y = which == 0 ? hybrid_attention(x[0], x[1], x[2], x[3], x[4], c.options)
                          : hybrid_attention_composite(x[0], x[1], x[2], x[3], x[4], c.options);
    sum(mul(y, dy)).backward();
    outs[which] = y.to_vector();
    for (size_t i = 0; i < 5; ++i) {
      const bool unused = c.options.kind == AttentionKind::Softmax && i >= 3;
      grads[which].push_back(unused || !x[i].grad().defined() ? std::vector<double>(size_t(x[i].numel()), 0.0)
                                                             : x[i].grad().to_vector());
    }
  }
  EXPECT_LT(rel_l2(outs[0], outs[1]), 1e-12) << "y";
  const char* names[] = {"dq", "dk", "dv", "dphi_q", "dphi_k"};
  for (size_t i = 0; i < 5; ++i) EXPECT_LT(rel_l2(grads[0][i], grads[1][i]), 1e-10) << names[i];
}

TEST(HybridAttentionCpu, KindNames) {
  for (AttentionKind kind :
       {AttentionKind::Softmax, AttentionKind::Rehyat, AttentionKind::Linear, AttentionKind::UniformHybrid})
    EXPECT_EQ(parse_attention_kind(attention_kind_name(kind)), kind);
  EXPECT_THROW(parse_attention_kind("flash"), std::exception);
}

TEST(HybridAttentionCpu, RehyatCausalMatchesComposite) {
  compare_with_composite({2, 7, 3, 2, 4, 5, make_options(AttentionKind::Rehyat, 3, 2, 1, true)}, 11);
  compare_with_composite({1, 5, 2, 2, 6, 3, make_options(AttentionKind::Rehyat, 2, 1, 3, true)}, 12);  // To > Tc
}
TEST(HybridAttentionCpu, RehyatNonCausalMatchesComposite) {
  compare_with_composite({1, 7, 3, 2, 4, 5, make_options(AttentionKind::Rehyat, 3, 3, 1, false)}, 13);
  compare_with_composite({1, 6, 2, 1, 5, 4, make_options(AttentionKind::Rehyat, 2, 2, 2, false)}, 14);  // To == Tc
}
TEST(HybridAttentionCpu, LinearMatchesComposite) {
  compare_with_composite({2, 4, 3, 2, 4, 5, make_options(AttentionKind::Linear, 3, 1, 0, true)}, 15);
}
TEST(HybridAttentionCpu, UniformHybridMatchesComposite) {
  compare_with_composite({1, 5, 3, 2, 4, 5, make_options(AttentionKind::UniformHybrid, 3, 1, 0, true, 2)}, 16);
  compare_with_composite({1, 7, 2, 1, 4, 3, make_options(AttentionKind::UniformHybrid, 2, 1, 0, true, 3)}, 17);
}
TEST(HybridAttentionCpu, SoftmaxMatchesComposite) {
  compare_with_composite({1, 4, 3, 2, 4, 5, make_options(AttentionKind::Softmax, 3, 1, 0, true)}, 18);
}
TEST(HybridAttentionCpu, LargeHeadDimsMatchComposite) {
  compare_with_composite({1, 4, 5, 1, 64, 8, make_options(AttentionKind::Rehyat, 5, 2, 1, true)}, 19);
  compare_with_composite({1, 3, 5, 1, 128, 8, make_options(AttentionKind::Rehyat, 5, 1, 2, false)}, 20);
}

TEST(HybridAttentionCpu, ChunkCoveringAllFramesEqualsSoftmax) {
  for (bool causal : {true, false}) {
    const Case c{2, 5, 3, 2, 8, 4, make_options(AttentionKind::Rehyat, 3, 5, 1, causal)};
    Inputs in = random_inputs(c, 31);
    Tensor y = hybrid_attention(in.q, in.k, in.v, in.pq, in.pk, c.options);
    Tensor ref = softmax_attention(in.q, in.k, in.v);
    EXPECT_LT(rel_l2(y.to_vector(), ref.to_vector()), 1e-13);
  }
}

void finite_difference_check(const Case& c, uint64_t seed, double qk_std) {
  SCOPED_TRACE(c.name());
  Inputs in = random_inputs(c, seed, qk_std);
  Tensor dy = Tensor::randn(in.q.shape(), seed + 9, 0, DType::F64);
  auto loss = [&](const std::vector<Tensor>& x) {
    return sum(mul(hybrid_attention(x[0], x[1], x[2], x[3], x[4], c.options), dy)).item();
  };
  std::vector<Tensor> x;
  for (const Tensor& t : in.list()) x.push_back(t.detach().clone().set_requires_grad(true));
  sum(mul(hybrid_attention(x[0], x[1], x[2], x[3], x[4], c.options), dy)).backward();
  const double step = 1e-6;
  for (size_t which = 0; which < 5; ++which) {
    const std::vector<double> analytic = x[which].grad().to_vector(), values = x[which].to_vector();
    for (size_t e = 0; e < values.size(); ++e) {
      auto moved = [&](double delta) {
        std::vector<double> xp = values;
        xp[e] += delta;
        std::vector<Tensor> args;
        for (const Tensor& t : x) args.push_back(t.detach());
        args[which] = Tensor::from_vector(xp, x[which].shape(), DType::F64);
        return loss(args);
      };
      const double numeric = (moved(step) - moved(-step)) / (2 * step);
      EXPECT_NEAR(analytic[e], numeric, 1e-6 * (1 + std::abs(numeric))) << "input " << which << " element " << e;
    }
  }
}

// Large q/k: the softmax part is peaky, so the linear part's weight relative to exp(-c)
// (the row max's own gradient) is far from negligible.
TEST(HybridAttentionGradCheck, RehyatCausalRowMaxMatters) {
  finite_difference_check({1, 4, 2, 1, 3, 3, make_options(AttentionKind::Rehyat, 2, 2, 0, true)}, 41, 2.0);
}
TEST(HybridAttentionGradCheck, RehyatNonCausal) {
  finite_difference_check({1, 4, 2, 1, 3, 2, make_options(AttentionKind::Rehyat, 2, 1, 1, false)}, 42, 1.0);
}
TEST(HybridAttentionGradCheck, LinearAndUniform) {
  finite_difference_check({1, 3, 2, 1, 3, 2, make_options(AttentionKind::Linear, 2, 1, 0, true)}, 43, 1.0);
  finite_difference_check({1, 3, 2, 1, 3, 2, make_options(AttentionKind::UniformHybrid, 2, 1, 0, true)}, 44, 1.5);
}

TEST(HybridAttentionCpu, RejectsBadInputs) {
  const Case c{1, 2, 3, 1, 4, 2, make_options(AttentionKind::Rehyat, 3, 1, 0, true)};
  Inputs in = random_inputs(c, 51);
  HybridOptions bad = c.options;
  bad.chunk_frames = 0;
  EXPECT_THROW(hybrid_attention(in.q, in.k, in.v, in.pq, in.pk, bad), std::exception);
  bad = c.options;
  bad.frame_tokens = 4;  // 6 tokens are not whole frames of 4
  EXPECT_THROW(hybrid_attention(in.q, in.k, in.v, in.pq, in.pk, bad), std::exception);
  EXPECT_THROW(hybrid_attention(in.q, in.k, in.v, in.pq.to(DType::F32), in.pk, c.options), std::exception);
  EXPECT_THROW(hybrid_attention(in.q, in.k, in.v, Tensor(), in.pk, c.options), std::exception);
}

// --- CUDA op vs the CPU reference ------------------------------------------------------------

void compare_gpu_with_cpu(const Case& c, DType dtype, uint64_t seed) {
  SCOPED_TRACE(c.name() + " " + dtype_name(dtype));
  Inputs in = random_inputs(c, seed);
  // Inputs rounded to the device dtypes; the reference runs in f64 on the rounded values.
  for (Tensor* t : {&in.q, &in.k, &in.v}) *t = t->to(dtype).to(DType::F64);
  for (Tensor* t : {&in.pq, &in.pk}) *t = t->to(DType::F32).to(DType::F64);
  Tensor dy = Tensor::randn(in.q.shape(), seed + 9, 0, DType::F64).to(dtype).to(DType::F64);
  std::vector<Tensor> ref;
  for (const Tensor& t : in.list()) ref.push_back(t.detach().clone().set_requires_grad(true));
  Tensor y_ref = hybrid_attention(ref[0], ref[1], ref[2], ref[3], ref[4], c.options);
  sum(mul(y_ref, dy)).backward();

  const Device gpu = Device::cuda(0);
  std::vector<Tensor> x;
  for (size_t i = 0; i < 5; ++i)
    x.push_back(in.list()[i].to(i < 3 ? dtype : DType::F32).to(gpu).set_requires_grad(true));
  Tensor y = hybrid_attention(x[0], x[1], x[2], x[3], x[4], c.options);
  y.backward(dy.to(dtype).to(gpu));
  const double tol = dtype == DType::BF16 ? 1.5e-2 : 5e-3;
  EXPECT_LT(rel_l2(y.to_vector(), y_ref.to_vector()), tol) << "y";
  const char* names[] = {"dq", "dk", "dv", "dphi_q", "dphi_k"};
  for (size_t i = 0; i < 5; ++i) {
    // Inputs a kind does not use (q and k of Linear) may get no gradient at all.
    const std::vector<double> want = ref[i].grad().to_vector();
    const std::vector<double> got =
        x[i].grad().defined() ? x[i].grad().to_vector() : std::vector<double>(want.size(), 0.0);
    if (!x[i].grad().defined() || want == std::vector<double>(want.size(), 0.0)) {
      EXPECT_EQ(got, want) << names[i];
      continue;
    }
    EXPECT_LT(rel_l2(got, want), 2 * tol) << names[i];
  }
}

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device: hybrid attention CUDA kernels not run"

TEST(HybridAttentionCuda, RehyatCausal) {
  SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::BF16, DType::F16})
    for (int64_t d : {64, 128}) {
      compare_gpu_with_cpu({1, 5, 37, 2, d, 32, make_options(AttentionKind::Rehyat, 37, 2, 1, true)}, dtype, 61);
      compare_gpu_with_cpu({2, 4, 70, 1, d, 16, make_options(AttentionKind::Rehyat, 70, 1, 3, true)}, dtype, 62);
    }
}
TEST(HybridAttentionCuda, RehyatNonCausal) {
  SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::BF16, DType::F16})
    for (int64_t d : {64, 128})
      compare_gpu_with_cpu({1, 5, 37, 2, d, 32, make_options(AttentionKind::Rehyat, 37, 2, 1, false)}, dtype, 63);
}
// The fused path of the baselines: Linear (no softmax part) and UniformHybrid (compact
// softmax keys, T not a multiple of R, frame_tokens not a tile multiple).
TEST(HybridAttentionCuda, LinearAndUniformFused) {
  SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::BF16, DType::F16})
    for (int64_t d : {64, 128}) {
      compare_gpu_with_cpu({1, 5, 37, 2, d, 32, make_options(AttentionKind::Linear, 37, 1, 0, true)}, dtype, 67);
      compare_gpu_with_cpu({2, 7, 33, 2, d, 32, make_options(AttentionKind::UniformHybrid, 33, 1, 0, true, 3)}, dtype,
                           68);
      compare_gpu_with_cpu({1, 4, 40, 1, d, 16, make_options(AttentionKind::UniformHybrid, 40, 1, 0, true, 2)}, dtype,
                           69);
    }
}
TEST(HybridAttentionCuda, OtherKindsAndF32) {
  SKIP_WITHOUT_GPU();
  compare_gpu_with_cpu({1, 3, 9, 2, 16, 8, make_options(AttentionKind::Linear, 9, 1, 0, true)}, DType::F32, 64);
  compare_gpu_with_cpu({1, 4, 9, 2, 16, 8, make_options(AttentionKind::UniformHybrid, 9, 1, 0, true)}, DType::F32, 65);
  compare_gpu_with_cpu({1, 4, 9, 2, 16, 8, make_options(AttentionKind::Rehyat, 9, 2, 1, true)}, DType::F32, 66);
}

}  // namespace
}  // namespace rehyat::attention
