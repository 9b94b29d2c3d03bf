// `rehyat forward`: one forward (and optionally backward) pass of a model on inputs read
// from a safetensors file, written to another — how anyone checks the framework against
// an external implementation (PyTorch, JAX, numpy; tests/tools/test_forward.py does it
// against an independent numpy Wan2.1, test_forward_hybrid.py for the ReHyAt attention).
//
//   MODEL: YAML with a `model:` section and optionally an `attention:` section
//          (attention/attention_config.h); `--set key=value` overrides either. With
//          attention.kind != softmax the converted blocks get HybridAttentionCores and
//          the weights must then hold their feature maps (blocks.N.self_attn.phi_q.*, phi_k.*).
//
//   IN:  latents [B, in_dim, F, H, W] f32, timestep [B] f32 in [0, 1000],
//        context [B, L, text_dim] f32 with L <= text_len (zero-padded inside, as Wan does),
//        grad_velocity [B, out_dim, F, H, W] (with --grad).
//   OUT: velocity [B, out_dim, F, H, W] f32; with --grad also grad.latents and
//        grad.<parameter name> for every parameter (Wan key names), all f32.
//
// Everything is checked before any compute: the model file, every weight (missing,
// unexpected, misshapen tensors all listed at once) and every input, each error naming
// its file and tensor. An existing OUT is replaced only with --force, and is written
// atomically, so a failed run leaves nothing half-written.
#include <chrono>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "autograd/graph.h"
#include "core/check.h"
#include "core/device.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "attention/attention_config.h"
#include "layers/hybrid_core.h"
#include "layers/wan_checkpoint.h"
#include "layers/wan_model.h"
#include "tools/commands.h"

