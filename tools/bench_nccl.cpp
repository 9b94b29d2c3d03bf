// `rehyat bench nccl`: the all-reduce bandwidth table of issue 7 -- message sizes from
// --min-mb to --max-mb MiB (default 1 MiB .. 1 GiB, doubling), in place, sum, f32 by default.
// Runs as one rank per GPU: `rehyat launch --gpus 2 -- bench nccl` (or under mpirun / srun).
//
// Timing: CUDA events on the compute stream between back-to-back Communicator::all_reduce
// calls (so each time includes the compute -> communication stream hand-off that training
// pays), warm-up runs first, then the median of --iters runs on each rank; the table shows
// the slowest rank's median (ranks are aligned by a barrier before each size). Reported as
//   algbw = bytes / time,   busbw = algbw * 2 (n - 1) / n
// (NCCL's convention: busbw is the per-link traffic of a ring all-reduce, comparable to the
// NVLink / network peak independently of the rank count n). Rank 0 prints the table and
// writes --json; the buffer is zeros (values do not change NCCL's speed).
#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/device.h"
#include "core/tensor.h"
#include "tools/dist_commands.h"
#include "train/dist_comm.h"
#include "train/dist_env.h"

#ifdef REHYAT_NCCL
#include "core/cuda_context.h"
#endif

