// The autograd engine: accumulation, shared subexpressions, no-grad, released graphs,
// missing backwards, leaves vs non-leaves.
#include <gtest/gtest.h>

#include "autograd/graph.h"
#include "autograd/ops.h"

namespace rehyat {
namespace {

Tensor leaf(std::vector<double> v) {
  Tensor t = Tensor::from_vector(v, {int64_t(v.size())}, DType::F64);
  t.set_requires_grad(true);
  return t;
}

TEST(Autograd, SharedInputSumsGradients) {
  Tensor x = leaf({1, 2, 3});
  Tensor y = sum(add(mul(x, x), mul(x, 3.0)));  // d/dx = 2x + 3
  y.backward();
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{5, 7, 9}));
}

TEST(Autograd, GradientsAccumulateAcrossBackwardCalls) {
  Tensor x = leaf({1, -2});
  sum(mul(x, 2.0)).backward();
  sum(mul(x, 2.0)).backward();
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{4, 4}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

// The post-accumulate hook runs once per backward, after the last contribution (x is
// used three times), and sees the whole gradient; a leaf whose only path got no gradient
// is not called.
TEST(Autograd, PostAccumulateHookSeesTheFinishedGradient) {
  Tensor x = leaf({1, 2, 3});
  Tensor w = leaf({0.5, -1, 2});
  std::vector<std::vector<double>> seen_x;
  int calls_w = 0;
  x.autograd_meta()->post_accumulate_hook = [&] { seen_x.push_back(x.grad().to_vector()); };
  w.autograd_meta()->post_accumulate_hook = [&] { ++calls_w; };
  Tensor y = sum(add(mul(mul(x, x), w), mul(x, 3.0)));  // d/dx = 2 x w + 3, d/dw = x^2
  y.backward();
  ASSERT_EQ(seen_x.size(), 1u);
  EXPECT_EQ(seen_x[0], (std::vector<double>{4, -1, 15}));
  EXPECT_EQ(calls_w, 1);
  sum(mul(x, 2.0)).backward();  // a second backward calls it again, with the sum so far
  ASSERT_EQ(seen_x.size(), 2u);
  EXPECT_EQ(seen_x[1], (std::vector<double>{6, 1, 17}));
  EXPECT_EQ(calls_w, 1);
  x.autograd_meta()->post_accumulate_hook = nullptr;
  sum(x).backward();
  EXPECT_EQ(seen_x.size(), 2u);
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = leaf({1, 2});
  {
    autograd::NoGradGuard guard;
    Tensor y = mul(x, 2.0);
    EXPECT_FALSE(y.requires_grad());
  }
  EXPECT_TRUE(mul(x, 2.0).requires_grad());
  EXPECT_FALSE(mul(x.detach(), 2.0).requires_grad());
}

TEST(Autograd, SecondBackwardNeedsRetainGraph) {
  Tensor x = leaf({1, 2});
  Tensor y = sum(exp(x));
  y.backward(Tensor::full({}, 1.0, DType::F64), true);
  y.backward();  // allowed: the first call retained the graph
  try {
    y.backward();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("second time"), std::string::npos) << e.what();
  }
}

TEST(Autograd, MissingBackwardNamesTheOp) {
  Tensor x = leaf({1, 2});
  Tensor y = mul(x, 1.0);
  autograd::record("frobnicate", y, {x}, nullptr);
  try {
    sum(y).backward();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("frobnicate"), std::string::npos) << e.what();
  }
}

TEST(Autograd, OnlyLeavesKeepGradients) {
  Tensor x = leaf({1, 2});
  Tensor h = mul(x, 3.0);
  sum(h).backward();
  EXPECT_FALSE(h.grad().defined());
  EXPECT_THROW(h.set_requires_grad(false), Error);
  EXPECT_THROW(Tensor::arange(3).set_requires_grad(true), Error);
}

TEST(Autograd, NonScalarBackwardNeedsGradient) {
  Tensor x = leaf({1, 2});
  EXPECT_THROW(mul(x, 2.0).backward(), Error);
  EXPECT_THROW(Tensor::from_vector({1}, {1}).backward(), Error);
}

TEST(Autograd, ViewsAreDifferentiable) {
  Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::F64);
  x.set_requires_grad(true);
  Tensor y = sum(mul(x.transpose(0, 1).slice(0, 1, 3).reshape({-1}), Tensor::arange(4, DType::F64)));
  y.backward();
  // transpose -> [[1,4],[2,5],[3,6]], rows 1..2 -> [2,5,3,6] weighted 0..3
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{0, 0, 2, 0, 1, 3}));
}

}  // namespace
}  // namespace rehyat
