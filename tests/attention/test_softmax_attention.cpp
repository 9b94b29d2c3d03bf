// Softmax attention: the CPU reference against the composite (values and autograd
// gradients), f64 finite differences of the CPU gradients, and the CUDA kernels against
// the CPU reference (odd lengths, cross-attention shapes, both head dims, bf16/f16/f32,
// chunked key ranges with chunk boundaries inside tiles, strided views, NaN-poisoned
// outputs). GPU cases skip with a message when no CUDA device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attention/softmax_attention.h"
#ifdef REHYAT_CUDA
#include "attention/softmax_attention_cuda.h"
#endif
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/device.h"

namespace rehyat::attention {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ||a - b|| / ||b|| over all elements; infinite when a holds a NaN/Inf.
double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(a[i] - b[i]));
  }
  return worst;
}
size_t count_non_finite(const Tensor& t) {
  size_t bad = 0;
  for (double x : t.to_vector()) bad += !std::isfinite(x);
  return bad;
}

// [B, N, H, d] random normal tensor (f64 on the CPU) times `stddev`.
Tensor random_bnhd(int64_t b, int64_t n, int64_t h, int64_t d, uint64_t seed, double stddev = 1.0) {
  return Tensor::randn({b, n, h, d}, seed, 0, DType::F64, Device::cpu(), 0.0, stddev);
}

KeyRange chunked(int64_t frame_tokens, int64_t chunk_frames, int64_t overlap_frames) {
  KeyRange r;
  r.frame_tokens = frame_tokens;
  r.chunk_frames = chunk_frames;
  r.overlap_frames = overlap_frames;
  return r;
}

// --- key ranges ---------------------------------------------------------------------------

TEST(KeyRangeTest, MatchesSpecFormula) {
  const KeyRange r = chunked(/*frame_tokens=*/10, /*chunk_frames=*/3, /*overlap_frames=*/1);
  const int64_t n = 10 * 8;  // 8 frames: chunks {0,1,2} {3,4,5} {6,7}
  EXPECT_EQ(key_tokens_for_query(r, 0, n).begin, 0);
  EXPECT_EQ(key_tokens_for_query(r, 29, n).end, 30);
  EXPECT_EQ(key_tokens_for_query(r, 30, n).begin, 20);  // chunk 1 sees frames [2, 6)
  EXPECT_EQ(key_tokens_for_query(r, 59, n).end, 60);
  EXPECT_EQ(key_tokens_for_query(r, 79, n).begin, 50);  // chunk 2 sees frames [5, 8)
  EXPECT_EQ(key_tokens_for_query(r, 79, n).end, 80);
  KeyRange full;
  EXPECT_EQ(key_tokens_for_query(full, 5, 77).end, 77);
  EXPECT_EQ(scored_pairs(full, 300, 77), 300 * 77);
  EXPECT_EQ(scored_pairs(r, n, n), 30 * 30 + 30 * 40 + 20 * 30);
  EXPECT_THROW(check_key_range("t", r, 80, 79), Error);
  EXPECT_THROW(check_key_range("t", r, 70, 80), Error);
}

// --- CPU reference vs composite -----------------------------------------------------------

struct CpuCase {
  int64_t batch, queries, keys, heads, head_dim;
  KeyRange range;
};

