// The op harness: every op in op_cases.h runs forward and backward on a target
// (CPU or CUDA, f32/bf16/f16, contiguous or strided inputs) and is compared with the
// CPU f64 reference on the same (dtype-rounded) random inputs and output gradient.
// Allocations are guarded and poisoned (core/allocator.h): an overrun fails the test and
// an unwritten output shows up as NaN. CUDA targets skip with a message without a GPU.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/graph.h"
#include "core/ops/matmul.h"
#include "core/allocator.h"
#include "op_cases.h"

namespace rehyat::testing {
namespace {

struct Target {
  Device device;
  DType dtype;
  bool strided;
};

std::string target_name(const Target& t) {
  return fmt::format("{}_{}{}", t.device.is_cpu() ? "cpu" : "cuda", dtype_name(t.dtype), t.strided ? "_strided" : "");
}

struct Tolerance {
  double atol;  // relative to the largest |reference| element
  double rtol;  // relative to each |reference| element
};

Tolerance tolerance_for(DType d, double scale) {
  switch (d) {
    case DType::F32: return {2e-5 * scale, 2e-5 * scale};
    case DType::F16: return {4e-3 * scale, 4e-3 * scale};
    case DType::BF16: return {2.5e-2 * scale, 2.5e-2 * scale};
    default: return {1e-12, 1e-12};
  }
}

// Same values, strides of the transposed layout (non-contiguous) when rank >= 2.
Tensor make_strided(const Tensor& t) {
  if (t.dim() < 2) return t;
  return t.transpose(-1, -2).contiguous().transpose(-1, -2);
}

// Rounds f64 values through `dtype` so the reference sees exactly the target's inputs.
Tensor round_through(const Tensor& t, DType dtype) { return t.to(dtype).to(DType::F64); }

void expect_close(const std::string& what, const Tensor& got_t, const Tensor& ref_t, Tolerance tol) {
  ASSERT_EQ(got_t.shape(), ref_t.shape()) << what;
  std::vector<double> got = got_t.to_vector(), ref = ref_t.to_vector();
  double max_ref = 0;
  for (double r : ref) max_ref = std::max(max_ref, std::abs(r));
  size_t bad = 0, first_bad = 0;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << ": non-finite value " << got[i] << " at " << i
                                       << " (reference " << ref[i] << ")";
    double err = std::abs(got[i] - ref[i]);
    double allowed = tol.atol * std::max(max_ref, 1e-3) + tol.rtol * std::abs(ref[i]);
    if (err > allowed) {
      if (bad++ == 0) first_bad = i;
      worst = std::max(worst, err / allowed);
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements out of tolerance; first at "
                     << first_bad << " got " << got[first_bad] << " want " << ref[first_bad] << "; worst error "
                     << worst << "x the allowed " << tol.atol << " (abs, of max " << max_ref << ") + " << tol.rtol
                     << " (rel)";
}

class OpHarness : public ::testing::TestWithParam<std::tuple<int, int>> {};

std::vector<Target> targets() {
  std::vector<Target> t;
  for (Device d : {Device::cpu(), Device::cuda(0)})
    for (DType dt : {DType::F32, DType::BF16, DType::F16})
      for (bool strided : {false, true}) t.push_back({d, dt, strided});
  return t;
}

TEST_P(OpHarness, MatchesF64Reference) {
  const auto [case_index, target_index] = GetParam();
  const OpCase op = op_cases()[size_t(case_index)];
  const Target target = targets()[size_t(target_index)];
  if (target.device.is_cuda() && !cuda_available())
    GTEST_SKIP() << "no CUDA device: " << op.name << " on " << target_name(target) << " not run";

  set_debug_guards(true);
  for (uint64_t trial = 0; trial < 2; ++trial) {
    std::mt19937 rng(uint32_t(1000 * case_index + 10 * trial + 7));
    std::vector<InputSpec> specs = op.inputs(rng, Size::Large);
    std::vector<Tensor> masters = make_inputs(specs, 100 * uint64_t(case_index) + trial);

    // Reference on the rounded inputs, in f64 on the CPU.
    std::vector<Tensor> ref_in, dut_in;
    for (size_t i = 0; i < masters.size(); ++i) {
      const bool is_index = specs[i].kind == InputSpec::Index;
      Tensor r = is_index ? masters[i] : round_through(masters[i], target.dtype);
      if (specs[i].differentiable) r.set_requires_grad(true);
      ref_in.push_back(r);
      Tensor d = is_index ? masters[i] : masters[i].to(target.dtype);
      d = d.to(target.device);
      if (target.strided) d = make_strided(d);
      if (specs[i].differentiable) d.set_requires_grad(true);
      dut_in.push_back(d);
    }
    Tensor ref_out = op.fn(ref_in);
    Tensor dut_out = op.fn(dut_in);
    ASSERT_EQ(dut_out.dtype(), target.dtype) << op.name;
    ASSERT_EQ(dut_out.device(), target.device) << op.name;
    const Tolerance tol = tolerance_for(target.dtype, op.tolerance_scale);
    expect_close(fmt::format("{} forward on {}", op.name, target_name(target)), dut_out, ref_out, tol);

    Tensor grad_master = Tensor::randn(ref_out.shape(), 555 + trial, 0, DType::F64);
    ref_out.backward(round_through(grad_master, target.dtype));
    dut_out.backward(grad_master.to(target.dtype).to(target.device));
    for (size_t i = 0; i < masters.size(); ++i) {
      if (!specs[i].differentiable) continue;
      ASSERT_TRUE(dut_in[i].grad().defined()) << op.name << " input " << i << " got no gradient";
      expect_close(fmt::format("{} grad of input {} on {}", op.name, i, target_name(target)), dut_in[i].grad(),
                   ref_in[i].grad(), {tol.atol * 2, tol.rtol * 2});
    }
  }
  EXPECT_EQ(check_guards(), 0u) << "guard regions were overwritten while running " << op.name;
  set_debug_guards(false);
}

INSTANTIATE_TEST_SUITE_P(
    AllOps, OpHarness,
    ::testing::Combine(::testing::Range(0, int(op_cases().size())), ::testing::Range(0, int(targets().size()))),
    [](const ::testing::TestParamInfo<std::tuple<int, int>>& info) {
      return op_cases()[size_t(std::get<0>(info.param))].name + "_" +
             target_name(targets()[size_t(std::get<1>(info.param))]);
    });

// A size-1 batch dim carries whatever stride a permute left it: [B, N, 1, d] viewed as
// [B, 1, N, d] has stride(-3) = d, not the batch stride N*d. The product must still read
// each batch's own matrix.
TEST(Matmul, SingletonBatchDimsWithOddStrides) {
  for (Device device : {Device::cpu(), Device::cuda(0)}) {
    if (device.is_cuda() && !cuda_available()) {
      std::printf("no CUDA device: the CUDA case of SingletonBatchDimsWithOddStrides is not run\n");
      continue;
    }
    const int64_t B = 3, M = 5, K = 4, N = 2;
    const Tensor a = Tensor::randn({B, M, 1, K}, 11, 0, DType::F32, device).permute({0, 2, 1, 3});  // [B, 1, M, K]
    const Tensor b = Tensor::randn({B, 1, K, N}, 12, 0, DType::F32, device);
    const std::vector<double> c = matmul(a, b).to_vector();
    const std::vector<double> av = a.to_vector(), bv = b.to_vector();
    ASSERT_EQ(c.size(), size_t(B * M * N));
    for (int64_t bi = 0; bi < B; ++bi)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double want = 0;
          for (int64_t p = 0; p < K; ++p) want += av[size_t((bi * M + i) * K + p)] * bv[size_t((bi * K + p) * N + j)];
          EXPECT_NEAR(c[size_t((bi * M + i) * N + j)], want, 1e-5) << device.str() << " batch " << bi;
        }
  }
}

// The CBLAS path (f32/f64 on CPU) against the plain loop on every operand layout the
// adapter accepts: row- and column-major, batched, broadcast, alpha/beta, sliced rows.
TEST(Matmul, CpuBlasMatchesLoop) {
  if (!kernels::cpu_blas_available()) GTEST_SKIP() << "built without a CBLAS: the CPU GEMM is the loop alone";
  struct Layout {
    bool a_trans, b_trans, batched_a, batched_b;
  };
  for (DType dtype : {DType::F32, DType::F64}) {
    for (const Layout& l : {Layout{false, false, true, true}, Layout{true, false, true, false},
                            Layout{false, true, false, true}, Layout{true, true, true, true}}) {
      const int64_t B = 3, M = 37, K = 19, N = 23;
      auto operand = [&](bool trans, bool batched, int64_t rows, int64_t cols, uint64_t seed) {
        Shape shape = trans ? Shape{cols, rows + 2} : Shape{rows, cols + 2};
        if (batched) shape.insert(shape.begin(), B);
        Tensor t = Tensor::randn(shape, seed, 0, dtype).slice(-1, 1, 1 + (trans ? rows : cols));  // padded rows
        return trans ? t.transpose(-1, -2) : t;
      };
      const Tensor a = operand(l.a_trans, l.batched_a, M, K, 21), b = operand(l.b_trans, l.batched_b, K, N, 22);
      const Tensor c0 = Tensor::randn({B, M, N}, 23, 0, dtype);
      Tensor blas = c0.clone(), loop = c0.clone();
      kernels::matmul(blas, a, b, 0.75, 0.5);
      const bool was = kernels::set_cpu_blas(false);
      kernels::matmul(loop, a, b, 0.75, 0.5);
      kernels::set_cpu_blas(was);
      const std::vector<double> x = blas.to_vector(), y = loop.to_vector();
      const double tol = dtype == DType::F32 ? 2e-5 : 1e-12;
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_NEAR(x[i], y[i], tol * (1 + std::abs(y[i]))) << dtype_name(dtype) << " element " << i;
    }
  }
}

// Wide-output products: bf16 / f16 operands with an f32 c (weight gradients of bf16
// layers) equal the f32 product of the widened operands -- exactly on the CPU, to fp32
// summation order on CUDA -- batched, with a transposed operand; other mixes are refused.
TEST(Matmul, LowPrecisionOperandsIntoAnF32Output) {
  for (Device device : {Device::cpu(), Device::cuda(0)}) {
    if (device.is_cuda() && !cuda_available()) {
      std::printf("no CUDA device: the CUDA case of LowPrecisionOperandsIntoAnF32Output is not run\n");
      continue;
    }
    for (DType low : {DType::BF16, DType::F16}) {
      const Tensor a = Tensor::randn({3, 40, 72}, 41, 0, DType::F32, device).to(low);
      const Tensor b = Tensor::randn({3, 24, 72}, 42, 0, DType::F32, device).to(low).transpose(1, 2);  // [3, 72, 24]
      Tensor wide = Tensor::randn({3, 40, 24}, 43, 0, DType::F32, device);
      Tensor want = wide.clone();
      kernels::matmul(wide, a, b, 0.5, 1.0);
      kernels::matmul(want, a.to(DType::F32), b.to(DType::F32), 0.5, 1.0);
      const std::vector<double> x = wide.to_vector(), y = want.to_vector();
      const double tol = device.is_cuda() ? 1e-5 : 0.0;
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_NEAR(x[i], y[i], tol * (1 + std::abs(y[i]))) << device.str() << " " << dtype_name(low) << " " << i;
    }
    Tensor f64 = Tensor::empty({2, 2}, DType::F64, device), f16 = Tensor::empty({2, 2}, DType::F16, device);
    const Tensor x32 = Tensor::randn({2, 2}, 44, 0, DType::F32, device);
    EXPECT_THROW(kernels::matmul(f64, x32, x32), Error);                 // f32 operands, f64 output
    EXPECT_THROW(kernels::matmul(f16, x32, x32), Error);                 // narrowing output
    EXPECT_THROW(kernels::matmul(f64, x32.to(DType::BF16), x32), Error);  // operands differ
  }
}

}  // namespace
}  // namespace rehyat::testing
