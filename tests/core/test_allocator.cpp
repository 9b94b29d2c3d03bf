// Allocator byte counters, CUDA block caching, and guard-region detection.
#include <gtest/gtest.h>

#include "core/allocator.h"
#include "core/tensor.h"

namespace rehyat {
namespace {

void counters_track(Device d) {
  MemoryStats before = memory_stats(d);
  reset_peak_memory(d);
  {
    Tensor a = Tensor::empty({1000}, DType::F32, d);
    Tensor b = Tensor::empty({500}, DType::BF16, d);
    MemoryStats during = memory_stats(d);
    EXPECT_EQ(during.current_bytes, before.current_bytes + 4000 + 1000);
    EXPECT_EQ(during.peak_bytes, during.current_bytes);
    EXPECT_EQ(during.allocations, before.allocations + 2);
  }
  MemoryStats after = memory_stats(d);
  EXPECT_EQ(after.current_bytes, before.current_bytes);
  EXPECT_EQ(after.peak_bytes, before.current_bytes + 5000);
}

TEST(Allocator, CpuCountersTrackLiveBytes) { counters_track(Device::cpu()); }

TEST(Allocator, CudaCountersTrackLiveBytes) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  counters_track(Device::cuda(0));
}

TEST(Allocator, CudaReusesCachedBlocks) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  Device d = Device::cuda(0);
  { Tensor warm = Tensor::empty({1 << 20}, DType::F32, d); }
  size_t reserved = memory_stats(d).reserved_bytes;
  for (int i = 0; i < 10; ++i) Tensor t = Tensor::empty({1 << 20}, DType::F32, d);
  EXPECT_EQ(memory_stats(d).reserved_bytes, reserved);
  empty_cache(d);
  EXPECT_LT(memory_stats(d).reserved_bytes, reserved);
}

void guard_catches_overrun(Device d) {
  set_debug_guards(true);
  ASSERT_EQ(check_guards(), 0u);
  {
    Tensor t = Tensor::zeros({10}, DType::F32, d);
    EXPECT_EQ(check_guards(), 0u);
    // Write one element past the end through a raw view that the bounds do not cover.
    Tensor past = t.as_strided({1}, {1}, 10);
    past.fill_(1.0);
    EXPECT_GT(check_guards(), 0u);
  }
  EXPECT_GT(check_guards(), 0u);  // the violation is reported again on free
  set_debug_guards(false);
}

TEST(Allocator, CpuGuardsCatchOverruns) { guard_catches_overrun(Device::cpu()); }

TEST(Allocator, CudaGuardsCatchOverruns) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  guard_catches_overrun(Device::cuda(0));
}

TEST(Allocator, PoisonsNewBlocksInDebugMode) {
  set_debug_guards(true);
  Tensor t = Tensor::empty({8}, DType::F32);
  for (double v : t.to_vector()) EXPECT_TRUE(std::isnan(v));
  set_debug_guards(false);
  EXPECT_EQ(check_guards(), 0u);
}

}  // namespace
}  // namespace rehyat
