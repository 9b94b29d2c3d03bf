// f64 finite-difference checks of every CPU backward in op_cases.h: for the scalar
// L = sum(f(inputs) * W) with random W, each analytic input gradient element must match
// the central difference (L(x + h) - L(x - h)) / 2h.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/graph.h"
#include "op_cases.h"

namespace rehyat::testing {
namespace {

class GradCheck : public ::testing::TestWithParam<int> {};

// Indices of the cases whose gradients finite differences can resolve.
std::vector<int> smooth_cases() {
  std::vector<int> idx;
  const auto cases = op_cases();
  for (size_t i = 0; i < cases.size(); ++i)
    if (cases[i].gradcheck) idx.push_back(int(i));
  return idx;
}

double weighted_sum(const Tensor& out, const std::vector<double>& w) {
  std::vector<double> v = out.to_vector();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * w[i];
  return s;
}

TEST_P(GradCheck, AnalyticMatchesFiniteDifferences) {
  const OpCase op = op_cases()[size_t(GetParam())];
  for (uint64_t trial = 0; trial < 3; ++trial) {
    std::mt19937 rng(uint32_t(31 * GetParam() + trial));
    std::vector<InputSpec> specs = op.inputs(rng, Size::Small);
    std::vector<Tensor> inputs = make_inputs(specs, 17 * uint64_t(GetParam()) + trial);
    for (size_t i = 0; i < inputs.size(); ++i)
      if (specs[i].differentiable) inputs[i].set_requires_grad(true);

    Tensor out = op.fn(inputs);
    ASSERT_EQ(out.dtype(), DType::F64);
    std::vector<double> w = Tensor::randn(out.shape(), 99 + trial, 0, DType::F64).to_vector();
    out.backward(Tensor::from_vector(w, out.shape(), DType::F64));

    const double h = 1e-6;
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!specs[i].differentiable) continue;
      std::vector<double> analytic = inputs[i].grad().to_vector();
      std::vector<double> x = inputs[i].to_vector();
      for (size_t e = 0; e < x.size(); ++e) {
        auto eval = [&](double delta) {
          autograd::NoGradGuard no_grad;
          std::vector<double> xp = x;
          xp[e] += delta;
          std::vector<Tensor> moved = inputs;
          moved[i] = Tensor::from_vector(xp, inputs[i].shape(), DType::F64);
          return weighted_sum(op.fn(moved), w);
        };
        const double numeric = (eval(h) - eval(-h)) / (2 * h);
        EXPECT_NEAR(analytic[e], numeric, 1e-5 * std::max(1.0, std::abs(numeric)))
            << op.name << " input " << i << " element " << e << " (trial " << trial << ")";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllOps, GradCheck, ::testing::ValuesIn(smooth_cases()),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return op_cases()[size_t(info.param)].name;
                         });

}  // namespace
}  // namespace rehyat::testing