void compare_with_composite(const CpuCase& c, uint64_t seed) {
  SCOPED_TRACE(fmt::format("B{} Nq{} Nk{} H{} d{} chunk(ft{} Tc{} To{})", c.batch, c.queries, c.keys, c.heads,
                           c.head_dim, c.range.frame_tokens, c.range.chunk_frames, c.range.overlap_frames));
  Tensor q = random_bnhd(c.batch, c.queries, c.heads, c.head_dim, seed).set_requires_grad(true);
  Tensor k = random_bnhd(c.batch, c.keys, c.heads, c.head_dim, seed + 1).set_requires_grad(true);
  Tensor v = random_bnhd(c.batch, c.keys, c.heads, c.head_dim, seed + 2).set_requires_grad(true);
  SoftmaxAttentionOptions opt;
  opt.keys = c.range;
  Tensor fused = softmax_attention(q, k, v, opt);
  Tensor d_o = random_bnhd(c.batch, c.queries, c.heads, c.head_dim, seed + 3);
  fused.backward(d_o);
  const std::vector<double> gq = q.grad().to_vector(), gk = k.grad().to_vector(), gv = v.grad().to_vector();
  q.zero_grad();
  k.zero_grad();
  v.zero_grad();
  Tensor composite = softmax_attention_composite(q, k, v, opt);
  composite.backward(d_o);
  EXPECT_EQ(fused.shape(), composite.shape());
  EXPECT_LT(max_abs_diff(fused.to_vector(), composite.to_vector()), 1e-12);
  EXPECT_LT(max_abs_diff(gq, q.grad().to_vector()), 1e-11);
  EXPECT_LT(max_abs_diff(gk, k.grad().to_vector()), 1e-11);
  EXPECT_LT(max_abs_diff(gv, v.grad().to_vector()), 1e-11);
}

TEST(SoftmaxAttentionCpu, FullMatchesComposite) { compare_with_composite({2, 13, 13, 3, 8, {}}, 11); }
TEST(SoftmaxAttentionCpu, CrossAttentionMatchesComposite) { compare_with_composite({1, 9, 5, 2, 16, {}}, 21); }
TEST(SoftmaxAttentionCpu, ChunkedMatchesComposite) {
  compare_with_composite({1, 21, 21, 2, 8, chunked(3, 2, 1)}, 31);   // 7 frames, last chunk short
  compare_with_composite({2, 24, 24, 1, 4, chunked(4, 1, 3)}, 41);   // overlap > chunk
  compare_with_composite({1, 20, 20, 2, 4, chunked(5, 2, 0)}, 51);   // no overlap
  compare_with_composite({1, 20, 20, 2, 4, chunked(5, 9, 0)}, 61);   // chunk >= frames: full
}

TEST(SoftmaxAttentionCpu, ChunkCoveringAllFramesEqualsFull) {
  Tensor q = random_bnhd(1, 12, 2, 8, 71), k = random_bnhd(1, 12, 2, 8, 72), v = random_bnhd(1, 12, 2, 8, 73);
  SoftmaxAttentionOptions opt;
  opt.keys = chunked(4, 3, 1);  // 3 frames, one chunk
  EXPECT_LT(max_abs_diff(softmax_attention(q, k, v, opt).to_vector(), softmax_attention(q, k, v).to_vector()),
            1e-14);
  opt.keys = chunked(4, 1, 0);  // one frame per chunk: differs
  EXPECT_GT(max_abs_diff(softmax_attention(q, k, v, opt).to_vector(), softmax_attention(q, k, v).to_vector()),
            1e-3);
}

TEST(SoftmaxAttentionCpu, StatisticsAreLogSumExpAndRowMax) {
  const int64_t n = 15, h = 2, d = 4;
  Tensor q = random_bnhd(1, n, h, d, 81), k = random_bnhd(1, n, h, d, 82), v = random_bnhd(1, n, h, d, 83);
  const KeyRange range = chunked(3, 2, 1);
  Tensor o = Tensor::empty({1, n, h, d}, DType::F64), lse = Tensor::empty({1, h, n}, DType::F64),
         mx = Tensor::empty({1, h, n}, DType::F64);
  const double scale = 0.7;
  kernels::softmax_attention_forward(o, lse, mx, q, k, v, scale, range);
  const std::vector<double> qv = q.to_vector(), kv = k.to_vector(), lv = lse.to_vector(), mv = mx.to_vector();
  for (int64_t head = 0; head < h; ++head)
    for (int64_t i = 0; i < n; ++i) {
      const TokenRange r = key_tokens_for_query(range, i, n);
      double best = -INFINITY, total = 0;
      std::vector<double> s;
      for (int64_t j = r.begin; j < r.end; ++j) {
        double dot = 0;
        for (int64_t e = 0; e < d; ++e) dot += qv[size_t((i * h + head) * d + e)] * kv[size_t((j * h + head) * d + e)];
        s.push_back(scale * dot);
        best = std::max(best, scale * dot);
      }
      for (double x : s) total += std::exp(x);
      EXPECT_NEAR(mv[size_t(head * n + i)], best, 1e-12);
      EXPECT_NEAR(lv[size_t(head * n + i)], std::log(total), 1e-12);
    }
}

