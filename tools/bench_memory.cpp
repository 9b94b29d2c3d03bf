// `rehyat bench memory`: what recurrent inference buys (SPEC §3: "peak memory independent
// of video length"). A DiT of a given config (random weights; every block a causal ReHyAt
// core) runs the chunk-by-chunk recurrent forward (layers/recurrent_forward.h) on videos
// of growing length, and the teacher's full-softmax parallel forward runs at the same
// sizes (an out-of-memory failure is reported as OOM, not fatal). Per run: wall time
// (device synchronized) and the allocator's peak bytes during the run beyond what was
// allocated before it (parameters and the input latents), with the velocity the run
// returns (which grows with the video, like the latents) reported separately. At the
// smallest size the recurrent velocity is also compared with the parallel causal hybrid
// forward of the same model.
// Default: Wan2.1-1.3B, Tc = 3, To = 1, P = 2, 320 x 480 pixels (40 x 60 latents, 20 x 30
// tokens per frame) at 81, 161, 321, 641 video frames (21, 41, 81, 161 latent frames).
#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "attention/attention_config.h"
#include "attention/flops.h"
#include "autograd/graph.h"
#include "core/allocator.h"
#include "core/check.h"
#include "core/device.h"
#include "layers/hybrid_core.h"
#include "layers/recurrent_forward.h"
#include "layers/wan_model.h"
#include "core/measure.h"
#include "tools/commands.h"

#ifdef REHYAT_CUDA
#include "core/cuda_context.h"
#endif

