// `rehyat flops`: the analytic FLOPs (attention/flops.h) of one forward of a DiT config at
// a video size, per op for a teacher (softmax) block and a block with the configured
// attention, per block, and for the whole model. The model YAML may carry an `attention:`
// section; `--set key=value` overrides either section. Video frames and pixels go in
// (Wan's VAE: (F-1)/4+1 latent frames, pixels/8, then the patch).
//
//   rehyat flops --model configs/models/wan2.1-t2v-1.3b.yaml --frames 81 --height 480 --width 832
//       --set attention.kind=rehyat --set attention.chunk_frames=3 [--json]   (one line)
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "attention/attention_config.h"
#include "attention/flops.h"
#include "core/config.h"
#include "layers/wan_config.h"
#include "tools/commands.h"

namespace rehyat::tools {

namespace {

struct FlopsOptions {
  std::string model_path;
  int64_t frames = 81, height = 480, width = 832;  // video, pixels
  int64_t batch = 1;
  std::vector<std::string> overrides;  // --set key=value
  bool json = false;
};

double tflops(int64_t flops) { return double(flops) / 1e12; }

int64_t op_flops(const attention::BlockFlops& block, const std::string& name) {
  for (const attention::OpFlops& op : block.ops)
    if (op.name == name) return op.flops;
  return 0;
}

// Op names of both blocks in forward order (the softmax block's, with the hybrid's extra
// ones inserted where they occur).
std::vector<std::string> op_names(const attention::BlockFlops& softmax, const attention::BlockFlops& hybrid) {
  std::vector<std::string> names;
  for (const attention::OpFlops& op : hybrid.ops) names.push_back(op.name);
  for (const attention::OpFlops& op : softmax.ops)
    if (std::find(names.begin(), names.end(), op.name) == names.end()) names.insert(names.begin() + 1, op.name);
  return names;
}

void run_flops(const FlopsOptions& options) {
  ConfigSchema schema;
  layers::declare_model_config(schema);
  attention::declare_attention_config(schema);
  const Config file = load_config(options.model_path, schema, options.overrides);
  const layers::WanConfig model = layers::from_config(file);
  const attention::AttentionConfig attention_config = attention::attention_config_from(file, model);
  const layers::TokenGrid grid = attention::video_token_grid(model, options.frames, options.height, options.width);
  const attention::ModelFlops flops = attention::model_flops(model, attention_config, options.batch, grid);
  const std::vector<int> converted = attention_config.converted_blocks(model.num_layers);
  const attention::BlockFlops& softmax = flops.softmax_block;
  const attention::BlockFlops& hybrid = flops.hybrid_block;
  int64_t softmax_model = 0;
  for (const attention::OpFlops& op : flops.embeddings) softmax_model += op.flops;
  for (const attention::OpFlops& op : flops.head) softmax_model += op.flops;
  softmax_model += model.num_layers * softmax.total();

  if (options.json) {
    nlohmann::json j;
    j["model"] = options.model_path;
    j["video"] = {{"frames", options.frames}, {"height", options.height}, {"width", options.width}};
    j["tokens"] = {{"frames", grid.frames}, {"height", grid.height}, {"width", grid.width}, {"total", grid.tokens()}};
    j["batch"] = options.batch;
    j["attention"] = {{"kind", attention::attention_kind_name(attention_config.kind)},
                      {"chunk_frames", attention_config.chunk_frames},
                      {"overlap_frames", attention_config.overlap_frames},
                      {"causal", attention_config.causal},
                      {"degree", attention_config.degree},
                      {"rate", attention_config.rate},
                      {"converted_blocks", converted}};
    j["softmax_block_tflops"] = tflops(softmax.total());
    j["hybrid_block_tflops"] = tflops(hybrid.total());
    j["self_attention_tflops"] = tflops(hybrid.self_attention());
    j["softmax_self_attention_tflops"] = tflops(softmax.self_attention());
    j["model_tflops"] = tflops(flops.total());
    j["softmax_model_tflops"] = tflops(softmax_model);
    for (const std::string& name : op_names(softmax, hybrid))
      j["ops"][name] = {{"softmax_flops", op_flops(softmax, name)}, {"hybrid_flops", op_flops(hybrid, name)}};
    for (const attention::OpFlops& op : flops.embeddings) j["embeddings"][op.name] = op.flops;
    for (const attention::OpFlops& op : flops.head) j["head"][op.name] = op.flops;
    for (size_t i = 0; i < flops.blocks.size(); ++i)
      j["blocks"].push_back({{"index", i}, {"attention", flops.blocks[i].attention}, {"flops", flops.blocks[i].total()}});
    j["counted"] = "matmuls as 2mnk, attention pairs actually used, feature maps and linear state; "
                   "elementwise ops (norms, RoPE, modulation, activations, exp) not counted";
    fmt::print("{}\n", j.dump(2));
    return;
  }

  fmt::print("model {}: video {} x {} x {} -> {} x {} x {} tokens ({} per frame, {} total), batch {}\n",
             options.model_path, options.frames, options.height, options.width, grid.frames, grid.height, grid.width,
             grid.frame_tokens(), grid.tokens(), options.batch);
  fmt::print("attention {}: Tc {}, To {}, causal {}, P {}; {} of {} blocks converted\n\n",
             attention::attention_kind_name(attention_config.kind), attention_config.chunk_frames,
             attention_config.overlap_frames, attention_config.causal, attention_config.degree, converted.size(),
             model.num_layers);
  fmt::print("{:<28} {:>16} {:>16}\n", "op (one block)", "softmax GFLOP", "configured GFLOP");
  for (const std::string& name : op_names(softmax, hybrid))
    fmt::print("{:<28} {:>16.3f} {:>16.3f}\n", name, op_flops(softmax, name) / 1e9, op_flops(hybrid, name) / 1e9);
  fmt::print("{:<28} {:>16.3f} {:>16.3f}\n", "self-attention op", softmax.self_attention() / 1e9,
             hybrid.self_attention() / 1e9);
  fmt::print("{:<28} {:>16.3f} {:>16.3f}\n\n", "block total", softmax.total() / 1e9, hybrid.total() / 1e9);
  fmt::print("{:<28} {:>16}\n", "block", "TFLOP");
  for (size_t i = 0; i < flops.blocks.size(); ++i)
    fmt::print("{:<28} {:>16.4f}\n", fmt::format("{} ({})", i, flops.blocks[i].attention), tflops(flops.blocks[i].total()));
  for (const attention::OpFlops& op : flops.embeddings) fmt::print("{:<28} {:>16.4f}\n", op.name, tflops(op.flops));
  for (const attention::OpFlops& op : flops.head) fmt::print("{:<28} {:>16.4f}\n", op.name, tflops(op.flops));
  fmt::print("\nmodel: {:.3f} TFLOP per forward ({:.3f} with softmax everywhere, {:.1f}%)\n", tflops(flops.total()),
             tflops(softmax_model), 100.0 * double(flops.total()) / double(softmax_model));
  fmt::print("(matmuls as 2mnk; elementwise ops - norms, RoPE, modulation, activations, exp - not counted)\n");
}

}  // namespace

void add_flops_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("flops", "Analytic FLOPs of a DiT config at a video size, per op and per block");
  auto o = std::make_shared<FlopsOptions>();
  cmd->add_option("--model", o->model_path, "Model YAML (model: and optional attention: sections)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--frames", o->frames, "Video frames (4k + 1)")->capture_default_str();
  cmd->add_option("--height", o->height, "Video height in pixels")->capture_default_str();
  cmd->add_option("--width", o->width, "Video width in pixels")->capture_default_str();
  cmd->add_option("--batch", o->batch, "Batch size")->capture_default_str();
  cmd->add_option("--set", o->overrides,
                  "Config override key=value, repeatable (e.g. --set attention.kind=rehyat --set attention.chunk_frames=3)");
  cmd->add_flag("--json", o->json, "Print the results as JSON");
  cmd->callback([o] { run_flops(*o); });
}

}  // namespace rehyat::tools
