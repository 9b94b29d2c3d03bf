// `rehyat bench model`: a whole DiT of a given config (random weights) on the GPU — the
// full forward on a video's tokens and the forward+backward of one block — timed with
// the device synchronized around each run, and its memory taken from the allocator's
// counters: parameter bytes, and the peak of bytes handed to tensors during each run
// (parameters included). Default: Wan2.1-1.3B at 21 x 60 x 104 latents = 32,760 tokens,
// bf16 compute with f32 parameters, a 512-token text context.
#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "autograd/graph.h"
#include "core/allocator.h"
#include "core/check.h"
#include "core/device.h"
#include "layers/wan_model.h"
#include "tools/commands.h"

#ifdef REHYAT_CUDA
#include "core/cuda_context.h"
#endif

namespace rehyat::tools {

namespace {

struct BenchModelOptions {
  std::string model_path = "configs/models/wan2.1-t2v-1.3b.yaml";
  std::string json_path;
  int64_t frames = 21, height = 60, width = 104;  // latent size
  int64_t batch = 1;
  int64_t context_len = 512;
  std::string dtype = "bf16";
  std::string param_dtype = "f32";
  int block = 0;
  int iters = 3;
};

#ifdef REHYAT_CUDA

double gib(size_t bytes) { return double(bytes) / double(1ull << 30); }

DType parse_float_dtype(const std::string& name, const char* option) {
  if (name == "f32") return DType::F32;
  if (name == "bf16") return DType::BF16;
  REHYAT_FAIL("{} must be f32 or bf16, got '{}'", option, name);
}

struct Measurement {
  std::string what;
  double ms = 0;         // median over iters
  size_t peak_bytes = 0; // allocator peak during the runs (parameters included)
};

// Runs fn iters times (after one untimed run), synchronizing around each; returns the
// median time and the allocator's peak over all runs.
template <typename Fn>
Measurement measure(const std::string& what, Device device, int iters, Fn&& fn) {
  fn();
  cuda::synchronize(device);
  reset_peak_memory(device);
  std::vector<double> times;
  for (int i = 0; i < iters; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    cuda::synchronize(device);
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return {what, times[times.size() / 2], memory_stats(device).peak_bytes};
}

void run_bench_model(const BenchModelOptions& options) {
  REHYAT_CHECK(cuda_device_count() > 0, "bench model: no CUDA device found");
  const Device device = Device::cuda(0);
  const DType compute = parse_float_dtype(options.dtype, "--dtype");
  const DType param_dtype = parse_float_dtype(options.param_dtype, "--param-dtype");
  const layers::WanConfig config = layers::load_wan_config(options.model_path);
  REHYAT_CHECK(options.block >= 0 && options.block < config.num_layers, "--block {} is not a block of {} ({} layers)",
               options.block, options.model_path, config.num_layers);

  layers::WanModel model(config, device, param_dtype, /*seed=*/1);
  model.set_requires_grad(false);
  const size_t param_bytes = memory_stats(device).current_bytes;
  const int64_t tokens = options.frames / config.patch_size[0] * (options.height / config.patch_size[1]) *
                         (options.width / config.patch_size[2]);
  fmt::print("model {}: {:.3f} B parameters ({:.2f} GiB, {}), {} tokens ({} x {} x {} latents), compute {}\n",
             options.model_path, double(model.parameter_count()) / 1e9, gib(param_bytes), options.param_dtype, tokens,
             options.frames, options.height, options.width, options.dtype);

  const Tensor latents = Tensor::randn({options.batch, config.in_dim, options.frames, options.height, options.width},
                                       /*seed=*/2, 0, DType::F32, device);
  const Tensor timestep = Tensor::full({options.batch}, 700.0, DType::F32, device);
  const Tensor context =
      Tensor::randn({options.batch, options.context_len, config.text_dim}, /*seed=*/3, 0, DType::F32, device);

  std::vector<Measurement> rows;
  rows.push_back(measure("forward, whole model (no grad)", device, options.iters, [&] {
    autograd::NoGradGuard no_grad;
    model.forward(latents, timestep, context, compute);
  }));

  // One block's forward + backward: its inputs prepared without a graph, x and the
  // block's parameters requiring gradients.
  layers::PreparedInputs prepared;
  {
    autograd::NoGradGuard no_grad;
    prepared = model.prepare(latents, timestep, context, compute);
  }
  layers::NamedTensors block_params;
  model.block(options.block).collect(layers::block_prefix(options.block), block_params);
  for (auto& [name, p] : block_params) p.set_requires_grad(true);
  const Tensor grad_out = Tensor::randn(prepared.x.shape(), /*seed=*/4, 0, prepared.x.dtype(), device);
  rows.push_back(measure(fmt::format("forward+backward, block {}", options.block), device, options.iters, [&] {
    Tensor x = prepared.x.detach();
    x.set_requires_grad(true);
    Tensor y = model.run_block(options.block, x, prepared);
    y.backward(grad_out);
    for (auto& [name, p] : block_params) p.zero_grad();
  }));

  const size_t total = cuda::context(device.index).props.totalGlobalMem;
  fmt::print("{:<36} {:>10} {:>12} {:>14}\n", "run", "ms", "peak GiB", "of device");
  for (const Measurement& m : rows)
    fmt::print("{:<36} {:>10.1f} {:>12.2f} {:>13.1f}%\n", m.what, m.ms, gib(m.peak_bytes),
               100.0 * double(m.peak_bytes) / double(total));
  fmt::print("device {}: {:.1f} GiB; parameters {:.2f} GiB\n", cuda::context(device.index).props.name, gib(total),
             gib(param_bytes));

  if (!options.json_path.empty()) {
    nlohmann::json j;
    j["device"] = cuda::context(device.index).props.name;
    j["device_bytes"] = total;
    j["model"] = options.model_path;
    j["parameters"] = model.parameter_count();
    j["parameter_bytes"] = param_bytes;
    j["tokens"] = tokens;
    j["latents"] = {options.batch, config.in_dim, options.frames, options.height, options.width};
    j["compute_dtype"] = options.dtype;
    j["param_dtype"] = options.param_dtype;
    for (const Measurement& m : rows) j["runs"].push_back({{"what", m.what}, {"ms", m.ms}, {"peak_bytes", m.peak_bytes}});
    std::ofstream(options.json_path) << j.dump(2) << "\n";
  }
}

#else

void run_bench_model(const BenchModelOptions&) { REHYAT_FAIL("bench model needs a CUDA build of rehyat"); }

#endif

}  // namespace

void add_bench_model_command(CLI::App& bench) {
  CLI::App* cmd = bench.add_subcommand("model", "Whole-model forward and one block's forward+backward: time and peak memory");
  auto o = std::make_shared<BenchModelOptions>();
  cmd->add_option("--model", o->model_path, "Model YAML")->capture_default_str()->check(CLI::ExistingFile);
  cmd->add_option("--frames", o->frames, "Latent frames")->capture_default_str();
  cmd->add_option("--height", o->height, "Latent height")->capture_default_str();
  cmd->add_option("--width", o->width, "Latent width")->capture_default_str();
  cmd->add_option("--batch", o->batch, "Batch size")->capture_default_str();
  cmd->add_option("--context-len", o->context_len, "Text tokens given (padded to text_len)")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "Compute dtype: bf16 or f32")->capture_default_str();
  cmd->add_option("--param-dtype", o->param_dtype, "Parameter dtype: f32 or bf16")->capture_default_str();
  cmd->add_option("--block", o->block, "Block for the forward+backward run")->capture_default_str();
  cmd->add_option("--iters", o->iters, "Timed runs (median reported)")->capture_default_str();
  cmd->add_option("--json", o->json_path, "Also write the results as JSON to this file");
  cmd->callback([o] { run_bench_model(*o); });
}

}  // namespace rehyat::tools