namespace rehyat::tools {

namespace {

struct BenchMemoryOptions {
  std::string model_path = "configs/models/wan2.1-t2v-1.3b.yaml";
  std::string json_path;
  std::string device = "cuda";
  std::vector<int64_t> frames = {81, 161, 321, 641};  // video frames
  int64_t height = 320, width = 480;                 // pixels
  int64_t chunk_frames = 3, overlap_frames = 1, degree = 2;
  int64_t context_len = 512;
  std::string dtype = "bf16";
  std::string param_dtype = "f32";
  int iters = 1;
  bool skip_softmax = false;
};

double gib(size_t bytes) { return double(bytes) / double(1ull << 30); }

DType parse_float_dtype(const std::string& name, const char* option) {
  if (name == "f32") return DType::F32;
  if (name == "bf16") return DType::BF16;
  REHYAT_FAIL("{} must be f32 or bf16, got '{}'", option, name);
}

struct Size {
  int64_t video_frames = 0;
  layers::TokenGrid grid;    // DiT tokens
  Shape latent_shape;        // [1, in, F, H, W]
};

void run_bench_memory(const BenchMemoryOptions& options) {
  const Device device = parse_device(options.device);
  if (device.is_cuda()) REHYAT_CHECK(cuda_device_count() > 0, "bench memory: no CUDA device found");
  const DType compute = parse_float_dtype(options.dtype, "--dtype");
  const DType param_dtype = parse_float_dtype(options.param_dtype, "--param-dtype");
  const layers::WanConfig config = layers::load_wan_config(options.model_path);

  std::vector<Size> sizes;
  for (int64_t f : options.frames) {
    Size s;
    s.video_frames = f;
    s.grid = attention::video_token_grid(config, f, options.height, options.width);
    s.latent_shape = {1, config.in_dim, s.grid.frames * config.patch_size[0], options.height / 8, options.width / 8};
    sizes.push_back(s);
  }

  layers::WanModel model(config, device, param_dtype, /*seed=*/1);
  attention::AttentionConfig hybrid;
  hybrid.kind = attention::AttentionKind::Rehyat;
  hybrid.causal = true;
  hybrid.chunk_frames = options.chunk_frames;
  hybrid.overlap_frames = options.overlap_frames;
  hybrid.degree = options.degree;
  layers::apply_attention_config(model, hybrid, /*seed=*/2);
  model.set_requires_grad(false);
  {  // Wan's init zeroes the head, which would make every velocity 0 and the parity check empty.
    Tensor head = model.head().head.weight;
    head.copy_(Tensor::randn(head.shape(), /*seed=*/5, 0, DType::F32, device, 0.0, 1.0 / std::sqrt(double(config.dim))));
  }
  const size_t param_bytes = memory_stats(device).current_bytes;
  fmt::print("model {}: {:.3f} B parameters ({:.2f} GiB, {}), compute {}, every block rehyat Tc {} To {} P {}\n",
             options.model_path, double(model.parameter_count()) / 1e9, gib(param_bytes), options.param_dtype,
             options.dtype, options.chunk_frames, options.overlap_frames, options.degree);

  const Tensor timestep = Tensor::full({1}, 700.0, DType::F32, device);
  const Tensor context = Tensor::randn({1, options.context_len, config.text_dim}, /*seed=*/3, 0, DType::F32, device);
  auto latents_for = [&](const Size& s) { return Tensor::randn(s.latent_shape, /*seed=*/4, 0, DType::F32, device); };

  // Recurrent runs (a warm-up on the smallest size first).
  std::vector<Measurement> recurrent, softmax;
  {
    const Tensor latents = latents_for(sizes.front());
    layers::recurrent_forward(model, latents, timestep, context, compute);
  }
  for (const Size& s : sizes) {
    const Tensor latents = latents_for(s);
    recurrent.push_back(measure_run(device, /*warmup=*/0, options.iters, [&] {
      return layers::recurrent_forward(model, latents, timestep, context, compute);
    }));
    fmt::print("recurrent {} frames: {}\n", s.video_frames,
               recurrent.back().ok ? fmt::format("{:.0f} ms, {:.3f} GiB", recurrent.back().ms,
                                                 gib(recurrent.back().working_peak))
                                   : recurrent.back().failure);
  }
  // The recurrent result against the parallel causal hybrid forward of the same model at
  // the smallest size: max |difference| over max |parallel|.
  std::optional<double> parity;
  std::string parity_failure;
  try {
    autograd::NoGradGuard no_grad;
    const Tensor latents = latents_for(sizes.front());
    const std::vector<double> want = model.forward(latents, timestep, context, compute).to_vector();
    const std::vector<double> got = layers::recurrent_forward(model, latents, timestep, context, compute).to_vector();
    double err = 0, scale = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      err = std::max(err, std::abs(got[i] - want[i]));
      scale = std::max(scale, std::abs(want[i]));
    }
    parity = err / std::max(scale, 1e-30);
    fmt::print("recurrent vs parallel causal hybrid at {} frames: max error {:.3g} of max |v| {:.3g}\n",
               sizes.front().video_frames, *parity, scale);
  } catch (const std::exception& e) {
    parity_failure = e.what();
    fmt::print("recurrent vs parallel causal hybrid: not compared ({})\n", parity_failure);
    empty_cache(device);
  }
  // Full softmax, parallel (the teacher's attention in every block).
  if (!options.skip_softmax) {
    layers::apply_attention_config(model, attention::AttentionConfig{}, 2);
    bool warmed = false;
    for (const Size& s : sizes) {
      Tensor latents = latents_for(s);
      auto forward = [&] {
        autograd::NoGradGuard no_grad;
        return model.forward(latents, timestep, context, compute);
      };
      softmax.push_back(measure_run(device, /*warmup=*/warmed ? 0 : 1, options.iters, forward));
      warmed = warmed || softmax.back().ok;
      fmt::print("softmax {} frames: {}\n", s.video_frames,
                 softmax.back().ok ? fmt::format("{:.0f} ms, {:.3f} GiB", softmax.back().ms,
                                                 gib(softmax.back().working_peak))
                                   : softmax.back().failure);
    }
  }

  auto cell_ms = [](const Measurement& r) {
    return r.ok ? fmt::format("{:.0f}", r.ms) : r.failure.substr(0, 10);
  };
  auto cell_gib = [](const Measurement& r) {
    return r.ok ? fmt::format("{:.3f}", gib(r.working_peak)) : std::string("-");
  };
  fmt::print("\n{:>7} {:>7} {:>8} {:>10} | {:>12} {:>14} | {:>12} {:>14} | {:>11}\n", "frames", "latent", "tokens",
             "latent MiB", "recurrent ms", "rec. peak GiB", "softmax ms", "soft. peak GiB", "output MiB");
  for (size_t i = 0; i < sizes.size(); ++i) {
    const Size& s = sizes[i];
    const double latent_mib = double(shape_numel(s.latent_shape) * 4) / double(1 << 20);
    const Measurement none;
    const Measurement& sm = i < softmax.size() ? softmax[i] : none;
    fmt::print("{:>7} {:>7} {:>8} {:>10.1f} | {:>12} {:>14} | {:>12} {:>14} | {:>11.1f}\n", s.video_frames,
               s.grid.frames, s.grid.tokens(), latent_mib, cell_ms(recurrent[i]), cell_gib(recurrent[i]),
               softmax.empty() ? "skipped" : cell_ms(sm), softmax.empty() ? "-" : cell_gib(sm),
               double(recurrent[i].output_bytes) / double(1 << 20));
  }
  std::optional<double> growth;
  if (recurrent.front().ok && recurrent.back().ok && recurrent.front().working_peak > 0)
    growth = double(recurrent.back().working_peak) / double(recurrent.front().working_peak) - 1.0;
  if (growth)
    fmt::print("recurrent peak growth {} -> {} frames: {:+.2f}% (target < 5%); peaks exclude parameters ({:.2f} GiB), "
               "latents and the returned velocity\n",
               sizes.front().video_frames, sizes.back().video_frames, 100.0 * *growth, gib(param_bytes));