TEST(SoftmaxAttentionCpu, StridedViewsMatchContiguous) {
  const int64_t b = 2, n = 11, h = 3, d = 8;
  Tensor qkv = Tensor::randn({b, n, 3 * h * d}, 91, 0, DType::F64);  // fused projection
  Tensor split = qkv.view({b, n, 3, h, d});
  Tensor q = split.select(2, 0), k = split.select(2, 1), v = split.select(2, 2);
  ASSERT_FALSE(q.is_contiguous());
  SoftmaxAttentionOptions opt;
  opt.scale = 0.3;
  EXPECT_LT(max_abs_diff(softmax_attention(q, k, v, opt).to_vector(),
                         softmax_attention(q.contiguous(), k.contiguous(), v.contiguous(), opt).to_vector()),
            1e-14);
}

TEST(SoftmaxAttentionCpu, RejectsBadInputs) {
  Tensor q = random_bnhd(1, 4, 2, 8, 1), k = random_bnhd(1, 5, 2, 8, 2);
  EXPECT_THROW(softmax_attention(q, k, random_bnhd(1, 5, 2, 4, 3)), Error);     // v head dim
  EXPECT_THROW(softmax_attention(q, random_bnhd(1, 5, 3, 8, 4), k), Error);     // heads differ
  EXPECT_THROW(softmax_attention(q, k, k.to(DType::F32)), Error);                // dtypes differ
  SoftmaxAttentionOptions opt;
  opt.keys = chunked(2, 1, 0);
  EXPECT_THROW(softmax_attention(q, k, k, opt), Error);                          // Nq != Nk
  EXPECT_THROW(softmax_attention(q, q.transpose(1, 3), q), Error);               // no unit stride on d
}

// --- f64 finite differences of the CPU gradients --------------------------------------------

void finite_difference_check(const CpuCase& c, uint64_t seed) {
  std::vector<Tensor> in = {random_bnhd(c.batch, c.queries, c.heads, c.head_dim, seed),
                            random_bnhd(c.batch, c.keys, c.heads, c.head_dim, seed + 1),
                            random_bnhd(c.batch, c.keys, c.heads, c.head_dim, seed + 2)};
  for (Tensor& t : in) t.set_requires_grad(true);
  SoftmaxAttentionOptions opt;
  opt.keys = c.range;
  Tensor out = softmax_attention(in[0], in[1], in[2], opt);
  const std::vector<double> w = Tensor::randn(out.shape(), seed + 9, 0, DType::F64).to_vector();
  out.backward(Tensor::from_vector(w, out.shape(), DType::F64));
  auto loss = [&](const std::vector<Tensor>& x) {
    autograd::NoGradGuard no_grad;
    const std::vector<double> y = softmax_attention(x[0], x[1], x[2], opt).to_vector();
    double s = 0;
    for (size_t i = 0; i < y.size(); ++i) s += y[i] * w[i];
    return s;
  };
  const double step = 1e-6;
  for (size_t which = 0; which < 3; ++which) {
    const std::vector<double> analytic = in[which].grad().to_vector(), x = in[which].to_vector();
    for (size_t e = 0; e < x.size(); ++e) {
      auto moved = [&](double delta) {
        std::vector<double> xp = x;
        xp[e] += delta;
        std::vector<Tensor> args = {in[0].detach(), in[1].detach(), in[2].detach()};
        args[which] = Tensor::from_vector(xp, in[which].shape(), DType::F64);
        return loss(args);
      };
      const double numeric = (moved(step) - moved(-step)) / (2 * step);
      EXPECT_NEAR(analytic[e], numeric, 1e-6 * (1 + std::abs(numeric))) << "input " << which << " element " << e;
    }
  }
}