namespace rehyat::tools {

namespace {

struct BenchNcclOptions {
  double min_mb = 1;
  double max_mb = 1024;
  std::string dtype = "f32";
  int iters = 20;
  int warmup = 5;
  std::string json_path;
};

#ifdef REHYAT_NCCL

struct Row {
  size_t bytes = 0;
  double ms = 0;  // slowest rank's median
  double algbw = 0, busbw = 0;  // GB/s (1e9 bytes)
};

// Median milliseconds of `iters` all_reduces of `t` on this rank, after `warmup`. The runs
// are queued back to back (events between them, one wait at the end) so no host gap
// between two runs is timed.
double median_all_reduce_ms(dist::Communicator& comm, Tensor& t, int warmup, int iters) {
  const cudaStream_t stream = cuda::stream(comm.device());
  std::vector<cudaEvent_t> events(size_t(iters) + 1, nullptr);
  for (cudaEvent_t& e : events) CUDA_CHECK(cudaEventCreate(&e));
  for (int i = 0; i < warmup; ++i) comm.all_reduce(t);
  CUDA_CHECK(cudaEventRecord(events[0], stream));
  for (int i = 0; i < iters; ++i) {
    comm.all_reduce(t);
    CUDA_CHECK(cudaEventRecord(events[size_t(i) + 1], stream));
  }
  comm.synchronize();  // a host wait under the watchdog: a dead peer fails here, not in cudaEventSynchronize
  CUDA_CHECK(cudaEventSynchronize(events.back()));
  std::vector<float> times(size_t(iters), 0.f);
  for (size_t i = 0; i < times.size(); ++i) CUDA_CHECK(cudaEventElapsedTime(&times[i], events[i], events[i + 1]));
  for (cudaEvent_t e : events) CUDA_CHECK(cudaEventDestroy(e));
  std::sort(times.begin(), times.end());
  return double(times[times.size() / 2]);
}

void run_bench_nccl(const BenchNcclOptions& o) {
  REHYAT_CHECK(o.min_mb > 0 && o.max_mb >= o.min_mb, "bench nccl: need 0 < --min-mb <= --max-mb");
  REHYAT_CHECK(o.iters >= 1 && o.warmup >= 0, "bench nccl: --iters must be >= 1 and --warmup >= 0");
  const DType dtype = parse_dtype(o.dtype, "--dtype");
  REHYAT_CHECK(is_floating(dtype), "bench nccl: --dtype must be a floating type, got {}", o.dtype);
  const dist::DistEnv env = dist::detect_dist_env();
  REHYAT_CHECK(env.world_size >= 2,
               "bench nccl measures NCCL between ranks, but this process is rank 0 of 1: run it as `rehyat launch "
               "--gpus 2 -- bench nccl` (or under mpirun / srun)");
  std::unique_ptr<dist::Communicator> comm = dist::Communicator::create(env, dist::local_device(env));
  const Device gpu = comm->device();
  const int world = comm->world_size();
  const size_t element = dtype_size(dtype);
  const size_t max_bytes = size_t(o.max_mb * (1 << 20)) / element * element;
  Tensor buffer = Tensor::zeros({int64_t(max_bytes / element)}, dtype, gpu);  // [max elements]

  std::vector<Row> rows;
  for (double mb = o.min_mb; mb <= o.max_mb * (1 + 1e-9); mb *= 2) {
    const int64_t count = std::max<int64_t>(1, int64_t(mb * (1 << 20)) / int64_t(element));
    Tensor message = buffer.slice(0, 0, count);
    comm->synchronize();
    rehyat::synchronize(gpu);
    comm->barrier();
    const double ms = median_all_reduce_ms(*comm, message, o.warmup, o.iters);
    double slowest = 0;
    for (const std::string& t : comm->control().all_gather("bench nccl time", fmt::format("{:.9g}", ms),
                                                         comm->timeout_seconds()))
      slowest = std::max(slowest, std::stod(t));
    Row row;
    row.bytes = size_t(count) * element;
    row.ms = slowest;
    row.algbw = double(row.bytes) / (slowest * 1e-3) / 1e9;
    row.busbw = row.algbw * 2.0 * (world - 1) / world;
    rows.push_back(row);
  }
  if (comm->rank() != 0) return;

  const std::string name = device_name(gpu);
  fmt::print("rehyat bench nccl: all_reduce (sum, in place, {}) over {} ranks, {} per rank; median of {} runs after "
             "{} warm-up, slowest rank\n",
             dtype_name(dtype), world, name, o.iters, o.warmup);
  fmt::print("{:>12} {:>12} {:>12} {:>12}\n", "size", "ms", "algbw GB/s", "busbw GB/s");
  for (const Row& r : rows) {
    const std::string size = r.bytes >= (size_t(1) << 30) ? fmt::format("{:g} GiB", double(r.bytes) / (1 << 30))
                                                          : fmt::format("{:g} MiB", double(r.bytes) / (1 << 20));
    fmt::print("{:>12} {:>12.3f} {:>12.1f} {:>12.1f}\n", size, r.ms, r.algbw, r.busbw);
  }
  if (o.json_path.empty()) return;
  nlohmann::json out;
  out["benchmark"] = "nccl all_reduce";
  out["device"] = name;
  out["world_size"] = world;
  out["dtype"] = dtype_name(dtype);
  out["iters"] = o.iters;
  out["warmup"] = o.warmup;
  out["time"] = "median of iters per rank, slowest rank";
  out["busbw_convention"] = "algbw * 2 (n - 1) / n, algbw = bytes / time, GB = 1e9 bytes";
  out["rows"] = nlohmann::json::array();
  for (const Row& r : rows)
    out["rows"].push_back({{"bytes", r.bytes}, {"ms", r.ms}, {"algbw_gb_per_s", r.algbw}, {"busbw_gb_per_s", r.busbw}});
  std::ofstream file(o.json_path);
  REHYAT_CHECK(file.good(), "bench nccl: cannot write {}", o.json_path);
  file << out.dump(2) << "\n";
  REHYAT_CHECK(file.good(), "bench nccl: writing {} failed", o.json_path);
  fmt::print("wrote {}\n", o.json_path);
}

#else

void run_bench_nccl(const BenchNcclOptions&) {
  REHYAT_FAIL("bench nccl needs a rehyat built with CUDA and NCCL (this one was built without NCCL)");
}

#endif  // REHYAT_NCCL

}  // namespace

void add_bench_nccl_command(CLI::App& bench) {
  auto o = std::make_shared<BenchNcclOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "nccl", "NCCL all-reduce bandwidth over message sizes (run as: rehyat launch --gpus 2 -- bench nccl)");
  cmd->add_option("--min-mb", o->min_mb, "Smallest message in MiB")->capture_default_str();
  cmd->add_option("--max-mb", o->max_mb, "Largest message in MiB (sizes double from --min-mb)")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "Element type: f32, bf16, f16, f64")->capture_default_str();
  cmd->add_option("--iters", o->iters, "Timed runs per size (the median is reported)")->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "Untimed runs before timing")->capture_default_str();
  cmd->add_option("--json", o->json_path, "Also write the table as JSON to this file");
  cmd->callback([o] { run_bench_nccl(*o); });
}

}  // namespace rehyat::tools
