// `rehyat bench attention`: the softmax attention kernels at the Wan2.1-1.3B self-attention
// shape (12 heads x 128, 21 x 30 x 52 = 32,760 tokens, bf16, batch 1, non-causal), full or
// chunked (--chunk-frames Tc --overlap-frames To).
//
// FLOPs: forward 4 * pairs * d * H (two matrix products of 2 m n k each), where pairs is
// Nq * Nk for full attention and only the (query, key) pairs a query's key range holds
// when chunked; forward + backward uses the usual convention 3.5x the forward's FLOPs.
// The ceiling is a bf16 8192^3 GEMM through kernels::matmul (cuBLASLt) in the same run.
// --kind rehyat times the hybrid attention op (attention/hybrid_attention.h: chunk softmax
// + linear part, features given, Dp = --feature-dim) through autograd (forward with no
// grad recording; forward+backward = forward recorded + backward); --phi-mlp adds a
// per-head feature MLP like the peer's (x @ W1 [d, Dp], GELU, @ W2 [Dp, Dp] in bf16,
// softplus, square half) on q and k, so the time compares with the peer's hybrid().
// FLOPs reported for rehyat count the softmax part only (the linear part is extra work).
//
// Timing: CUDA events on the device's compute stream, warm-up runs first, the median of
// --iters runs; inputs are random normal (never zeros). The raw kernels are timed (no
// autograd bookkeeping): forward = softmax_attention_forward, forward + backward = that
// plus softmax_attention_backward.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "attention/feature_map.h"
#include "attention/hybrid_attention.h"
#include "attention/softmax_attention.h"
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/check.h"
#include "core/device.h"
#include "core/tensor.h"
#include "tools/commands.h"

#ifdef REHYAT_CUDA
#include "core/cuda_context.h"
#include "core/ops/matmul.h"
#endif

