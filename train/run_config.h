// The run config: one YAML file that drives the whole pipeline (SPEC §4) with
// `rehyat run CONFIG.yaml [key=value ...]` or one stage at a time (`rehyat teacher`,
// `rehyat cache`, ...). Beside `model:` (layers/wan_config.h) and `attention:`
// (attention/attention_config.h) it holds one section per stage:
//
//   run:      name, out_dir, device (cpu|cuda), compute (f32|bf16), seed
//   data:     the shapes dataset (SPEC §5): sizes, objects, speeds, bounces or wrapping, how
//             many videos
//   teacher:  train the toy softmax DiT (or `weights:` a Wan-format safetensors instead)
//   cache:    which teacher activations to store (prompts x seeds x denoising steps)
//   distill:  block-wise feature-map distillation (only φ trains)
//   finetune: flow-matching fine-tuning of the whole hybrid DiT
//   sample:   solver, steps, flow shift, guidance, parallel or recurrent
//   eval:     how many held-out videos the metrics use
//   dist:     data-parallel settings of multi-process runs (`rehyat launch`, mpirun, srun)
//
// Every key has a default except run.name; configs/quickstart.yaml lists them all.
// Errors name the file, line and key (core/config.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention/attention_config.h"
#include "core/config.h"
#include "core/device.h"
#include "core/dtype.h"
#include "data/shapes.h"
#include "layers/wan_config.h"

namespace rehyat::train {

// Optimizer loop settings shared by teacher training and fine-tuning.
struct LoopOptions {
  int64_t steps = 0;
  int64_t batch = 1;
  double lr = 1e-4;
  int64_t warmup = 0;
  double min_lr_ratio = 0.1;
  double weight_decay = 0.0;
  double grad_clip = 1.0;  // 0: off
  int64_t checkpoint_every = 100;
  int64_t log_every = 10;
};

struct RunConfig {
  // run:
  std::string name;
  std::string out_dir = "runs";
  Device device = Device::cpu();
  DType compute = DType::F32;
  uint64_t seed = 0;
  // model: and attention:
  layers::WanConfig model;
  attention::AttentionConfig attention;
  // data:
  data::ShapesOptions shapes;
  int64_t train_videos = 256;
  int64_t heldout_videos = 32;
  uint64_t data_seed = 0;
  // teacher:
  std::string teacher_weights;  // a Wan-format checkpoint to load instead of training
  LoopOptions teacher;
  double caption_dropout = 0.1;  // fraction of training captions replaced by "" (for CFG)
  double shift = 5.0;            // flow-matching training shift
  // cache:
  int64_t cache_prompts = 8;
  int64_t cache_seeds = 1;
  int64_t cache_sample_steps = 10;
  std::vector<int64_t> cache_capture_steps;  // sampling step indices stored; empty: all
  DType cache_dtype = DType::F32;
  int64_t cache_gzip = 0;
  // distill:
  int64_t distill_steps = 200;  // per block
  double distill_lr = 1e-3;
  int64_t distill_batch = 1;          // cache entries per step (the paper: 1)
  double distill_min_lr_ratio = 1.0;  // cosine decay to lr * ratio over the steps (1: fixed lr)
  int64_t distill_eval_entries = 4;  // held out of training, used for the before/after error
  int64_t distill_checkpoint_every = 100;
  int64_t distill_log_every = 20;
  // finetune:
  LoopOptions finetune;
  // sample:
  std::string solver = "unipc";
  int64_t sample_steps = 20;
  double sample_shift = 5.0;
  double guidance = 4.0;
  std::string sample_mode = "recurrent";  // parallel | recurrent (students; the teacher is parallel)
  int64_t sample_prompts = 8;
  // eval:
  int64_t eval_videos = 16;  // held-out videos for the flow-matching loss
  int64_t eval_sigmas = 4;   // noise levels per video
  // dist: (multi-process runs, train/data_parallel.h)
  double dist_bucket_mb = 25;         // gradient all-reduce bucket size
  bool dist_shard_optimizer = false;  // ZeRO-1: AdamW moments sharded over the ranks

  std::string run_dir() const { return out_dir + "/" + name; }
};

// Declares model:, attention: and every pipeline section.
void declare_run_config(ConfigSchema& schema);
// Reads a config loaded with that schema; checks cross-key consistency (text sizes, the
// attention config against the model), naming the file and key.
RunConfig run_config_from(const Config& config);
// Schema + load + read in one call (overrides are `key=value` strings).
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides, Config* resolved = nullptr);

}  // namespace rehyat::train
