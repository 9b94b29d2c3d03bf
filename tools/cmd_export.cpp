// `rehyat export CKPT --format safetensors|onnx --out FILE`: a checkpoint for other runtimes.
//
//   safetensors: Wan key names (--naming diffusers: WanTransformer3DModel's) plus the ReHyAt
//                feature maps, in --dtype f32|bf16|f16, with the model and attention config
//                in the header (export/export_safetensors.h): loads in PyTorch with
//                safetensors.torch.load_file, and back into rehyat with no YAML.
//   onnx:        the recurrent step function of a causal ReHyAt model (export/onnx_export.h:
//                one call = one chunk of Tc latent frames, state in and out) for chunks of
//                --height x --width latents [--batch, --frames, --text-len, --opset,
//                --onnx-weights]; needs a rehyat built with ONNX (libonnx-dev).
//
// The model comes from the checkpoint's own metadata (every checkpoint the pipeline writes
// has it); --config gives it for one without (a Wan2.1 release): a model YAML or a run
// config, with --set key=value overrides. Given both, they must agree. The checkpoint is
// checked completely (missing, unexpected, misshapen tensors) before anything is written;
// an existing --out is replaced only with --force, never when it is the checkpoint itself.
#include <filesystem>
#include <memory>

#include <fmt/format.h>

#include "core/check.h"
#include "export/export_safetensors.h"
#include "tools/commands.h"
#ifdef REHYAT_ONNX
#include "export/onnx_export.h"
#endif

