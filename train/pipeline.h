// The ReHyAt pipeline on one device (SPEC §4): teacher -> cache -> distill -> finetune ->
// sample -> eval, each stage reading the previous stages' files from the run folder and
// writing its own, so any stage can be (re)run alone and a killed run resumes.
//
// Run folder <run.out_dir>/<run.name>/:
//   config.resolved.yaml        the config as run (includes merged, overrides applied)
//   stages.json                 per finished stage: seconds taken, when
//   data/train.h5, heldout.h5   the shapes dataset (data/shapes_dataset.h schema)
//   teacher/model.safetensors   the teacher (Wan key names); state.safetensors while training
//   cache/activations.h5        teacher self-attention inputs/outputs (data/activation_cache.h)
//   distill/block_N.safetensors φ of block N with its error before/after in the metadata;
//   distill/model.safetensors   teacher + φ of the converted blocks; distill/errors.json
//   finetune/model.safetensors  the fine-tuned hybrid DiT
//   samples/<model>/            videos.safetensors, one GIF and PNG strip per prompt, grid.png
//   eval/metrics.json, report.md  per model: the SPEC §5 metrics, held-out loss, and
//                               latency_ms / peak_memory_bytes / latency_mode / device: one
//                               velocity evaluation of one video in the sampling mode
//                               (core/measure.h: median of 5, device synchronized)
// Training stages append metrics to <stage>/metrics.jsonl.
//
// A stage is finished when its final file exists (written atomically, last). `resume`
// continues an interrupted stage from its last state file; without it an existing run
// folder is an error (nothing a user made is overwritten without asking); `force` deletes
// the run folder and starts over.
#pragma once

#include <string>
#include <vector>

#include "core/config.h"
#include "train/run_config.h"

namespace rehyat::train {

// "teacher", "cache", "distill", "finetune", "sample", "eval" in pipeline order.
const std::vector<std::string>& stage_names();

// The file (relative to the run folder) whose existence marks `stage` finished: written
// atomically and last, e.g. "teacher/model.safetensors", "report.md" for eval.
std::string stage_output(const std::string& stage);

struct PipelineOptions {
  bool resume = false;        // continue interrupted stages from their state files
  bool force = false;         // delete an existing run folder first
  bool reuse_folder = false;  // work inside an existing run folder (stage subcommands)
};

// Runs `stages` (a subset of stage_names(), run in pipeline order) of the run described by
// `config` (loaded with declare_run_config). Stages whose output exists are skipped with a
// message.
void run_pipeline(const Config& config, const std::vector<std::string>& stages, const PipelineOptions& options);

}  // namespace rehyat::train