  if (!options.json_path.empty()) {
    nlohmann::json j;
    j["device"] = device.str();
#ifdef REHYAT_CUDA
    if (device.is_cuda()) j["device_name"] = cuda::context(device.index).props.name;
#endif
    j["model"] = options.model_path;
    j["parameters"] = model.parameter_count();
    j["parameter_bytes"] = param_bytes;
    j["compute_dtype"] = options.dtype;
    j["param_dtype"] = options.param_dtype;
    j["attention"] = {{"kind", "rehyat"}, {"causal", true}, {"chunk_frames", options.chunk_frames},
                      {"overlap_frames", options.overlap_frames}, {"degree", options.degree}};
    j["pixels"] = {options.height, options.width};
    if (growth) j["recurrent_peak_growth"] = *growth;
    if (parity) j["recurrent_vs_parallel_max_rel_error"] = *parity;
    if (!parity_failure.empty()) j["recurrent_vs_parallel_failure"] = parity_failure;
    auto run_json = [](const Measurement& r) {
      nlohmann::json x;
      x["ok"] = r.ok;
      if (!r.ok) x["failure"] = r.failure;
      if (r.ok) {
        x["ms"] = r.ms;
        x["working_peak_bytes"] = r.working_peak;
        x["output_bytes"] = r.output_bytes;
      }
      return x;
    };
    for (size_t i = 0; i < sizes.size(); ++i) {
      nlohmann::json row;
      row["video_frames"] = sizes[i].video_frames;
      row["latent_frames"] = sizes[i].grid.frames * config.patch_size[0];
      row["tokens"] = sizes[i].grid.tokens();
      row["latent_bytes"] = shape_numel(sizes[i].latent_shape) * 4;
      row["recurrent"] = run_json(recurrent[i]);
      if (i < softmax.size()) row["softmax_parallel"] = run_json(softmax[i]);
      j["runs"].push_back(row);
    }
    std::ofstream(options.json_path) << j.dump(2) << "\n";
  }
}

}  // namespace

void add_bench_memory_command(CLI::App& bench) {
  CLI::App* cmd = bench.add_subcommand(
      "memory", "Recurrent (chunk-by-chunk) ReHyAt vs full-softmax forward: peak memory and time over video length");
  auto o = std::make_shared<BenchMemoryOptions>();
  cmd->add_option("--model", o->model_path, "Model YAML")->capture_default_str()->check(CLI::ExistingFile);
  cmd->add_option("--frames", o->frames, "Video frames (4k + 1), one run each")->capture_default_str()->delimiter(',');
  cmd->add_option("--height", o->height, "Video height in pixels")->capture_default_str();
  cmd->add_option("--width", o->width, "Video width in pixels")->capture_default_str();
  cmd->add_option("--chunk-frames", o->chunk_frames, "Tc (latent frames per chunk)")->capture_default_str();
  cmd->add_option("--overlap-frames", o->overlap_frames, "To")->capture_default_str();
  cmd->add_option("--degree", o->degree, "P, the feature map's polynomial degree")->capture_default_str();
  cmd->add_option("--context-len", o->context_len, "Text tokens given (padded to text_len)")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "Compute dtype: bf16 or f32")->capture_default_str();
  cmd->add_option("--param-dtype", o->param_dtype, "Parameter dtype: f32 or bf16")->capture_default_str();
  cmd->add_option("--device", o->device, "cuda (default), cuda:N or cpu (small configs)")->capture_default_str();
  cmd->add_option("--iters", o->iters, "Timed runs per size (median reported)")->capture_default_str();
  cmd->add_flag("--skip-softmax", o->skip_softmax, "Only the recurrent runs");
  cmd->add_option("--json", o->json_path, "Also write the results as JSON to this file");
  cmd->callback([o] { run_bench_memory(*o); });
}

}  // namespace rehyat::tools
