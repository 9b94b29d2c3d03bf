// The benchmark measurement of sweep/measure.h on the CPU: warm-up and timed runs are
// counted, the peak is what a run allocates beyond what it returns, and failures come
// back as results ("OOM" for out-of-memory errors of the allocator or the host, "failed:
// <what>" for anything else) instead of exceptions, whether in a warm-up or a timed run.
#include <gtest/gtest.h>

#include <new>
#include <stdexcept>

#include "core/allocator.h"
#include "core/check.h"
#include "core/measure.h"

namespace rehyat {
namespace {

TEST(Measure, CountsRunsAndTheWorkingPeakBeyondTheOutput) {
  const Device cpu = Device::cpu();
  int calls = 0;
  const Measurement m = measure_run(cpu, /*warmup=*/2, /*iters=*/3, [&] {
    ++calls;
    const Tensor scratch = Tensor::zeros({256, 1024});  // 1 MiB, freed before the return
    return Tensor::zeros({1024});                       // 4 KiB kept
  });
  ASSERT_TRUE(m.ok) << m.failure;
  EXPECT_EQ(calls, 5);
  EXPECT_EQ(m.output_bytes, 4096u);
  EXPECT_GE(m.working_peak, 256u * 1024 * 4);
  EXPECT_LT(m.working_peak, 256u * 1024 * 4 + 4096);  // the output is not counted
  EXPECT_GE(m.ms, 0.0);
  EXPECT_TRUE(m.failure.empty());
}

TEST(Measure, FailuresAreResults) {
  const Device cpu = Device::cpu();
  auto failing = [&](auto error, int warmup) {
    return measure_run(cpu, warmup, 2, [&]() -> Tensor { throw error; });
  };
  Measurement m = failing(Error("out of memory on cuda:0: cannot allocate 8 bytes (0 in use)"), 0);
  EXPECT_FALSE(m.ok);
  EXPECT_EQ(m.failure, "OOM");
  m = failing(std::bad_alloc(), 1);
  EXPECT_FALSE(m.ok);
  EXPECT_EQ(m.failure, "OOM");
  m = failing(std::runtime_error("kernel not supported"), 1);
  EXPECT_FALSE(m.ok);
  EXPECT_EQ(m.failure, "failed: kernel not supported");

  // A failure in a later timed run, after successful ones, is still a failure.
  int calls = 0;
  m = measure_run(cpu, 0, 3, [&] {
    if (++calls == 3) throw std::runtime_error("third");
    return Tensor::zeros({4});
  });
  EXPECT_FALSE(m.ok);
  EXPECT_EQ(m.failure, "failed: third");
}

}  // namespace
}  // namespace rehyat
