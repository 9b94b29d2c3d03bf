// Timing and peak memory of one benchmarked forward (the compute sweep, sweep/compute_sweep.h;
// `rehyat bench memory`, tools/bench_memory.cpp; the eval stage, train/pipeline.cpp): the
// run is repeated with the device synchronized around each repetition; the result is the median wall time and the
// allocator's peak (core/allocator.h) beyond what was allocated before the run, less the
// tensor the run returns. A failure (an out-of-memory error above all) is caught and
// reported in the result, with the device's cached blocks given back, so that a
// benchmark over growing sizes can go on past the first size that does not fit.
#pragma once

#include <cstddef>
#include <exception>
#include <functional>
#include <string>

#include "core/device.h"
#include "core/tensor.h"

namespace rehyat {

struct Measurement {
  bool ok = false;
  std::string failure;      // "OOM" or "failed: <the error>" when !ok
  double ms = 0;            // median wall time of the timed runs
  size_t working_peak = 0;  // max over the timed runs of: peak during the run - bytes before it - output_bytes
  size_t output_bytes = 0;  // the returned tensor
};

// "OOM" when the error says the device ran out of memory (or is a host std::bad_alloc),
// else "failed: <what>".
std::string describe_failure(const std::exception& error);

// Runs fn `warmup` times untimed, then `iters` (>= 1) timed runs. Any exception from fn
// ends the measurement: ok = false, failure set, empty_cache(device) called.
Measurement measure_run(Device device, int warmup, int iters, const std::function<Tensor()>& fn);

}  // namespace rehyat