TEST(SoftmaxAttentionGradCheck, Full) { finite_difference_check({1, 5, 7, 2, 4, {}}, 101); }
TEST(SoftmaxAttentionGradCheck, Chunked) { finite_difference_check({1, 8, 8, 2, 3, chunked(2, 1, 1)}, 111); }

// --- CUDA kernels vs the CPU reference ------------------------------------------------------

enum class Layout { Contiguous, FusedProjection, HeadMajor };

struct GpuCase {
  int64_t batch, queries, keys, heads, head_dim;
  DType dtype;
  KeyRange range;
  Layout layout = Layout::Contiguous;
  std::string name() const {
    return fmt::format("B{} Nq{} Nk{} H{} d{} {} chunk(ft{} Tc{} To{}) layout {}", batch, queries, keys, heads,
                       head_dim, dtype_name(dtype), range.frame_tokens, range.chunk_frames, range.overlap_frames,
                       int(layout));
  }
};

// Places a contiguous [B, N, H, d] CPU tensor on the GPU in the requested layout.
Tensor to_gpu_layout(const Tensor& x, Layout layout, int slot) {
  const int64_t b = x.size(0), n = x.size(1), h = x.size(2), d = x.size(3);
  if (layout == Layout::Contiguous) return x.to(Device::cuda(0));
  if (layout == Layout::FusedProjection) {  // a slice of [B, N, 3, H, d]
    Tensor fused = Tensor::full({b, n, 3, h, d}, kNaN, x.dtype(), Device::cuda(0));
    Tensor view = fused.select(2, slot);
    view.copy_(x.to(Device::cuda(0)));
    return view;
  }
  Tensor head_major = x.permute({0, 2, 1, 3}).contiguous().to(Device::cuda(0));  // [B, H, N, d]
  return head_major.permute({0, 2, 1, 3});
}

struct Tolerance {
  double rel_l2, stat_abs;
};
Tolerance tolerance(DType dtype) {
  if (dtype == DType::BF16) return {1.2e-2, 2e-3};
  if (dtype == DType::F16) return {3e-3, 2e-3};
  return {1e-5, 1e-5};
}

