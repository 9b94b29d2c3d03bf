// `rehyat bench ops`: measured ceilings of the GPU and the memory-bound and GEMM ops at
// Wan2.1-1.3B shapes (32,760 tokens x 1536 channels, FFN 8960), all bf16.
//
// Ceilings, measured in the same run: device-to-device copy bandwidth (cudaMemcpyAsync of
// 1 GiB, bytes read + bytes written) and a bf16 8192^3 cublasGemmEx. Memory-bound ops
// report GB/s and the fraction of the copy bandwidth; bytes are each input read once and
// each output written once (x, y, the f32 statistics, weight and bias; for backwards
// also dy, dx, dweight, dbias) -- the minimum traffic, so re-reads show up as a lower
// fraction. The FFN GEMM (x[rows, cols] @ W^T, W [ffn, cols] passed as the transposed
// view W.transpose(0, 1)) runs through kernels::matmul and through a plain cublasGemmEx
// on the same buffers, reported as TFLOP/s = 2 m n k / t and the fraction of the
// 8192^3 rate.
//
// Timing: CUDA events around each call on the device's compute stream, warm-up runs
// first, the median of --iters runs. Inputs rotate among enough buffer sets that the
// sets together exceed three times the L2 cache, so every run reads from device memory.
// Inputs are random normal (never zeros).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/allocator.h"
#include "core/check.h"
#include "core/device.h"
#include "core/tensor.h"
#include "tools/commands.h"

#ifdef REHYAT_CUDA
#include "core/cuda_context.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"
#include "core/ops/norm.h"
#include "core/ops/softmax.h"
#endif

namespace rehyat::tools {

namespace {

struct BenchOptions {
  std::string json_path;
  int64_t rows = 32760;  // Wan2.1-1.3B tokens at 21 x 30 x 52 latents
  int64_t cols = 1536;   // model width
  int64_t ffn = 8960;    // FFN hidden width
  int iters = 50;
  int warmup = 10;
};

#ifdef REHYAT_CUDA

// One row of the report.
struct Result {
  std::string name, shape;
  double ms = 0;
  double rate = 0;      // GB/s or TFLOP/s
  std::string unit;     // "GB/s" or "TFLOP/s"
  double fraction = 0;  // of the matching ceiling
  double amount = 0;    // bytes or flop per run
};

// Median milliseconds of `iters` runs of run(i), after `warmup` untimed runs; i counts
// every call so the caller can rotate buffer sets.
double median_ms(cudaStream_t stream, int warmup, int iters, const std::function<void(int)>& run) {
  cudaEvent_t start = nullptr, stop = nullptr;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i) run(i);
  std::vector<float> times(size_t(iters), 0.f);
  for (int i = 0; i < iters; ++i) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    run(warmup + i);
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    CUDA_CHECK(cudaEventElapsedTime(&times[size_t(i)], start, stop));
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::nth_element(times.begin(), times.begin() + iters / 2, times.end());
  return double(times[size_t(iters / 2)]);
}

Tensor random_bf16(const Shape& shape, uint64_t seed, Device device) {
  return Tensor::randn(shape, seed, 0, DType::F32, device).to(DType::BF16);
}

std::string utc_now() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

// ||a - b|| / ||b|| over the first `rows` rows of two [m, n] tensors.
double relative_difference(const Tensor& a, const Tensor& b, int64_t rows) {
  const std::vector<double> va = a.slice(0, 0, rows).to_vector(), vb = b.slice(0, 0, rows).to_vector();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    diff += (va[i] - vb[i]) * (va[i] - vb[i]);
    norm += vb[i] * vb[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-300));
}

class OpsBench {
 public:
  explicit OpsBench(const BenchOptions& options)
      : options_(options), device_(Device::cuda(0)), ctx_(rehyat::cuda::context(device_)) {}

  void run() {
    reset_peak_memory(device_);
    measure_copy();
    measure_memory_ops();
    measure_gemm_ceiling();
    measure_ffn_gemm();
    report();
  }