namespace rehyat::tools {

namespace {

struct AttentionBenchOptions {
  std::string json_path;
  int64_t heads = 12, head_dim = 128, frames = 21, height = 30, width = 52;
  int64_t chunk_frames = 0, overlap_frames = 0;
  std::string dtype = "bf16";
  int iters = 20, warmup = 3;
  std::string kind = "softmax";  // softmax | rehyat
  bool causal = false, phi_mlp = false;
  int64_t feature_dim = 256;
};

#ifdef REHYAT_CUDA

double median_ms(cudaStream_t stream, int warmup, int iters, const std::function<void()>& run) {
  cudaEvent_t start = nullptr, stop = nullptr;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i) run();
  std::vector<float> times(size_t(iters), 0.f);
  for (int i = 0; i < iters; ++i) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    run();
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    CUDA_CHECK(cudaEventElapsedTime(&times[size_t(i)], start, stop));
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::nth_element(times.begin(), times.begin() + iters / 2, times.end());
  return double(times[size_t(iters / 2)]);
}

void run_attention_bench(const AttentionBenchOptions& opt) {
  const Device gpu = Device::cuda(0);
  const auto& ctx = rehyat::cuda::context(gpu);
  const DType dtype = parse_dtype(opt.dtype, "--dtype");
  const int64_t n = opt.frames * opt.height * opt.width, h = opt.heads, d = opt.head_dim;
  attention::KeyRange keys;
  if (opt.chunk_frames > 0) {
    keys.frame_tokens = opt.height * opt.width;
    keys.chunk_frames = opt.chunk_frames;
    keys.overlap_frames = opt.overlap_frames;
  }
  const double pairs = double(attention::scored_pairs(keys, n, n));
  const double fwd_flop = 4.0 * pairs * double(d) * double(h);
  const double scale = 1.0 / std::sqrt(double(d));

  // bf16 GEMM ceiling, same run.
  const int64_t g = 8192;
  Tensor ga = Tensor::randn({g, g}, 1, 0, DType::F32, gpu).to(DType::BF16);
  Tensor gb = Tensor::randn({g, g}, 2, 0, DType::F32, gpu).to(DType::BF16);
  Tensor gc = Tensor::empty({g, g}, DType::BF16, gpu);
  const double gemm_ms = median_ms(ctx.stream, 3, 10, [&] { kernels::matmul(gc, ga, gb); });
  const double gemm_tflops = 2.0 * double(g) * g * g / (gemm_ms * 1e9);
  ga = gb = gc = Tensor();

  Tensor q = Tensor::randn({1, n, h, d}, 11, 0, DType::F32, gpu).to(dtype);
  Tensor k = Tensor::randn({1, n, h, d}, 12, 0, DType::F32, gpu).to(dtype);
  Tensor v = Tensor::randn({1, n, h, d}, 13, 0, DType::F32, gpu).to(dtype);
  Tensor d_o = Tensor::randn({1, n, h, d}, 14, 0, DType::F32, gpu).to(dtype);
  if (opt.kind == "rehyat") {
    attention::HybridOptions ho;
    ho.kind = attention::AttentionKind::Rehyat;
    ho.frame_tokens = opt.height * opt.width;
    ho.chunk_frames = opt.chunk_frames > 0 ? opt.chunk_frames : 3;
    ho.overlap_frames = opt.overlap_frames;
    ho.causal = opt.causal;
    const int64_t dp = opt.feature_dim;
    Tensor pq = Tensor::rand({1, n, h, dp}, 15, 0, DType::F32, gpu, 0.0, 0.1);
    Tensor pk = Tensor::rand({1, n, h, dp}, 16, 0, DType::F32, gpu, 0.0, 0.1);
    // phi_q, phi_k: the model's feature maps (f32 parameters, hidden = Dp, P = 2, GELU),
    // run on the bf16 q and k as in a bf16 model: bf16 products, fused maps, f32 features.
    attention::FeatureMapOptions fo;
    fo.heads = h;
    fo.head_dim = d;
    fo.hidden_dim = dp;
    fo.feature_dim = dp;
    const layers::ParamFactory params{gpu, DType::F32, 19};
    const attention::FeatureMap phi_q(params, "phi_q", fo, "phi"), phi_k(params, "phi_k", fo, "phi");
    for (Tensor* t : {&q, &k, &v, &pq, &pk}) t->set_requires_grad(true);
    auto op = [&] {
      return opt.phi_mlp ? attention::hybrid_attention(q, k, v, phi_q.forward(q), phi_k.forward(k), ho)
                         : attention::hybrid_attention(q, k, v, pq, pk, ho);
    };
    attention::KeyRange chunk;
    chunk.frame_tokens = ho.frame_tokens;
    chunk.chunk_frames = ho.chunk_frames;
    chunk.overlap_frames = ho.overlap_frames;
    const double soft_flop = 4.0 * double(attention::scored_pairs(chunk, n, n)) * double(d) * double(h);
    const double fwd_ms = median_ms(ctx.stream, opt.warmup, opt.iters, [&] {
      autograd::NoGradGuard no_grad;
      op();
    });
    const double fwdbwd_ms = median_ms(ctx.stream, opt.warmup, opt.iters, [&] { op().backward(d_o); });
    // The two feature maps alone (their share of the figures above).
    double phi_ms = 0, phi_fwdbwd_ms = 0;
    if (opt.phi_mlp) {
      const Tensor d_phi = Tensor::randn({1, n, h, dp}, 20, 0, DType::F32, gpu);
      phi_ms = median_ms(ctx.stream, opt.warmup, opt.iters, [&] {
        autograd::NoGradGuard no_grad;
        phi_q.forward(q);
        phi_k.forward(k);
      });
      phi_fwdbwd_ms = median_ms(ctx.stream, opt.warmup, opt.iters, [&] {
        phi_q.forward(q).backward(d_phi);
        phi_k.forward(k).backward(d_phi);
      });
    }
    fmt::print("rehyat bench attention on {} ({} SMs); median of {} runs after {} warm-up\n", ctx.props.name,
               ctx.props.multiProcessorCount, opt.iters, opt.warmup);
    fmt::print("shape: B1 N{} ({}x{}x{}) H{} d{} {} rehyat Tc={} To={} {} Dp={}{}; softmax part {:.3f} TFLOP\n", n,
               opt.frames, opt.height, opt.width, h, d, opt.dtype, ho.chunk_frames, ho.overlap_frames,
               opt.causal ? "causal" : "non-causal", dp, opt.phi_mlp ? " (+ phi MLP on q and k)" : " (features given)",
               soft_flop / 1e12);
    fmt::print("{:<34} {:>10} {:>12} {:>10}\n", "what", "ms", "TFLOP/s", "of GEMM");
    fmt::print("{:<34} {:>10.3f} {:>12.1f} {:>9.0f}%\n", "bf16 GEMM 8192^3 (ceiling)", gemm_ms, gemm_tflops, 100.0);
    const double tf = soft_flop / (fwd_ms * 1e9), tfb = 3.5 * soft_flop / (fwdbwd_ms * 1e9);
    fmt::print("{:<34} {:>10.3f} {:>12.1f} {:>9.0f}%\n", "hybrid forward (softmax flop)", fwd_ms, tf,
               100 * tf / gemm_tflops);
    fmt::print("{:<34} {:>10.3f} {:>12.1f} {:>9.0f}%\n", "hybrid forward+backward", fwdbwd_ms, tfb,
               100 * tfb / gemm_tflops);
    if (opt.phi_mlp) {
      fmt::print("{:<34} {:>10.3f}\n", "  of which phi_q + phi_k forward", phi_ms);
      fmt::print("{:<34} {:>10.3f}\n", "  of which phi_q + phi_k fwd+bwd", phi_fwdbwd_ms);
    }
    if (!opt.json_path.empty()) {
      nlohmann::json out;
      out["device"] = ctx.props.name;
      out["kind"] = "rehyat";
      out["causal"] = opt.causal;
      out["phi_mlp"] = opt.phi_mlp;
      out["feature_dim"] = dp;
      out["forward_ms"] = fwd_ms;
      out["forward_backward_ms"] = fwdbwd_ms;
      if (opt.phi_mlp) {
        out["phi_forward_ms"] = phi_ms;
        out["phi_forward_backward_ms"] = phi_fwdbwd_ms;
      }
      out["softmax_forward_flop"] = soft_flop;
      out["gemm_ceiling_tflop_per_s"] = gemm_tflops;
      std::ofstream file(opt.json_path);
      file << out.dump(2) << "\n";
    }
    return;
  }
  const DType stats = attention::kernels::stats_dtype(dtype);
  Tensor o = Tensor::empty({1, n, h, d}, dtype, gpu), lse = Tensor::empty({1, h, n}, stats, gpu),
         row_max = Tensor::empty({1, h, n}, stats, gpu);
  Tensor dq = Tensor::empty({1, n, h, d}, dtype, gpu), dk = Tensor::empty({1, n, h, d}, dtype, gpu),
         dv = Tensor::empty({1, n, h, d}, dtype, gpu);
  auto forward = [&] { attention::kernels::softmax_attention_forward(o, lse, row_max, q, k, v, scale, keys); };
  auto backward = [&] {
    attention::kernels::softmax_attention_backward(dq, dk, dv, d_o, q, k, v, o, lse, scale, keys);
  };
  const double fwd_ms = median_ms(ctx.stream, opt.warmup, opt.iters, forward);
  const double bwd_ms = median_ms(ctx.stream, opt.warmup, opt.iters, backward);
  const double fwdbwd_ms = median_ms(ctx.stream, opt.warmup, opt.iters, [&] {
    forward();
    backward();
  });
  const double fwd_tflops = fwd_flop / (fwd_ms * 1e9), fwdbwd_tflops = 3.5 * fwd_flop / (fwdbwd_ms * 1e9);

  const std::string shape = fmt::format("B1 N{} ({}x{}x{}) H{} d{} {}{}", n, opt.frames, opt.height, opt.width, h, d,
                                        opt.dtype,
                                        keys.chunked() ? fmt::format(" chunk Tc={} To={}", opt.chunk_frames,
                                                                     opt.overlap_frames)
                                                       : std::string(" full"));
  fmt::print("rehyat bench attention on {} ({} SMs); median of {} runs after {} warm-up\n", ctx.props.name,
             ctx.props.multiProcessorCount, opt.iters, opt.warmup);
  fmt::print("shape: {}; forward {:.3f} TFLOP\n", shape, fwd_flop / 1e12);
  fmt::print("{:<28} {:>10} {:>12} {:>10}\n", "what", "ms", "TFLOP/s", "of GEMM");
  fmt::print("{:<28} {:>10.3f} {:>12.1f} {:>9.0f}%\n", "bf16 GEMM 8192^3 (ceiling)", gemm_ms, gemm_tflops, 100.0);
  fmt::print("{:<28} {:>10.3f} {:>12.1f} {:>9.0f}%\n", "attention forward", fwd_ms, fwd_tflops,
             100 * fwd_tflops / gemm_tflops);
  fmt::print("{:<28} {:>10.3f} {:>12.1f} {:>9.0f}%\n", "attention backward", bwd_ms, 2.5 * fwd_flop / (bwd_ms * 1e9),
             100 * 2.5 * fwd_flop / (bwd_ms * 1e9) / gemm_tflops);
  fmt::print("{:<28} {:>10.3f} {:>12.1f} {:>9.0f}%\n", "attention forward+backward", fwdbwd_ms, fwdbwd_tflops,
             100 * fwdbwd_tflops / gemm_tflops);
  if (opt.json_path.empty()) return;
  nlohmann::json out;
  out["device"] = ctx.props.name;
  out["shape"] = shape;
  out["tokens"] = n;
  out["heads"] = h;
  out["head_dim"] = d;
  out["chunk_frames"] = opt.chunk_frames;
  out["overlap_frames"] = opt.overlap_frames;
  out["forward_flop"] = fwd_flop;
  out["flop_convention"] = "forward 4*pairs*d*H; forward+backward 3.5x forward; backward 2.5x forward";
  out["gemm_ceiling_tflop_per_s"] = gemm_tflops;
  out["forward_ms"] = fwd_ms;
  out["forward_tflop_per_s"] = fwd_tflops;
  out["backward_ms"] = bwd_ms;
  out["forward_backward_ms"] = fwdbwd_ms;
  out["forward_backward_tflop_per_s"] = fwdbwd_tflops;
  out["iters"] = opt.iters;
  out["warmup"] = opt.warmup;
  std::ofstream file(opt.json_path);
  REHYAT_CHECK(file.good(), "bench attention: cannot write {}", opt.json_path);
  file << out.dump(2) << "\n";
  REHYAT_CHECK(file.good(), "bench attention: writing {} failed", opt.json_path);
  fmt::print("wrote {}\n", opt.json_path);
}

#endif  // REHYAT_CUDA

void run_bench_attention(const AttentionBenchOptions& opt) {
  REHYAT_CHECK(opt.heads > 0 && opt.head_dim > 0 && opt.frames > 0 && opt.height > 0 && opt.width > 0 &&
                   opt.iters > 0 && opt.warmup >= 0 && opt.chunk_frames >= 0 && opt.overlap_frames >= 0,
               "bench attention: sizes and --iters must be positive");
#ifdef REHYAT_CUDA
  REHYAT_CHECK(cuda_available(), "bench attention needs a CUDA GPU, and none was found");
  run_attention_bench(opt);
#else
  REHYAT_FAIL("bench attention needs a CUDA GPU, but rehyat was built without CUDA");
#endif
}

}  // namespace