void compare_gpu_with_cpu(const GpuCase& c, uint64_t seed) {
  SCOPED_TRACE(c.name());
  // Inputs rounded to the dtype; the reference runs in f64 on the rounded values.
  const double qk_std = 1.5;  // peaky enough rows that the max and the masking matter
  Tensor q64 = random_bnhd(c.batch, c.queries, c.heads, c.head_dim, seed, qk_std).to(c.dtype).to(DType::F64);
  Tensor k64 = random_bnhd(c.batch, c.keys, c.heads, c.head_dim, seed + 1, qk_std).to(c.dtype).to(DType::F64);
  Tensor v64 = random_bnhd(c.batch, c.keys, c.heads, c.head_dim, seed + 2).to(c.dtype).to(DType::F64);
  Tensor do64 = random_bnhd(c.batch, c.queries, c.heads, c.head_dim, seed + 3).to(c.dtype).to(DType::F64);
  const double scale = 1.0 / std::sqrt(double(c.head_dim));
  const Shape stat_shape = {c.batch, c.heads, c.queries};

  Tensor o_ref = Tensor::empty(q64.shape(), DType::F64), lse_ref = Tensor::empty(stat_shape, DType::F64),
         max_ref = Tensor::empty(stat_shape, DType::F64);
  kernels::softmax_attention_forward(o_ref, lse_ref, max_ref, q64, k64, v64, scale, c.range);
  Tensor dq_ref = Tensor::empty(q64.shape(), DType::F64), dk_ref = Tensor::empty(k64.shape(), DType::F64),
         dv_ref = Tensor::empty(v64.shape(), DType::F64);
  kernels::softmax_attention_backward(dq_ref, dk_ref, dv_ref, do64, q64, k64, v64, o_ref, lse_ref, scale, c.range);

  const Device gpu = Device::cuda(0);
  Tensor q = to_gpu_layout(q64.to(c.dtype), c.layout, 0), k = to_gpu_layout(k64.to(c.dtype), c.layout, 1),
         v = to_gpu_layout(v64.to(c.dtype), c.layout, 2), d_o = to_gpu_layout(do64.to(c.dtype), c.layout, 0);
  const DType stats = kernels::stats_dtype(c.dtype);
  Tensor o = Tensor::full(q64.shape(), kNaN, c.dtype, gpu), lse = Tensor::full(stat_shape, kNaN, stats, gpu),
         mx = Tensor::full(stat_shape, kNaN, stats, gpu);
  kernels::softmax_attention_forward(o, lse, mx, q, k, v, scale, c.range);
  Tensor dq = Tensor::full(q64.shape(), kNaN, c.dtype, gpu), dk = Tensor::full(k64.shape(), kNaN, c.dtype, gpu),
         dv = Tensor::full(v64.shape(), kNaN, c.dtype, gpu);
  kernels::softmax_attention_backward(dq, dk, dv, d_o, q, k, v, o, lse, scale, c.range);

  for (const Tensor* t : {&o, &lse, &mx, &dq, &dk, &dv}) EXPECT_EQ(count_non_finite(*t), 0u) << t->str();
  const Tolerance tol = tolerance(c.dtype);
  EXPECT_LT(rel_l2(o.to_vector(), o_ref.to_vector()), tol.rel_l2) << "o";
  EXPECT_LT(max_abs_diff(lse.to_vector(), lse_ref.to_vector()), tol.stat_abs) << "lse";
  EXPECT_LT(max_abs_diff(mx.to_vector(), max_ref.to_vector()), tol.stat_abs) << "row_max";
  // Gradients go through one more rounding of o and P (to the dtype): twice the room.
  EXPECT_LT(rel_l2(dq.to_vector(), dq_ref.to_vector()), 2 * tol.rel_l2) << "dq";
  EXPECT_LT(rel_l2(dk.to_vector(), dk_ref.to_vector()), 2 * tol.rel_l2) << "dk";
  EXPECT_LT(rel_l2(dv.to_vector(), dv_ref.to_vector()), 2 * tol.rel_l2) << "dv";
}

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device: softmax attention CUDA kernels not run"

TEST(SoftmaxAttentionCuda, FullOddLengths) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 1000;
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t d : {64, 128}) {
      compare_gpu_with_cpu({1, 157, 157, 2, d, dt, {}}, seed += 10);
      compare_gpu_with_cpu({2, 1000, 1000, 1, d, dt, {}}, seed += 10);
      compare_gpu_with_cpu({1, 300, 77, 3, d, dt, {}}, seed += 10);  // cross-attention
      compare_gpu_with_cpu({1, 33, 1561, 2, d, dt, {}}, seed += 10);
    }
  compare_gpu_with_cpu({1, 1561, 1561, 1, 128, DType::BF16, {}}, seed += 10);
}

TEST(SoftmaxAttentionCuda, ChunkedBoundariesInsideTiles) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 2000;
  struct Combo {
    int64_t frame_tokens, frames, chunk, overlap;
  };
  const Combo combos[] = {{37, 9, 2, 1}, {50, 7, 3, 0}, {29, 11, 1, 2}, {61, 6, 2, 2}, {45, 5, 9, 0}, {130, 5, 2, 1}};
  for (const Combo& cb : combos)
    for (DType dt : {DType::BF16, DType::F16}) {
      const int64_t n = cb.frame_tokens * cb.frames;
      compare_gpu_with_cpu({1, n, n, 2, 128, dt, chunked(cb.frame_tokens, cb.chunk, cb.overlap)}, seed += 10);
      compare_gpu_with_cpu({1, n, n, 1, 64, dt, chunked(cb.frame_tokens, cb.chunk, cb.overlap)}, seed += 10);
    }
}

