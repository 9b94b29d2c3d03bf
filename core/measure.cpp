// Timing and peak memory of one benchmarked forward (see measure.h).
#include "core/measure.h"

#include <algorithm>
#include <chrono>
#include <new>
#include <vector>

#include "core/allocator.h"

namespace rehyat {

std::string describe_failure(const std::exception& error) {
  const std::string what = error.what();
  const bool host = dynamic_cast<const std::bad_alloc*>(&error) != nullptr;
  return host || what.find("out of memory") != std::string::npos ? "OOM" : "failed: " + what;
}

Measurement measure_run(Device device, int warmup, int iters, const std::function<Tensor()>& fn) {
  Measurement run;
  try {
    for (int i = 0; i < warmup; ++i) fn();
    std::vector<double> times;
    for (int i = 0; i < std::max(iters, 1); ++i) {
      synchronize(device);
      const size_t before = memory_stats(device).current_bytes;
      reset_peak_memory(device);
      const auto start = std::chrono::steady_clock::now();
      const Tensor output = fn();
      synchronize(device);
      times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
      const size_t peak = memory_stats(device).peak_bytes;
      run.output_bytes = output.nbytes();
      const size_t kept = before + run.output_bytes;  // a returned view of older memory counts 0
      run.working_peak = std::max(run.working_peak, peak > kept ? peak - kept : 0);
    }
    std::sort(times.begin(), times.end());
    run.ms = times[times.size() / 2];
    run.ok = true;
  } catch (const std::exception& e) {
    run.failure = describe_failure(e);
    empty_cache(device);
  }
  return run;
}

}  // namespace rehyat
