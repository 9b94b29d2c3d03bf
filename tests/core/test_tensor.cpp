// Tensor metadata, views without copies, contiguous(), dtype conversions, errors.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/ops.h"
#include "core/tensor.h"

namespace rehyat {
namespace {

Tensor iota(const Shape& s, DType dt = DType::F32) {
  std::vector<double> v(size_t(shape_numel(s)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = double(i);
  return Tensor::from_vector(v, s, dt);
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = iota({2, 3, 4});
  EXPECT_TRUE(t.is_contiguous());
  Tensor p = t.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(p.strides(), (Shape{1, 12, 4}));
  EXPECT_FALSE(p.is_contiguous());
  EXPECT_EQ(p.storage(), t.storage());
  Tensor s = t.slice(2, 1, 3);
  EXPECT_EQ(s.storage(), t.storage());
  EXPECT_EQ(s.to_vector(), (std::vector<double>{1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22}));
  Tensor v = t.view({6, 4});
  EXPECT_EQ(v.storage(), t.storage());
  Tensor sel = t.select(1, 2);
  EXPECT_EQ(sel.shape(), (Shape{2, 4}));
  EXPECT_EQ(sel.to_vector(), (std::vector<double>{8, 9, 10, 11, 20, 21, 22, 23}));
  auto chunks = t.chunk(3, 2);
  ASSERT_EQ(chunks.size(), 2u);  // 4 elements in chunks of 2
  EXPECT_EQ(chunks[1].to_vector()[0], 2.0);
  Tensor e = iota({3, 1}).expand({2, 3, 4});
  EXPECT_EQ(e.strides(), (Shape{0, 1, 0}));
  EXPECT_EQ(e.to_vector()[5], 1.0);
}

TEST(Tensor, ReshapeCopiesOnlyWhenNeeded) {
  Tensor t = iota({4, 6});
  Tensor split = t.reshape({2, 2, 3, 2});
  EXPECT_EQ(split.storage(), t.storage());
  Tensor tr = t.transpose(0, 1);  // [6, 4], not contiguous
  Tensor merged_ok = tr.reshape({3, 2, 4});  // splitting a dim is still a view
  EXPECT_EQ(merged_ok.storage(), t.storage());
  Tensor flat = tr.reshape({-1});  // needs a copy
  EXPECT_NE(flat.storage(), t.storage());
  EXPECT_EQ(flat.to_vector()[1], 6.0);
  EXPECT_THROW(tr.view({24}), Error);
  EXPECT_THROW(t.reshape({5, -1}), Error);
  Tensor c = tr.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.to_vector(), tr.to_vector());
  EXPECT_EQ(t.contiguous().storage(), t.storage());
}

TEST(Tensor, SqueezeUnsqueezeAndErrors) {
  Tensor t = iota({3, 1, 2});
  EXPECT_EQ(t.squeeze(1).shape(), (Shape{3, 2}));
  EXPECT_EQ(t.unsqueeze(0).shape(), (Shape{1, 3, 1, 2}));
  EXPECT_EQ(t.unsqueeze(-1).shape(), (Shape{3, 1, 2, 1}));
  EXPECT_THROW(t.squeeze(0), Error);
  EXPECT_THROW(t.slice(5, 0, 1), Error);
  EXPECT_THROW(t.permute({0, 0, 1}), Error);
  EXPECT_THROW(t.expand({3, 4, 3}), Error);
  try {
    t.view({7});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 1, 2]"), std::string::npos) << e.what();
  }
}

TEST(DType, HalfConversionsRoundToNearestEven) {
  // bf16: 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
  // f16: exact values, ties, subnormals, overflow.
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f})
    EXPECT_EQ(f16_to_float(float_to_f16(v)), v) << v;
  EXPECT_EQ(f16_to_float(float_to_f16(1.0f + std::ldexp(1.0f, -11))), 1.0f);
  EXPECT_TRUE(std::isinf(f16_to_float(float_to_f16(70000.0f))));
  EXPECT_EQ(f16_to_float(float_to_f16(3 * 5.960464477539063e-08f / 2)), 2 * 5.960464477539063e-08f);
  EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(NAN))));
}

TEST(DType, CastsBetweenAllTypes) {
  Tensor t = Tensor::from_vector({-3, -1.5, 0, 2.25, 7}, {5}, DType::F64);
  for (DType d : {DType::F32, DType::BF16, DType::F16}) EXPECT_EQ(t.to(d).to(DType::F64).to_vector(), t.to_vector());
  EXPECT_EQ(t.to(DType::I32).to_vector(), (std::vector<double>{-3, -1, 0, 2, 7}));
  EXPECT_EQ(t.to(DType::I64).to(DType::I32).to(DType::F16).to_vector(), (std::vector<double>{-3, -1, 0, 2, 7}));
  EXPECT_EQ(parse_dtype("BF16"), DType::BF16);
  EXPECT_THROW(parse_dtype("F8_E4M3", "tensor x"), Error);
}

TEST(Tensor, CudaRoundTrip) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  Tensor t = Tensor::randn({37, 5}, 3);
  Tensor g = t.to(Device::cuda(0));
  EXPECT_EQ(g.device(), Device::cuda(0));
  EXPECT_EQ(g.to(Device::cpu()).to_vector(), t.to_vector());
  Tensor strided = g.transpose(0, 1).contiguous();
  EXPECT_EQ(strided.to_vector(), t.transpose(0, 1).contiguous().to_vector());
}

}  // namespace
}  // namespace rehyat

#ifdef REHYAT_CUDA
#include <cuda_runtime.h>

namespace rehyat {
namespace {
TEST(CheckMacros, NameStatementFileAndLine) {
  try {
    CUDA_CHECK(cudaSetDevice(-1));
    FAIL() << "expected an error";
  } catch (const DeviceError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("cudaSetDevice(-1)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("test_tensor.cpp:"), std::string::npos) << msg;
  }
}
}  // namespace
}  // namespace rehyat
#endif