TEST(SoftmaxAttentionCuda, StridedViews) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 3000;
  for (Layout layout : {Layout::FusedProjection, Layout::HeadMajor})
    for (int64_t d : {64, 128}) {
      compare_gpu_with_cpu({2, 211, 211, 3, d, DType::BF16, {}, layout}, seed += 10);
      compare_gpu_with_cpu({1, 150, 150, 2, d, DType::F16, chunked(30, 2, 1), layout}, seed += 10);
    }
}

TEST(SoftmaxAttentionCuda, GenericPathF32AndOddHeadDim) {
  SKIP_WITHOUT_GPU();
  compare_gpu_with_cpu({1, 157, 157, 2, 128, DType::F32, {}}, 4000);
  compare_gpu_with_cpu({1, 90, 90, 2, 64, DType::F32, chunked(15, 2, 1), Layout::FusedProjection}, 4010);
  compare_gpu_with_cpu({1, 100, 45, 2, 40, DType::BF16, {}}, 4020);  // head dim 40: generic kernels
}

TEST(SoftmaxAttentionCuda, AutogradMatchesCompositeOnGpu) {
  SKIP_WITHOUT_GPU();
  const Device gpu = Device::cuda(0);
  Tensor q = random_bnhd(1, 200, 2, 64, 5000).to(DType::F32).to(gpu).set_requires_grad(true);
  Tensor k = random_bnhd(1, 200, 2, 64, 5001).to(DType::F32).to(gpu).set_requires_grad(true);
  Tensor v = random_bnhd(1, 200, 2, 64, 5002).to(DType::F32).to(gpu).set_requires_grad(true);
  SoftmaxAttentionOptions opt;
  opt.keys = chunked(40, 2, 1);
  Tensor d_o = random_bnhd(1, 200, 2, 64, 5003).to(DType::F32).to(gpu);
  softmax_attention(q, k, v, opt).backward(d_o);
  const std::vector<double> gq = q.grad().to_vector();
  q.zero_grad();
  softmax_attention_composite(q, k, v, opt).backward(d_o);
  EXPECT_LT(rel_l2(gq, q.grad().to_vector()), 1e-4);
}