namespace rehyat::tools {

namespace {

namespace fs = std::filesystem;

struct ExportOptions {
  std::string checkpoint;
  std::string format;
  std::string out;
  std::string naming = "wan";
  std::string dtype = "f32";
  std::string config;
  std::vector<std::string> overrides;  // --set key=value
  bool force = false;
  // --format onnx (exporting::OnnxExportOptions)
  int64_t batch = 1, height = 0, width = 0, frames = 0, text_len = 0, opset = 17;
  std::string onnx_weights = "auto";
  std::vector<const CLI::Option*> safetensors_only, onnx_only;  // given with the other format: an error
};

void check_output_path(const ExportOptions& o) {
  const fs::path out(o.out);
  REHYAT_CHECK(!fs::exists(out) || !fs::equivalent(out, fs::path(o.checkpoint)),
               "--out {} is the checkpoint being exported; write the export to another file", o.out);
  REHYAT_CHECK(!fs::is_directory(out), "--out {} is a folder; give a file name", o.out);
  REHYAT_CHECK(!fs::exists(out) || o.force, "{} already exists; pass --force to replace it", o.out);
  // The ONNX weights may go to a file beside the model.
  const std::string data = o.out + ".data";
  REHYAT_CHECK(o.format != "onnx" || !fs::exists(data) || o.force,
               "{} (the ONNX weights file of --out) already exists; pass --force to replace it", data);
  const fs::path parent = out.parent_path();
  REHYAT_CHECK(parent.empty() || fs::is_directory(parent), "--out {}: folder {} does not exist", o.out,
               parent.string());
}

void run_export(const ExportOptions& o) {
  REHYAT_CHECK(o.format == "safetensors" || o.format == "onnx", "--format must be safetensors or onnx, got '{}'",
               o.format);
#ifndef REHYAT_ONNX
  REHYAT_CHECK(o.format != "onnx",
               "--format onnx: this rehyat was built without ONNX support; install the ONNX and protobuf "
               "libraries (Debian: libonnx-dev libprotobuf-dev) and rebuild (cmake finds them and enables the "
               "exporter)");
#endif
  for (const CLI::Option* option : o.format == "onnx" ? o.safetensors_only : o.onnx_only)
    REHYAT_CHECK(option->count() == 0, "{} does not apply to --format {}", option->get_name(), o.format);
  REHYAT_CHECK(o.format != "onnx" || (o.height > 0 && o.width > 0),
               "--format onnx needs --height and --width: the latent size of the chunks the model will take");
  REHYAT_CHECK(o.onnx_weights == "auto" || o.onnx_weights == "embedded" || o.onnx_weights == "external",
               "--onnx-weights must be auto, embedded or external, got '{}'", o.onnx_weights);
  const layers::CheckpointNaming naming = layers::parse_naming(o.naming);
  REHYAT_CHECK(o.dtype == "f32" || o.dtype == "bf16" || o.dtype == "f16", "--dtype must be f32, bf16 or f16, got '{}'",
               o.dtype);
  const DType dtype = parse_dtype(o.dtype, "--dtype");
  REHYAT_CHECK(fs::exists(o.checkpoint), "checkpoint {} does not exist", o.checkpoint);
  check_output_path(o);

  const exporting::ModelDescription description = exporting::resolve_description(o.checkpoint, o.config, o.overrides);
  layers::WanModel model = exporting::load_described_model(o.checkpoint, description);
  const std::vector<int> converted = description.attention.converted_blocks(description.model.num_layers);
  const std::string attention =
      converted.empty() ? std::string("softmax in every block")
                        : fmt::format("{} in blocks [{}]", attention::attention_kind_name(description.attention.kind),
                                      fmt::join(converted, ", "));
  fmt::print("{}: {} blocks, dim {}, attention {}; model described by {}\n", o.checkpoint, description.model.num_layers,
             description.model.dim, attention, description.source);

  if (o.format == "onnx") {
#ifdef REHYAT_ONNX
    exporting::OnnxExportOptions onnx;
    onnx.path = o.out;
    onnx.batch = o.batch;
    onnx.height = o.height;
    onnx.width = o.width;
    onnx.frames = o.frames;
    onnx.text_len = o.text_len;
    onnx.opset = o.opset;
    onnx.weights = o.onnx_weights == "auto"       ? exporting::OnnxWeightStorage::Auto
                   : o.onnx_weights == "embedded" ? exporting::OnnxWeightStorage::Embedded
                                                  : exporting::OnnxWeightStorage::External;
    const exporting::OnnxExportSummary summary = exporting::export_onnx(model, onnx);
    const uint64_t bytes = fs::file_size(summary.model_path) +
                           (summary.data_path.empty() ? 0 : fs::file_size(summary.data_path));
    fmt::print("wrote {}{}: onnx step function, chunks of {} latent frames, {} nodes, {} inputs, {} outputs, {} "
               "weights, {} on disk\n",
               summary.model_path, summary.data_path.empty() ? "" : fmt::format(" (weights in {})", summary.data_path),
               summary.chunk_latent_frames, summary.nodes, summary.inputs.size(), summary.outputs.size(),
               human_bytes(uint64_t(summary.weight_bytes)), human_bytes(bytes));
#endif
    return;
  }
  const exporting::ExportSummary summary =
      exporting::export_safetensors(model, description.attention, o.out, naming, dtype);
  fmt::print("wrote {}: safetensors, {} naming, {}, {} tensors, {} parameters, {}\n", summary.path,
             layers::naming_name(naming), o.dtype, summary.tensors, summary.parameters, human_bytes(summary.bytes));
}

}  // namespace

void add_export_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("export", "Export a checkpoint for other runtimes: safetensors (PyTorch, "
                                               "diffusers) or ONNX");
  auto o = std::make_shared<ExportOptions>();
  cmd->add_option("checkpoint", o->checkpoint,
                  "Checkpoint: safetensors file, shard index or folder (Wan or diffusers names)")
      ->required();
  cmd->add_option("--format", o->format, "safetensors or onnx")->required();
  cmd->add_option("--out", o->out, "Output file")->required();
  o->safetensors_only = {
      cmd->add_option("--naming", o->naming, "safetensors key names: wan or diffusers")->capture_default_str(),
      cmd->add_option("--dtype", o->dtype, "safetensors tensor dtype: f32, bf16 or f16")->capture_default_str()};
  o->onnx_only = {
      cmd->add_option("--height", o->height, "onnx: latent height of a chunk (a multiple of the patch)"),
      cmd->add_option("--width", o->width, "onnx: latent width of a chunk (a multiple of the patch)"),
      cmd->add_option("--batch", o->batch, "onnx: batch size (0: a symbolic axis)")->capture_default_str(),
      cmd->add_option("--frames", o->frames, "onnx: latent frames per call (0: symbolic, up to Tc * patch_t)")
          ->capture_default_str(),
      cmd->add_option("--text-len", o->text_len, "onnx: context rows (0: the model's text_len)")->capture_default_str(),
      cmd->add_option("--opset", o->opset, "onnx: opset version")->capture_default_str(),
      cmd->add_option("--onnx-weights", o->onnx_weights,
                      "onnx: weights embedded, external (<out>.data beside it) or auto (external above 1 GiB)")
          ->capture_default_str()};
  cmd->add_option("--config", o->config,
                  "Model YAML or run config, for a checkpoint without rehyat metadata (must agree with it otherwise)");
  cmd->add_option("--set", o->overrides, "Override of a --config key, key=value, repeatable")
      ->take_all()
      ->expected(1);
  cmd->add_flag("--force", o->force, "Replace an existing --out file");
  cmd->callback([o] { run_export(*o); });
}

}  // namespace rehyat::tools