 private:
  // Buffer sets to rotate through when one set holds `set_bytes`: together > 3x L2.
  int rotation_sets(double set_bytes) const {
    const double l2 = double(ctx_.props.l2CacheSize);
    return int(std::clamp(std::ceil(3.0 * l2 / set_bytes), 2.0, 64.0));
  }

  double time(const std::function<void(int)>& run) const {
    return median_ms(ctx_.stream, options_.warmup, options_.iters, run);
  }

  void measure_copy() {
    constexpr size_t kBytes = size_t(1) << 30;
    const Tensor src = Tensor::randn({int64_t(kBytes / 2)}, 1, 0, DType::BF16, device_);
    Tensor dst = Tensor::empty({int64_t(kBytes / 2)}, DType::BF16, device_);
    const double ms = time([&](int) {
      CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), kBytes, cudaMemcpyDeviceToDevice, ctx_.stream));
    });
    copy_gbs_ = 2.0 * double(kBytes) / (ms * 1e6);
    results_.push_back({"copy (ceiling)", "1 GiB", ms, copy_gbs_, "GB/s", 1.0, 2.0 * double(kBytes)});
  }

  void add_memory_result(const std::string& name, double bytes, const std::function<void(int)>& run) {
    const double ms = time(run);
    const double gbs = bytes / (ms * 1e6);
    results_.push_back({name, fmt::format("{}x{} bf16", options_.rows, options_.cols), ms, gbs, "GB/s",
                        gbs / copy_gbs_, bytes});
  }

  void measure_memory_ops() {
    using namespace rehyat::kernels;
    const int64_t rows = options_.rows, cols = options_.cols;
    const double elems = double(rows) * double(cols);
    const double act = 2.0 * elems;              // one bf16 [rows, cols] tensor
    const double stat = 4.0 * double(rows);      // one f32 [rows] statistic
    const double param = 2.0 * double(cols);     // one bf16 [cols] parameter
    const int sets = rotation_sets(4.0 * act);   // x, dy, y, dx per set
    std::vector<Tensor> x, dy, y, dx, mean, rstd;
    for (int s = 0; s < sets; ++s) {
      x.push_back(random_bf16({rows, cols}, 100 + uint64_t(s), device_));
      dy.push_back(random_bf16({rows, cols}, 200 + uint64_t(s), device_));
      y.push_back(Tensor::empty({rows, cols}, DType::BF16, device_));
      dx.push_back(Tensor::empty({rows, cols}, DType::BF16, device_));
      mean.push_back(Tensor::empty({rows}, DType::F32, device_));
      rstd.push_back(Tensor::empty({rows}, DType::F32, device_));
    }
    const Tensor weight = random_bf16({cols}, 300, device_), bias = random_bf16({cols}, 301, device_);
    Tensor dweight = Tensor::empty({cols}, DType::BF16, device_), dbias = Tensor::empty({cols}, DType::BF16, device_);
    constexpr double kEps = 1e-6;

    add_memory_result("layernorm fwd (no affine)", 2 * act + 2 * stat, [&](int i) {
      const int s = i % sets;
      layernorm_forward(y[s], mean[s], rstd[s], x[s], nullptr, nullptr, kEps);
    });
    add_memory_result("layernorm fwd (affine)", 2 * act + 2 * stat + 2 * param, [&](int i) {
      const int s = i % sets;
      layernorm_forward(y[s], mean[s], rstd[s], x[s], &weight, &bias, kEps);
    });
    add_memory_result("rmsnorm fwd (weight)", 2 * act + stat + param, [&](int i) {
      const int s = i % sets;
      rmsnorm_forward(y[s], rstd[s], x[s], &weight, kEps);
    });
    add_memory_result("softmax fwd", 2 * act, [&](int i) {
      const int s = i % sets;
      softmax_forward(y[s], x[s]);
    });
    add_memory_result("gelu fwd", 2 * act, [&](int i) {
      const int s = i % sets;
      unary(UnaryOp::Gelu, y[s], x[s]);
    });
    // Backwards read the statistics the forwards above left in each set.
    add_memory_result("layernorm bwd (affine)", 3 * act + 2 * stat + 3 * param, [&](int i) {
      const int s = i % sets;
      layernorm_backward(dx[s], &dweight, &dbias, dy[s], x[s], mean[s], rstd[s], &weight);
    });
    add_memory_result("rmsnorm bwd (weight)", 3 * act + stat + 2 * param, [&](int i) {
      const int s = i % sets;
      rmsnorm_backward(dx[s], &dweight, dy[s], x[s], rstd[s], &weight);
    });
    add_memory_result("softmax bwd", 3 * act, [&](int i) {
      const int s = i % sets;
      softmax_backward(dx[s], dy[s], x[s]);  // x stands in for the forward output y
    });
  }

  // c = a @ b^T for row-major a [m, k], b [n, k], c [m, n] through cuBLAS's plain API.
  void cublas_gemm_nt(Tensor& c, const Tensor& a, const Tensor& b) const {
    const int m = int(a.size(0)), k = int(a.size(1)), n = int(b.size(0));
    const float alpha = 1.f, beta = 0.f;
    CUBLAS_CHECK(cublasGemmEx(ctx_.cublas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, b.data_ptr(), CUDA_R_16BF, k,
                              a.data_ptr(), CUDA_R_16BF, k, &beta, c.data_ptr(), CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
  }

  void measure_gemm_ceiling() {
    constexpr int64_t kSize = 8192;
    const Tensor a = random_bf16({kSize, kSize}, 400, device_), b = random_bf16({kSize, kSize}, 401, device_);
    Tensor c = Tensor::empty({kSize, kSize}, DType::BF16, device_);
    const double flop = 2.0 * double(kSize) * double(kSize) * double(kSize);
    const double ms = time([&](int) { cublas_gemm_nt(c, a, b); });
    gemm_tflops_ = flop / (ms * 1e9);
    results_.push_back({"cublasGemmEx (ceiling)", "8192^3 bf16", ms, gemm_tflops_, "TFLOP/s", 1.0, flop});
  }

  void measure_ffn_gemm() {
    const int64_t m = options_.rows, k = options_.cols, n = options_.ffn;
    const double flop = 2.0 * double(m) * double(n) * double(k);
    const int sets = rotation_sets(2.0 * double(m * k + n * k + m * n));
    std::vector<Tensor> x, w, c;
    for (int s = 0; s < sets; ++s) {
      x.push_back(random_bf16({m, k}, 500 + uint64_t(s), device_));
      w.push_back(random_bf16({n, k}, 600 + uint64_t(s), device_));
      c.push_back(Tensor::empty({m, n}, DType::BF16, device_));
    }
    const std::string shape = fmt::format("{}x{} @ ({}x{})^T bf16", m, k, n, k);
    const double ours_ms = time([&](int i) {
      const int s = i % sets;
      kernels::matmul(c[s], x[s], w[s].transpose(0, 1));
    });
    results_.push_back({"matmul (kernels::matmul)", shape, ours_ms, flop / (ours_ms * 1e9), "TFLOP/s",
                        flop / (ours_ms * 1e9) / gemm_tflops_, flop});
    const double peer_ms = time([&](int i) {
      const int s = i % sets;
      cublas_gemm_nt(c[s], x[s], w[s]);
    });
    results_.push_back({"matmul (cublasGemmEx)", shape, peer_ms, flop / (peer_ms * 1e9), "TFLOP/s",
                        flop / (peer_ms * 1e9) / gemm_tflops_, flop});

    // Same product both ways on set 0: the two paths must agree (bf16 rounding only).
    Tensor peer = Tensor::empty({m, n}, DType::BF16, device_);
    kernels::matmul(c[0], x[0], w[0].transpose(0, 1));
    cublas_gemm_nt(peer, x[0], w[0]);
    rehyat::cuda::synchronize(device_);
    gemm_agreement_ = relative_difference(c[0], peer, std::min<int64_t>(m, 16));
  }

  void report() const {
    const MemoryStats stats = memory_stats(device_);
    fmt::print("rehyat bench ops on {} ({} SMs, L2 {} MB); median of {} runs after {} warm-up\n", ctx_.props.name,
               ctx_.props.multiProcessorCount, ctx_.props.l2CacheSize >> 20, options_.iters, options_.warmup);
    fmt::print("{:<28} {:<30} {:>9} {:>14} {:>11}\n", "op", "shape", "ms", "rate", "% ceiling");
    for (const Result& r : results_)
      fmt::print("{:<28} {:<30} {:>9.4f} {:>9.1f} {:<7} {:>8.1f}%\n", r.name, r.shape, r.ms, r.rate, r.unit,
                 100.0 * r.fraction);
    fmt::print("bytes counted: inputs read once + outputs written once (f32 mean/rstd, bf16 params)\n");
    fmt::print("kernels::matmul vs cublasGemmEx, first rows: relative difference {:.2e}\n", gemm_agreement_);
    fmt::print("allocator peak: {:.1f} MiB (reserved {:.1f} MiB)\n", double(stats.peak_bytes) / (1 << 20),
               double(stats.reserved_bytes) / (1 << 20));
    if (options_.json_path.empty()) return;

    nlohmann::json out;
    out["device"] = ctx_.props.name;
    out["date"] = utc_now();
    out["shape"] = {{"rows", options_.rows}, {"cols", options_.cols}, {"ffn", options_.ffn}};
    out["iters"] = options_.iters;
    out["warmup"] = options_.warmup;
    out["copy_gb_per_s"] = copy_gbs_;
    out["gemm_ceiling_tflop_per_s"] = gemm_tflops_;
    out["matmul_relative_difference"] = gemm_agreement_;
    out["allocator_peak_bytes"] = stats.peak_bytes;
    out["bytes_counted"] = "inputs read once + outputs written once";
    for (const Result& r : results_) {
      const bool gemm = r.unit == "TFLOP/s";
      out["results"].push_back({{"op", r.name},
                                {"shape", r.shape},
                                {"ms", r.ms},
                                {gemm ? "tflop_per_s" : "gb_per_s", r.rate},
                                {gemm ? "flop" : "bytes", r.amount},
                                {"fraction_of_ceiling", r.fraction}});
    }
    std::ofstream file(options_.json_path);
    REHYAT_CHECK(file.good(), "bench ops: cannot write {}", options_.json_path);
    file << out.dump(2) << "\n";
    REHYAT_CHECK(file.good(), "bench ops: writing {} failed", options_.json_path);
    fmt::print("wrote {}\n", options_.json_path);
  }

  BenchOptions options_;
  Device device_;
  const rehyat::cuda::DeviceContext& ctx_;
  std::vector<Result> results_;
  double copy_gbs_ = 0, gemm_tflops_ = 0, gemm_agreement_ = 0;
};

#endif  // REHYAT_CUDA

void run_bench_ops(const BenchOptions& options) {
  REHYAT_CHECK(options.rows > 0 && options.cols > 0 && options.ffn > 0 && options.iters > 0 && options.warmup >= 0,
               "bench ops: --rows, --cols, --ffn and --iters must be positive");
#ifdef REHYAT_CUDA
  REHYAT_CHECK(cuda_available(), "bench ops needs a CUDA GPU, and none was found");
  OpsBench(options).run();
#else
  REHYAT_FAIL("bench ops needs a CUDA GPU, but rehyat was built without CUDA");
#endif
}

}  // namespace

void add_bench_ops_command(CLI::App& bench) {
  CLI::App* ops = bench.add_subcommand("ops", "Copy / GEMM ceilings, norms, softmax, GELU and the FFN matmul");
  auto options = std::make_shared<BenchOptions>();
  ops->add_option("--json", options->json_path, "Also write the results as JSON to this file");
  ops->add_option("--rows", options->rows, "Rows (tokens) of the activations")->capture_default_str();
  ops->add_option("--cols", options->cols, "Columns (channels) of the activations")->capture_default_str();
  ops->add_option("--ffn", options->ffn, "FFN hidden width (GEMM n)")->capture_default_str();
  ops->add_option("--iters", options->iters, "Timed runs per op (the median is reported)")->capture_default_str();
  ops->add_option("--warmup", options->warmup, "Untimed runs before timing")->capture_default_str();
  ops->callback([options] { run_bench_ops(*options); });
}

}  // namespace rehyat::tools