#ifdef REHYAT_CUDA
// The hybrid attention's flash variants: the forward's arg-max key per row (same o / lse /
// row_max as the plain forward) and the backward with the row-max gradient folded in
// (dq_i += scale dc_i k_a, dk_a += scale dc_i q_i on top of the plain backward).
TEST(SoftmaxAttentionCuda, ArgmaxForwardAndRowMaxBackward) {
  SKIP_WITHOUT_GPU();
  const Device gpu = Device::cuda(0);
  uint64_t seed = 5000;
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t d : {64, 128}) {
      const int64_t B = 1, ft = 37, frames = 9, N = ft * frames, H = 2;
      const KeyRange range = chunked(ft, 2, 1);
      const double scale = 1.0 / std::sqrt(double(d));
      Tensor q = random_bnhd(B, N, H, d, seed += 10).to(dt), k = random_bnhd(B, N, H, d, seed += 10).to(dt),
             v = random_bnhd(B, N, H, d, seed += 10).to(dt), d_o = random_bnhd(B, N, H, d, seed += 10).to(dt);
      Tensor qg = q.to(gpu), kg = k.to(gpu), vg = v.to(gpu), dog = d_o.to(gpu);
      Tensor o0 = Tensor::empty(qg.shape(), dt, gpu), o1 = Tensor::empty(qg.shape(), dt, gpu);
      Tensor lse0 = Tensor::empty({B, H, N}, DType::F32, gpu), lse1 = Tensor::empty({B, H, N}, DType::F32, gpu);
      Tensor m0 = Tensor::empty({B, H, N}, DType::F32, gpu), m1 = Tensor::empty({B, H, N}, DType::F32, gpu);
      Tensor am = Tensor::empty({B, H, N}, DType::I32, gpu);
      kernels::softmax_attention_forward(o0, lse0, m0, qg, kg, vg, scale, range);
      ASSERT_TRUE(kernels::cuda::softmax_attention_forward_argmax(o1, lse1, m1, am, qg, kg, vg, scale, range));
      EXPECT_EQ(o0.to_vector(), o1.to_vector());
      EXPECT_EQ(lse0.to_vector(), lse1.to_vector());
      EXPECT_EQ(m0.to_vector(), m1.to_vector());
      // CPU scores from the rounded inputs: a_i in range, its score the row's max.
      const std::vector<double> qv = q.to_vector(), kv = k.to_vector(), av = am.to_vector(), mv = m1.to_vector();
      auto score = [&](int64_t h, int64_t i, int64_t j) {
        double acc = 0;
        for (int64_t e = 0; e < d; ++e) acc += qv[size_t((i * H + h) * d + e)] * kv[size_t((j * H + h) * d + e)];
        return acc * scale;
      };
      int bad = 0;
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < N; ++i) {
          const TokenRange r = key_tokens_for_query(range, i, N);
          double best = -INFINITY;
          for (int64_t j = r.begin; j < r.end; ++j) best = std::max(best, score(h, i, j));
          const int64_t a = int64_t(av[size_t(h * N + i)]);
          if (a < r.begin || a >= r.end || score(h, i, a) < best - 1e-3 * (1 + std::abs(best)) ||
              std::abs(mv[size_t(h * N + i)] - score(h, i, a)) > 1e-3 * (1 + std::abs(best)))
            ++bad;
        }
      EXPECT_EQ(bad, 0) << "d " << d;
      // Backward: folded row-max gradient against the plain backward plus the CPU correction.
      Tensor dc = Tensor::randn({B, H, N}, seed += 10, 0, DType::F64, Device::cpu(), 0.0, 4.0).to(DType::F32);
      Tensor dq0 = Tensor::empty(qg.shape(), dt, gpu), dk0 = Tensor::empty(qg.shape(), dt, gpu),
             dv0 = Tensor::empty(qg.shape(), dt, gpu);
      Tensor dq1 = Tensor::empty(qg.shape(), dt, gpu), dk1 = Tensor::empty(qg.shape(), dt, gpu),
             dv1 = Tensor::empty(qg.shape(), dt, gpu);
      kernels::softmax_attention_backward(dq0, dk0, dv0, dog, qg, kg, vg, o1, lse1, scale, range);
      ASSERT_TRUE(kernels::cuda::softmax_attention_backward_row_max(dq1, dk1, dv1, dog, qg, kg, vg, o1, lse1, am,
                                                                    dc.to(gpu), scale, range));
      std::vector<double> dq_ref = dq0.to_vector(), dk_ref = dk0.to_vector();
      const std::vector<double> dcv = dc.to_vector();
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < N; ++i) {
          const int64_t a = int64_t(av[size_t(h * N + i)]);
          const double c = scale * dcv[size_t(h * N + i)];
          for (int64_t e = 0; e < d; ++e) {
            dq_ref[size_t((i * H + h) * d + e)] += c * kv[size_t((a * H + h) * d + e)];
            dk_ref[size_t((a * H + h) * d + e)] += c * qv[size_t((i * H + h) * d + e)];
          }
        }
      const double tol = dt == DType::BF16 ? 1e-2 : 3e-3;
      EXPECT_GT(rel_l2(dq0.to_vector(), dq_ref), 3 * tol) << "the correction should matter here";
      EXPECT_LT(rel_l2(dq1.to_vector(), dq_ref), tol) << "dq d " << d;
      EXPECT_LT(rel_l2(dk1.to_vector(), dk_ref), tol) << "dk d " << d;
      EXPECT_EQ(dv0.to_vector(), dv1.to_vector()) << "dv d " << d;
    }
}
#endif

}  // namespace
}  // namespace rehyat::attention
