// The run config's schema and reader (see run_config.h for the sections).
#include "train/run_config.h"

#include <fmt/format.h>

#include "core/check.h"

namespace rehyat::train {

namespace {

void declare_loop(ConfigSchema& schema, const std::string& s, const LoopOptions& d, const std::string& what) {
  schema.optional<int64_t>(s + ".steps", d.steps, "optimizer steps of " + what)
      .optional<int64_t>(s + ".batch", d.batch, "videos per step: the global batch, split over the ranks of a multi-process run")
      .optional<double>(s + ".lr", d.lr, "peak AdamW learning rate")
      .optional<int64_t>(s + ".warmup", d.warmup, "linear warm-up steps")
      .optional<double>(s + ".min_lr_ratio", d.min_lr_ratio, "cosine decay ends at this fraction of lr")
      .optional<double>(s + ".weight_decay", d.weight_decay, "AdamW decoupled weight decay")
      .optional<double>(s + ".grad_clip", d.grad_clip, "global gradient-norm clip (0: off)")
      .optional<int64_t>(s + ".checkpoint_every", d.checkpoint_every, "steps between resumable checkpoints")
      .optional<int64_t>(s + ".log_every", d.log_every, "steps between metric lines");
}

LoopOptions read_loop(const Config& c, const std::string& s) {
  LoopOptions o;
  o.steps = c.get<int64_t>(s + ".steps");
  o.batch = c.get<int64_t>(s + ".batch");
  o.lr = c.get<double>(s + ".lr");
  o.warmup = c.get<int64_t>(s + ".warmup");
  o.min_lr_ratio = c.get<double>(s + ".min_lr_ratio");
  o.weight_decay = c.get<double>(s + ".weight_decay");
  o.grad_clip = c.get<double>(s + ".grad_clip");
  o.checkpoint_every = c.get<int64_t>(s + ".checkpoint_every");
  o.log_every = c.get<int64_t>(s + ".log_every");
  return o;
}

}  // namespace

void declare_run_config(ConfigSchema& schema) {
  layers::declare_model_config(schema);
  attention::declare_attention_config(schema);
  const RunConfig d;
  const data::ShapesOptions ds;
  schema.section("run", "where the run writes and what it runs on")
      .required<std::string>("run.name", "run name: outputs go to <out_dir>/<name>/")
      .optional<std::string>("run.out_dir", d.out_dir, "parent folder of the run folders")
      .choice("run.device", {"cpu", "cuda"}, "cpu", "device every stage runs on")
      .choice("run.compute", {"f32", "bf16"}, "f32", "compute dtype (parameters and optimizer stay f32)")
      .optional<int64_t>("run.seed", 0, "seed of initialization, noise and timesteps");
  schema.section("data", "the shapes dataset (SPEC §5)")
      .optional<int64_t>("data.frames", ds.frames, "frames per video (= latent frames)")
      .optional<int64_t>("data.height", ds.height, "frame height, pixels")
      .optional<int64_t>("data.width", ds.width, "frame width, pixels")
      .optional<int64_t>("data.min_objects", ds.min_objects, "fewest objects per video")
      .optional<int64_t>("data.max_objects", ds.max_objects, "most objects per video (<= 3)")
      .optional<double>("data.min_speed", ds.min_speed, "slowest object, pixels per frame")
      .optional<double>("data.max_speed", ds.max_speed, "fastest object, pixels per frame")
      .optional<int64_t>("data.clear_frames", ds.clear_frames,
                         "frames of motion before the first bounce (frames - 1: none where the path fits)")
      .optional<bool>("data.wrap", ds.wrap,
                      "objects wrap around the frame edges (a torus), starts uniform, no bounces: clear_frames "
                      "is ignored")
      .optional<double>("data.min_size", ds.min_size, "smallest object radius, pixels")
      .optional<double>("data.max_size", ds.max_size, "largest object radius, pixels")
      .optional<bool>("data.gradient_background", ds.gradient_background, "gradient (else plain) backgrounds")
      .optional<int64_t>("data.train_videos", d.train_videos, "training videos")
      .optional<int64_t>("data.heldout_videos", d.heldout_videos, "held-out videos (prompts for sampling and eval)")
      .optional<int64_t>("data.seed", 0, "dataset seed");
  schema.section("teacher", "stage teacher: train the toy softmax DiT, or load Wan-format weights");
  schema.optional<std::string>("teacher.weights", "", "a Wan-format safetensors to use instead of training");
  LoopOptions teacher;
  teacher.steps = 400;
  teacher.batch = 8;
  teacher.lr = 1e-3;
  teacher.warmup = 40;
  declare_loop(schema, "teacher", teacher, "teacher training");
  schema.optional<double>("teacher.caption_dropout", d.caption_dropout, "fraction of captions replaced by \"\"")
      .optional<double>("teacher.shift", d.shift, "flow-matching timestep shift");
  schema.section("cache", "stage cache: teacher self-attention activations for distillation")
      .optional<int64_t>("cache.prompts", d.cache_prompts, "training captions sampled")
      .optional<int64_t>("cache.seeds", d.cache_seeds, "noise seeds per caption")
      .optional<int64_t>("cache.sample_steps", d.cache_sample_steps, "denoising steps of the teacher's sampling")
      .optional<std::vector<int64_t>>("cache.capture_steps", {}, "steps stored (empty: all)")
      .choice("cache.dtype", {"f32", "bf16"}, "f32", "stored dtype")
      .optional<int64_t>("cache.gzip", 0, "gzip level of the HDF5 chunks (0: none)");
  schema.section("distill", "stage distill: feature maps of each converted block, only φ trains")
      .optional<int64_t>("distill.steps", d.distill_steps, "optimizer steps per block")
      .optional<double>("distill.lr", d.distill_lr, "AdamW learning rate")
      .optional<int64_t>("distill.batch", d.distill_batch, "cache entries per step (the paper: 1)")
      .optional<double>("distill.min_lr_ratio", d.distill_min_lr_ratio,
                        "cosine decay to lr * ratio over the steps (1: fixed lr, the paper's)")
      .optional<int64_t>("distill.eval_entries", d.distill_eval_entries, "cache entries held out to measure error")
      .optional<int64_t>("distill.checkpoint_every", d.distill_checkpoint_every, "steps between checkpoints")
      .optional<int64_t>("distill.log_every", d.distill_log_every, "steps between metric lines");
  schema.section("finetune", "stage finetune: all parameters of the hybrid DiT, flow matching");
  LoopOptions finetune;
  finetune.steps = 200;
  finetune.batch = 8;
  finetune.lr = 2e-4;
  finetune.warmup = 20;
  declare_loop(schema, "finetune", finetune, "fine-tuning");
  schema.section("sample", "stage sample: videos from the teacher and the students")
      .choice("sample.solver", {"euler", "unipc"}, d.solver, "ODE solver")
      .optional<int64_t>("sample.steps", d.sample_steps, "denoising steps")
      .optional<double>("sample.shift", d.sample_shift, "flow shift of the sampling schedule")
      .optional<double>("sample.guidance", d.guidance, "classifier-free guidance scale (1: off)")
      .choice("sample.mode", {"parallel", "recurrent"}, d.sample_mode,
              "students: all frames at once, or chunk by chunk (causal rehyat only)")
      .optional<int64_t>("sample.prompts", d.sample_prompts, "held-out captions sampled");
  schema.section("eval", "stage eval: SPEC §5 metrics and the report")
      .optional<int64_t>("eval.videos", d.eval_videos, "held-out videos for the flow-matching loss")
      .optional<int64_t>("eval.sigmas", d.eval_sigmas, "noise levels per video for that loss");
  schema.section("dist", "multi-process runs: data-parallel teacher and fine-tuning, block-parallel distillation")
      .optional<double>("dist.bucket_mb", d.dist_bucket_mb, "gradient all-reduce bucket size, MiB")
      .optional<bool>("dist.shard_optimizer", d.dist_shard_optimizer,
                      "ZeRO-1: each rank keeps the AdamW moments of its share of the parameters");
}

RunConfig run_config_from(const Config& c) {
  RunConfig r;
  r.name = c.get<std::string>("run.name");
  REHYAT_CHECK(!r.name.empty() && r.name.find('/') == std::string::npos && r.name != "." && r.name != "..",
               "{}: run.name '{}' must be a plain folder name", c.origin("run.name"), r.name);
  r.out_dir = c.get<std::string>("run.out_dir");
  r.device = c.get<std::string>("run.device") == "cuda" ? Device::cuda(0) : Device::cpu();
  r.compute = parse_dtype(c.get<std::string>("run.compute"), "run.compute");
  r.seed = uint64_t(c.get<int64_t>("run.seed"));
  r.model = layers::from_config(c);
  r.attention = attention::attention_config_from(c, r.model);

  r.shapes.frames = c.get<int64_t>("data.frames");
  r.shapes.height = c.get<int64_t>("data.height");
  r.shapes.width = c.get<int64_t>("data.width");
  r.shapes.min_objects = c.get<int64_t>("data.min_objects");
  r.shapes.max_objects = c.get<int64_t>("data.max_objects");
  r.shapes.min_speed = c.get<double>("data.min_speed");
  r.shapes.max_speed = c.get<double>("data.max_speed");
  r.shapes.clear_frames = c.get<int64_t>("data.clear_frames");
  r.shapes.wrap = c.get<bool>("data.wrap");
  r.shapes.min_size = c.get<double>("data.min_size");
  r.shapes.max_size = c.get<double>("data.max_size");
  r.shapes.gradient_background = c.get<bool>("data.gradient_background");
  r.shapes.text_len = r.model.text_len;
  r.shapes.text_dim = r.model.text_dim;
  r.train_videos = c.get<int64_t>("data.train_videos");
  r.heldout_videos = c.get<int64_t>("data.heldout_videos");
  r.data_seed = uint64_t(c.get<int64_t>("data.seed"));

  r.teacher_weights = c.get<std::string>("teacher.weights");
  r.teacher = read_loop(c, "teacher");
  r.caption_dropout = c.get<double>("teacher.caption_dropout");
  r.shift = c.get<double>("teacher.shift");

  r.cache_prompts = c.get<int64_t>("cache.prompts");
  r.cache_seeds = c.get<int64_t>("cache.seeds");
  r.cache_sample_steps = c.get<int64_t>("cache.sample_steps");
  r.cache_capture_steps = c.get<std::vector<int64_t>>("cache.capture_steps");
  r.cache_dtype = parse_dtype(c.get<std::string>("cache.dtype"), "cache.dtype");
  r.cache_gzip = c.get<int64_t>("cache.gzip");

  r.distill_steps = c.get<int64_t>("distill.steps");
  r.distill_lr = c.get<double>("distill.lr");
  r.distill_batch = c.get<int64_t>("distill.batch");
  r.distill_min_lr_ratio = c.get<double>("distill.min_lr_ratio");
  r.distill_eval_entries = c.get<int64_t>("distill.eval_entries");
  r.distill_checkpoint_every = c.get<int64_t>("distill.checkpoint_every");
  r.distill_log_every = c.get<int64_t>("distill.log_every");

  r.finetune = read_loop(c, "finetune");

  r.solver = c.get<std::string>("sample.solver");
  r.sample_steps = c.get<int64_t>("sample.steps");
  r.sample_shift = c.get<double>("sample.shift");
  r.guidance = c.get<double>("sample.guidance");
  r.sample_mode = c.get<std::string>("sample.mode");
  r.sample_prompts = c.get<int64_t>("sample.prompts");

  r.eval_videos = c.get<int64_t>("eval.videos");
  r.eval_sigmas = c.get<int64_t>("eval.sigmas");
  r.dist_bucket_mb = c.get<double>("dist.bucket_mb");
  r.dist_shard_optimizer = c.get<bool>("dist.shard_optimizer");

  // Cross-key checks, each naming where the offending value came from.
  std::vector<std::string> problems;
  auto need = [&](bool ok, const std::string& key, const std::string& message) {
    if (!ok) problems.push_back(fmt::format("{}: {}: {}", c.origin(key), key, message));
  };
  need(!(r.device.is_cpu() && r.compute != DType::F32), "run.compute", "bf16 compute needs run.device cuda");
  need(r.model.in_dim == 3 && r.model.out_dim == 3, "model.in_dim",
       "the shapes pipeline feeds RGB videos as latents: model.in_dim and model.out_dim must be 3");
  need(r.shapes.height % r.model.patch_size[1] == 0 && r.shapes.width % r.model.patch_size[2] == 0, "data.height",
       "frame size must be a multiple of the patch size");
  need(r.shapes.frames % r.model.patch_size[0] == 0, "data.frames", "frames must be a multiple of the temporal patch");
  need(r.shapes.min_objects >= 1 && r.shapes.min_objects <= r.shapes.max_objects && r.shapes.max_objects <= 3,
       "data.max_objects", "need 1 <= min_objects <= max_objects <= 3");
  need(r.train_videos >= 1, "data.train_videos", "need at least one training video");
  need(r.heldout_videos >= std::max(r.sample_prompts, r.eval_videos), "data.heldout_videos",
       "must be at least sample.prompts and eval.videos");
  for (const char* s : {"teacher", "finetune"}) {
    const LoopOptions& o = std::string(s) == "teacher" ? r.teacher : r.finetune;
    need(o.batch >= 1, std::string(s) + ".batch", "must be >= 1");
    need(o.steps >= 0, std::string(s) + ".steps", "must be >= 0");
    need(o.checkpoint_every >= 1 && o.log_every >= 1, std::string(s) + ".checkpoint_every",
         "checkpoint_every and log_every must be >= 1");
  }
  need(r.cache_prompts >= 1 && r.cache_seeds >= 1 && r.cache_sample_steps >= 1, "cache.prompts",
       "prompts, seeds and sample_steps must be >= 1");
  for (int64_t s : r.cache_capture_steps)
    need(s >= 0 && s < r.cache_sample_steps, "cache.capture_steps",
         fmt::format("step {} is outside 0..sample_steps-1", s));
  need(r.cache_gzip >= 0 && r.cache_gzip <= 9, "cache.gzip", "must be 0..9");
  const int64_t entries = r.cache_prompts * r.cache_seeds *
                          (r.cache_capture_steps.empty() ? r.cache_sample_steps : int64_t(r.cache_capture_steps.size()));
  need(r.distill_eval_entries >= 1 && r.distill_eval_entries < entries, "distill.eval_entries",
       fmt::format("must be in 1..{} (the cache holds {} entries)", entries - 1, entries));
  need(r.distill_batch >= 1 && r.distill_batch <= entries - r.distill_eval_entries, "distill.batch",
       fmt::format("must be in 1..{} (the training entries of the cache)", entries - r.distill_eval_entries));
  need(r.distill_min_lr_ratio > 0 && r.distill_min_lr_ratio <= 1, "distill.min_lr_ratio", "must be in (0, 1]");
  need(r.distill_checkpoint_every >= 1 && r.distill_log_every >= 1, "distill.checkpoint_every",
       "checkpoint_every and log_every must be >= 1");
  need(r.sample_steps >= 1 && r.sample_prompts >= 1, "sample.steps", "steps and prompts must be >= 1");
  need(r.sample_mode == "parallel" || (r.attention.kind == attention::AttentionKind::Rehyat && r.attention.causal),
       "sample.mode", "recurrent sampling needs attention.kind rehyat with causal true");
  need(r.sample_mode == "parallel" ||
           int64_t(r.attention.converted_blocks(r.model.num_layers).size()) == r.model.num_layers,
       "sample.mode", "recurrent sampling needs every block converted (attention.hybrid_blocks / hybrid_block_count)");
  need(r.eval_videos >= 1 && r.eval_sigmas >= 1, "eval.videos", "videos and sigmas must be >= 1");
  need(r.dist_bucket_mb > 0, "dist.bucket_mb", "must be positive");
  if (!problems.empty()) REHYAT_FAIL("{}: invalid run config:\n  {}", c.source(), fmt::join(problems, "\n  "));
  return r;
}

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides, Config* resolved) {
  ConfigSchema schema;
  declare_run_config(schema);
  Config config = load_config(path, schema, overrides);
  RunConfig r = run_config_from(config);
  if (resolved) *resolved = std::move(config);
  return r;
}

}  // namespace rehyat::train
