// Philox: the published known-answer vector, distribution sanity, and bit-identical
// numbers on the CPU and the GPU for the same seed and offset.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/philox.h"
#include "core/tensor.h"

namespace rehyat {
namespace {

TEST(Philox, KnownAnswer) {
  // Random123 kat_vectors: philox4x32_10, counter 0, key 0.
  philox::U4 r = philox::block(0, 0);
  EXPECT_EQ(r.v[0], 0x6627e8d5u);
  EXPECT_EQ(r.v[1], 0xe169c58du);
  EXPECT_EQ(r.v[2], 0xbc57ac4cu);
  EXPECT_EQ(r.v[3], 0x9b00dbd8u);
}

TEST(Philox, OffsetsContinueTheStream) {
  Tensor a = Tensor::rand({100}, 42, 0);
  Tensor b = Tensor::rand({60}, 42, 40);
  std::vector<double> va = a.to_vector(), vb = b.to_vector();
  for (int i = 0; i < 60; ++i) EXPECT_EQ(va[40 + i], vb[i]);
  EXPECT_NE(Tensor::rand({4}, 43, 0).to_vector(), Tensor::rand({4}, 42, 0).to_vector());
}

TEST(Philox, Distributions) {
  const int64_t n = 200000;
  std::vector<double> u = Tensor::rand({n}, 7, 0, DType::F32, Device::cpu(), -1.0, 3.0).to_vector();
  std::vector<double> z = Tensor::randn({n}, 7, 0).to_vector();
  double um = 0, zm = 0, zv = 0, lo = 1e9, hi = -1e9;
  for (int64_t i = 0; i < n; ++i) {
    um += u[i];
    lo = std::min(lo, u[i]);
    hi = std::max(hi, u[i]);
    zm += z[i];
  }
  um /= n;
  zm /= n;
  for (double v : z) zv += (v - zm) * (v - zm);
  zv /= n;
  EXPECT_NEAR(um, 1.0, 0.01);
  EXPECT_GE(lo, -1.0);
  EXPECT_LT(hi, 3.0);
  EXPECT_NEAR(zm, 0.0, 0.01);
  EXPECT_NEAR(zv, 1.0, 0.02);
}

TEST(Philox, OwnLogAndSinCosAreAccurate) {
  for (float x : {1e-7f, 0.001f, 0.3f, 0.7071f, 0.9999f, 1.0f})
    EXPECT_NEAR(philox::log_exact(x), std::log(double(x)), 2e-6 * std::max(1.0, std::abs(std::log(double(x))))) << x;
  for (float t = 0; t < 1.0f; t += 0.0371f) {
    float s, c;
    philox::sincos_2pi(t, &s, &c);
    EXPECT_NEAR(s, std::sin(2 * M_PI * t), 2e-7) << t;
    EXPECT_NEAR(c, std::cos(2 * M_PI * t), 2e-7) << t;
  }
}

TEST(Philox, CpuAndCudaAgreeBitForBit) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F64}) {
    Tensor cu = Tensor::rand({1001}, 11, 5, dt, Device::cpu(), -2, 2);
    Tensor gu = Tensor::rand({1001}, 11, 5, dt, Device::cuda(0), -2, 2);
    EXPECT_EQ(cu.to_vector(), gu.to_vector()) << dtype_name(dt);
    Tensor cn = Tensor::randn({100003}, 12, 77, dt, Device::cpu(), 0.5, 3);
    Tensor gn = Tensor::randn({100003}, 12, 77, dt, Device::cuda(0), 0.5, 3);
    EXPECT_EQ(cn.to_vector(), gn.to_vector()) << dtype_name(dt);
  }
}

}  // namespace
}  // namespace rehyat