void add_bench_attention_command(CLI::App& bench) {
  CLI::App* cmd = bench.add_subcommand("attention", "Softmax attention forward / forward+backward at Wan shapes");
  auto o = std::make_shared<AttentionBenchOptions>();
  cmd->add_option("--json", o->json_path, "Also write the results as JSON to this file");
  cmd->add_option("--heads", o->heads, "Attention heads")->capture_default_str();
  cmd->add_option("--head-dim", o->head_dim, "Head dim")->capture_default_str();
  cmd->add_option("--frames", o->frames, "Latent frames")->capture_default_str();
  cmd->add_option("--height", o->height, "Latent height after patching")->capture_default_str();
  cmd->add_option("--width", o->width, "Latent width after patching")->capture_default_str();
  cmd->add_option("--chunk-frames", o->chunk_frames, "Chunk size Tc in frames (0: full attention)")
      ->capture_default_str();
  cmd->add_option("--overlap-frames", o->overlap_frames, "Overlap To in frames")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "bf16, f16 or f32")->capture_default_str();
  cmd->add_option("--kind", o->kind, "softmax (the flash kernels) or rehyat (the hybrid op)")->capture_default_str();
  cmd->add_flag("--causal", o->causal, "rehyat: causal linear part");
  cmd->add_option("--feature-dim", o->feature_dim, "rehyat: feature dim Dp")->capture_default_str();
  cmd->add_flag("--phi-mlp", o->phi_mlp, "rehyat: include the per-head feature MLP on q and k (peer's hybrid())");
  cmd->add_option("--iters", o->iters, "Timed runs (the median is reported)")->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "Untimed runs before timing")->capture_default_str();
  cmd->callback([o] { run_bench_attention(*o); });
}

}  // namespace rehyat::tools