namespace rehyat::tools {

namespace {

struct ForwardOptions {
  std::string model_path;
  std::string weights_path;
  std::string inputs_path;
  std::string out_path;
  std::string device = "cpu";
  std::string dtype = "f32";
  std::vector<std::string> overrides;  // --set key=value
  bool grad = false;
  bool force = false;
};

struct ForwardInputs {
  Tensor latents;        // [B, in_dim, F, H, W] f32
  Tensor timestep;       // [B] f32
  Tensor context;        // [B, L, text_dim] f32
  Tensor grad_velocity;  // [B, out_dim, F, H, W] f32 (with --grad)
};

// Reads one float input, naming the file and tensor when it is absent or not a float.
Tensor read_input(const SafetensorsFile& file, const std::string& name, const std::string& shape_doc) {
  REHYAT_CHECK(file.has(name), "{}: no tensor '{}' (expected {})", file.path(), name, shape_doc);
  Tensor t = file.get(name);
  REHYAT_CHECK(is_floating(t.dtype()), "{}: tensor '{}' has dtype {}, expected a float ({})", file.path(), name,
               dtype_name(t.dtype()), shape_doc);
  return t.to(DType::F32);
}

ForwardInputs read_inputs(const std::string& path, const layers::WanConfig& config, bool grad) {
  SafetensorsFile file = SafetensorsFile::open(path);
  ForwardInputs in;
  in.latents = read_input(file, "latents", "[B, in_dim, F, H, W]");
  in.timestep = read_input(file, "timestep", "[B]");
  in.context = read_input(file, "context", "[B, L, text_dim]");
  const Shape& lat = in.latents.shape();
  auto fail_shape = [&](const std::string& name, const Tensor& t, const std::string& why) {
    REHYAT_FAIL("{}: tensor '{}' has shape {}: {}", path, name, shape_str(t.shape()), why);
  };
  if (lat.size() != 5 || lat[1] != config.in_dim)
    fail_shape("latents", in.latents, fmt::format("expected [B, in_dim={}, F, H, W]", config.in_dim));
  for (int axis = 0; axis < 3; ++axis)
    if (lat[2 + axis] % config.patch_size[axis] != 0 || lat[2 + axis] == 0)
      fail_shape("latents", in.latents,
                 fmt::format("F, H, W must be positive multiples of the patch size [{}, {}, {}]", config.patch_size[0],
                             config.patch_size[1], config.patch_size[2]));
  const int64_t batch = lat[0];
  if (in.timestep.shape() != Shape{batch})
    fail_shape("timestep", in.timestep, fmt::format("expected [B={}]", batch));
  const Shape& ctx = in.context.shape();
  if (ctx.size() != 3 || ctx[0] != batch || ctx[2] != config.text_dim || ctx[1] > config.text_len)
    fail_shape("context", in.context,
               fmt::format("expected [B={}, L <= text_len={}, text_dim={}]", batch, config.text_len, config.text_dim));
  if (grad) {
    in.grad_velocity = read_input(file, "grad_velocity", "[B, out_dim, F, H, W]");
    const Shape want{batch, config.out_dim, lat[2], lat[3], lat[4]};
    if (in.grad_velocity.shape() != want)
      fail_shape("grad_velocity", in.grad_velocity, fmt::format("expected {} (the velocity's shape)", shape_str(want)));
  }
  return in;
}

// With hybrid cores installed, a teacher checkpoint lacks the feature maps: say so plainly
// before the generic missing-tensor listing.
void check_feature_maps_present(const layers::WanModel& model, const std::string& weights_path,
                                const std::vector<int>& converted, const std::string& kind) {
  if (converted.empty()) return;
  std::set<std::string> keys;
  for (const std::string& path : layers::checkpoint_files(weights_path)) {
    SafetensorsFile file = SafetensorsFile::open(path);
    for (const std::string& name : file.names()) keys.insert(name);
  }
  const layers::CheckpointNaming naming = layers::detect_naming({keys.begin(), keys.end()});
  std::vector<std::string> missing;
  for (const auto& [name, param] : model.named_parameters())
    if ((name.find(".self_attn.phi_q.") != std::string::npos || name.find(".self_attn.phi_k.") != std::string::npos) &&
        !keys.count(layers::name_in(naming, name)))
      missing.push_back(name);
  if (missing.empty()) return;
  REHYAT_FAIL(
      "{}: attention.kind {} converts blocks [{}], but the weights lack {} of their feature-map tensors "
      "(e.g. {}); a softmax teacher checkpoint has none: distill the feature maps first, or run the teacher "
      "with attention.kind=softmax",
      weights_path, kind, fmt::join(converted, ", "), missing.size(), fmt::join(missing.begin(), missing.begin() + std::min<size_t>(missing.size(), 4), ", "));
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::cpu();
  REHYAT_CHECK(name == "cuda", "--device must be cpu or cuda, got '{}'", name);
  REHYAT_CHECK(built_with_cuda(), "--device cuda: this rehyat was built without CUDA");
  REHYAT_CHECK(cuda_device_count() > 0, "--device cuda: no CUDA device found");
  return Device::cuda(0);
}

void run_forward(const ForwardOptions& options) {
  using Clock = std::chrono::steady_clock;
  if (std::filesystem::exists(options.out_path) && !options.force)
    REHYAT_FAIL("{} already exists; pass --force to replace it", options.out_path);
  const Device device = parse_device(options.device);
  REHYAT_CHECK(options.dtype == "f32" || options.dtype == "bf16", "--dtype must be f32 or bf16, got '{}'",
               options.dtype);
  const DType compute = options.dtype == "bf16" ? DType::BF16 : DType::F32;

  ConfigSchema schema;
  layers::declare_model_config(schema);
  attention::declare_attention_config(schema);
  const Config model_file = load_config(options.model_path, schema, options.overrides);
  const layers::WanConfig config = layers::from_config(model_file);
  const attention::AttentionConfig attention_config = attention::attention_config_from(model_file, config);
  ForwardInputs in = read_inputs(options.inputs_path, config, options.grad);
  layers::WanModel model(config, device, DType::F32);
  const std::vector<int> converted = layers::apply_attention_config(model, attention_config);
  const std::string kind = attention::attention_kind_name(attention_config.kind);
  check_feature_maps_present(model, options.weights_path, converted, kind);
  const layers::LoadResult loaded = layers::load_checkpoint(model, options.weights_path);
  log::info("forward: {} parameters ({} naming) from {}, {} x {} on {}, compute {}", model.parameter_count(),
            layers::naming_name(loaded.naming), options.weights_path, shape_str(in.latents.shape()),
            options.grad ? "with gradients" : "forward only", options.device, options.dtype);
  if (!converted.empty())
    log::info("forward: {} attention in blocks [{}] (chunk_frames {}, overlap_frames {}, {}), softmax elsewhere", kind,
              fmt::join(converted, ", "), attention_config.chunk_frames, attention_config.overlap_frames,
              attention_config.causal ? "causal" : "non-causal");

  const auto start = Clock::now();
  std::vector<std::pair<std::string, Tensor>> outputs;
  if (options.grad) {
    Tensor latents = in.latents.to(device);
    latents.set_requires_grad(true);
    Tensor velocity = model.forward(latents, in.timestep, in.context, compute);
    velocity.backward(in.grad_velocity.to(device).to(velocity.dtype()));
    outputs.emplace_back("velocity", velocity.detach().to(DType::F32));
    REHYAT_CHECK(latents.grad().defined(), "forward --grad: no gradient reached the latents");
    outputs.emplace_back("grad.latents", latents.grad().to(DType::F32));
    for (const auto& [name, param] : model.named_parameters()) {
      Tensor g = param.grad();
      // A parameter the output does not depend on has a zero gradient, written as such.
      outputs.emplace_back("grad." + name, g.defined() ? g.to(DType::F32) : Tensor::zeros(param.shape(), DType::F32));
    }
  } else {
    autograd::NoGradGuard no_grad;
    outputs.emplace_back("velocity", model.forward(in.latents, in.timestep, in.context, compute).to(DType::F32));
  }
  for (auto& [name, t] : outputs) t = t.to(Device::cpu());
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  save_safetensors(options.out_path, outputs,
                   {{"generator", "rehyat forward"}, {"model", options.model_path}, {"dtype", options.dtype},
                    {"device", options.device}, {"attention", kind}});
  log::info("forward: wrote {} tensors to {} ({:.2f} s)", outputs.size(), options.out_path, seconds);
}

}  // namespace

void add_forward_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("forward", "One forward (and backward) pass on inputs from a safetensors file");
  auto options = std::make_shared<ForwardOptions>();
  cmd->add_option("--model", options->model_path,
                  "Model YAML: a `model:` section (Wan key names) and optionally an `attention:` section")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--weights", options->weights_path, "Weights: safetensors file, shard index or folder (Wan or diffusers names)")
      ->required();
  cmd->add_option("--inputs", options->inputs_path, "latents, timestep, context (and grad_velocity with --grad)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", options->out_path, "Output safetensors: velocity (and grad.* with --grad)")->required();
  cmd->add_option("--device", options->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--dtype", options->dtype, "Compute dtype: f32 or bf16 (parameters stay f32)")->capture_default_str();
  cmd->add_option("--set", options->overrides,
                  "Config override key=value, repeatable (e.g. --set attention.kind=rehyat --set attention.chunk_frames=5)")
      ->take_all()
      ->expected(1);
  cmd->add_flag("--grad", options->grad, "Also backpropagate grad_velocity and write grad.latents, grad.<param>");
  cmd->add_flag("--force", options->force, "Replace an existing --out file");
  cmd->callback([options] { run_forward(*options); });
}

}  // namespace rehyat::tools
