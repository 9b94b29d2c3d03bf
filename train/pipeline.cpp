// The pipeline stages (see pipeline.h for the run folder). Everything random is a pure
// function of (run.seed, step) — noise, timesteps, caption dropout, distillation entry
// choice — and the data loader's order of (data seed, epoch), so a stage resumed from its
// state file continues exactly as if it had never stopped (bit-identical on the CPU).
#include "train/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/atomic_file.h"
#include "core/check.h"
#include "core/log.h"
#include "core/measure.h"
#include "core/safetensors.h"
#include "data/activation_cache.h"
#include "data/shapes_dataset.h"
#include "data/text_encoder.h"
#include "export/model_metadata.h"
#include "layers/hybrid_core.h"
#include "layers/recurrent_forward.h"
#include "layers/wan_checkpoint.h"
#include "layers/wan_model.h"
#include "train/data_parallel.h"
#include "train/dist_comm.h"
#include "train/eval_metrics.h"
#include "train/flow_matching.h"
#include "train/optimizer.h"
#include "train/sampler.h"
#include "train/train_log.h"
#include "train/train_state.h"
#include "train/video_io.h"

namespace rehyat::train {

namespace fs = std::filesystem;
using json = nlohmann::json;
using layers::NamedTensors;
using layers::WanModel;

const std::vector<std::string>& stage_names() {
  static const std::vector<std::string> names = {"teacher", "cache", "distill", "finetune", "sample", "eval"};
  return names;
}

std::string stage_output(const std::string& stage) {
  if (stage == "teacher") return "teacher/model.safetensors";
  if (stage == "cache") return "cache/done";
  if (stage == "distill") return "distill/model.safetensors";
  if (stage == "finetune") return "finetune/model.safetensors";
  if (stage == "sample") return "samples/done";
  REHYAT_CHECK(stage == "eval", "unknown stage '{}' (stages: teacher, cache, distill, finetune, sample, eval)", stage);
  return "report.md";
}

namespace {

// Streams of the run seed, one per use, so no two uses share Philox counters.
enum SeedStream : uint64_t { kTeacherStream = 1, kFinetuneStream, kDistillStream, kCacheNoise, kSampleNoise, kEvalNoise,
                             kDropout, kPhiInit };
uint64_t stream_seed(uint64_t seed, SeedStream stream) { return seed * 0x9E3779B97F4A7C15ull + uint64_t(stream); }

void write_text_atomically(const std::string& path, const std::string& text) {
  AtomicFileWriter writer(path);
  writer.write(text.data(), text.size());
  writer.commit();
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  REHYAT_CHECK(in.good(), "cannot read '{}'", path);
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    REHYAT_FAIL("'{}' is not valid JSON: {}", path, e.what());
  }
}

// Copies `values` (any device/dtype) into the model parameters of the same names.
void assign_parameters(const NamedTensors& params, const std::map<std::string, Tensor>& values,
                       const std::string& source) {
  for (const auto& [name, p] : params) {
    auto it = values.find(name);
    REHYAT_CHECK(it != values.end(), "{}: no tensor '{}'", source, name);
    REHYAT_CHECK(it->second.shape() == p.shape(), "{}: tensor '{}' has shape {}, the model wants {}", source, name,
                 shape_str(it->second.shape()), shape_str(p.shape()));
    Tensor dst = p;
    dst.copy_(it->second);
  }
}

std::vector<Tensor> tensors_of(const NamedTensors& named) {
  std::vector<Tensor> out;
  for (const auto& [name, t] : named) out.push_back(t);
  return out;
}

// How long ranks wait for rank 0's work of a single-rank stage (cache, sample, eval): no
// real limit -- a rank that dies is still reported at once by the control channel.
constexpr double kRankZeroWaitSeconds = 7 * 24 * 3600.0;

class Pipeline {
 public:
  // comm: null, or the communicator of a multi-process run (every rank runs this).
  Pipeline(const Config& config, const PipelineOptions& options, dist::Communicator* comm)
      : resolved_(config), cfg_(run_config_from(config)), options_(options), dir_(cfg_.run_dir()),
        encoder_(cfg_.model.text_len, cfg_.model.text_dim, cfg_.data_seed), comm_(comm) {
    if (comm_) cfg_.device = comm_->device();
  }

  // Multi-process runs: teacher training and fine-tuning are data-parallel, distillation
  // block-parallel; cache, sample and eval run on rank 0 while the others wait. Rank 0
  // alone writes the run folder's shared files (config, stage times, final models).
  void run(const std::vector<std::string>& stages) {
    if (rank() == 0) prepare_run_folder();
    wait_for_rank_zero("the run folder");
    for (const std::string& stage : stage_names()) {
      if (std::find(stages.begin(), stages.end(), stage) == stages.end()) continue;
      const auto start = std::chrono::steady_clock::now();
      const bool done = agree(stage_done(stage));
      if (rank() == 0) log::info("stage {}: {}", stage, done ? "already finished, skipped" : "running");
      if (done) continue;
      const bool every_rank = stage == "teacher" || stage == "distill" || stage == "finetune";
      if (every_rank && stage != "distill") {  // rank 0 writes the datasets the ranks then read
        if (rank() == 0) ensure_datasets();
        wait_for_rank_zero("datasets");
      }
      if (every_rank || rank() == 0) {
        if (stage == "teacher") teacher();
        if (stage == "cache") cache();
        if (stage == "distill") distill();
        if (stage == "finetune") finetune();
        if (stage == "sample") sample();
        if (stage == "eval") eval();
      }
      wait_for_rank_zero("stage " + stage);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (rank() != 0) continue;
      record_stage_time(stage, seconds);
      log::info("stage {}: done in {:.1f} s", stage, seconds);
    }
  }

 private:
  // --- ranks ------------------------------------------------------------------------------
  int rank() const { return comm_ ? comm_->rank() : 0; }
  int world() const { return comm_ ? comm_->world_size() : 1; }

  // Every rank waits until all (in practice: rank 0, which did the single-rank work) got here.
  void wait_for_rank_zero(const std::string& what) {
    if (world() > 1) comm_->control().barrier("pipeline: " + what, kRankZeroWaitSeconds);
  }
  // Rank 0's answer on every rank (they see one run folder, but not at the same instant).
  bool agree(bool value) {
    if (world() == 1) return value;
    return comm_->control().broadcast("pipeline: agree", value ? "1" : "0", comm_->timeout_seconds()) == "1";
  }

  // --- run folder -------------------------------------------------------------------------
  std::string path(const std::string& relative) const { return dir_ + "/" + relative; }
  bool exists(const std::string& relative) const { return fs::exists(path(relative)); }

  bool stage_done(const std::string& stage) const { return exists(stage_output(stage)); }

  void prepare_run_folder() {
    if (fs::exists(dir_) && options_.force) {
      log::warn("--force: deleting {}", dir_);
      fs::remove_all(dir_);
    }
    const bool existing = fs::exists(path("config.resolved.yaml"));
    REHYAT_CHECK(!existing || options_.reuse_folder,
                 "run folder '{}' already holds a run: pass --resume to continue it, or --force to delete it and "
                 "start over",
                 dir_);
    if (existing) {
      // Compare the YAML without its comment header (which names the source and overrides).
      std::ifstream in(path("config.resolved.yaml"));
      std::string before, line;
      while (std::getline(in, line))
        if (line.empty() || line[0] != '#') before += line + "\n";
      if (before == resolved_.to_yaml() + (resolved_.to_yaml().ends_with('\n') ? "" : "\n")) return;
      // Keep the config the earlier stages ran with beside the new one.
      const std::string kept = path(fmt::format("config.resolved.{}.yaml", std::time(nullptr)));
      fs::rename(path("config.resolved.yaml"), kept);
      log::warn("{}: the config differs from the one the run started with (kept as {}); finished stages keep "
                "their outputs",
                path("config.resolved.yaml"), kept);
    }
    fs::create_directories(dir_);
    resolved_.save_resolved(dir_);
  }

  void record_stage_time(const std::string& stage, double seconds) {
    json times = exists("stages.json") ? read_json(path("stages.json")) : json::object();
    times[stage] = {{"seconds", seconds}, {"device", cfg_.device.str()}};
    write_text_atomically(path("stages.json"), times.dump(2) + "\n");
  }

  // --- data -------------------------------------------------------------------------------
  // The training and held-out sets: written once (the held-out set continues the indices
  // of the training set, so no video is in both).
  void ensure_datasets() {
    fs::create_directories(path("data"));
    if (!exists("data/train.h5"))
      data::write_shapes_dataset(path("data/train.h5"), cfg_.shapes, cfg_.data_seed, 0, cfg_.train_videos, encoder_);
    if (!exists("data/heldout.h5"))
      data::write_shapes_dataset(path("data/heldout.h5"), cfg_.shapes, cfg_.data_seed, cfg_.train_videos,
                                 cfg_.heldout_videos, encoder_);
  }

  // --- models -----------------------------------------------------------------------------
  WanModel new_model() const { return WanModel(cfg_.model, cfg_.device, DType::F32, cfg_.seed); }

  WanModel teacher_model() const {
    WanModel model = new_model();
    layers::load_checkpoint(model, path("teacher/model.safetensors"));
    model.set_requires_grad(false);
    return model;
  }

  // The student's attention config: the run's, with the converted blocks distillation chose.
  attention::AttentionConfig student_attention() const {
    const json errors = read_json(path("distill/errors.json"));
    attention::AttentionConfig a = cfg_.attention;
    a.hybrid_blocks = errors.at("converted_blocks").get<std::vector<int64_t>>();
    a.block_ranking = errors.at("ranking").get<std::vector<int64_t>>();
    a.hybrid_block_count = 0;
    return a;
  }

  WanModel student_model(const std::string& weights) const {
    WanModel model = new_model();
    layers::apply_attention_config(model, student_attention(), stream_seed(cfg_.seed, kPhiInit));
    layers::load_checkpoint(model, weights);
    model.set_requires_grad(false);
    return model;
  }

  // Blocks distillation trains: the explicit list, else every block (a count picks the
  // best of them afterwards).
  std::vector<int> candidate_blocks() const {
    std::vector<int> blocks;
    if (!cfg_.attention.hybrid_blocks.empty()) {
      for (int64_t b : cfg_.attention.hybrid_blocks) blocks.push_back(int(b));
    } else {
      for (int b = 0; b < cfg_.model.num_layers; ++b) blocks.push_back(b);
    }
    return blocks;
  }

  // Unconditional context (the empty caption) for a batch.
  Tensor null_context(int64_t batch) const {
    return Tensor::zeros({batch, cfg_.model.text_len, cfg_.model.text_dim}, DType::F32, cfg_.device);
  }

  // --- training loop (teacher and fine-tuning) ---------------------------------------------
  // Data-parallel over the ranks: `o.batch` is the global batch, each rank takes every
  // world-th sample of it (data::DataLoader's sharding) and draws that sample's noise,
  // timestep and caption dropout at its global index, so the ranks together compute the
  // one-process step (up to the order of the gradient sums). The state file is written by
  // rank 0 with the full optimizer state and the loader position in global samples, so
  // it resumes on any number of ranks.
  void train_flow_matching(WanModel& model, const LoopOptions& o, const std::string& stage, SeedStream stream) {
    const uint64_t seed = stream_seed(cfg_.seed, stream);
    REHYAT_CHECK(o.batch % world() == 0, "{}.batch {} is the global batch: it must be a multiple of the {} ranks",
                 stage, o.batch, world());
    const int64_t local_batch = o.batch / world();
    if (rank() == 0) fs::create_directories(path(stage));
    const std::string state_path = path(stage + "/state.safetensors");
    model.set_requires_grad(true);
    const NamedTensors params = model.named_parameters();
    const std::vector<Tensor> param_tensors = tensors_of(params);
    DataParallelTrainer trainer(comm_, params, AdamWOptions{o.lr, 0.9, 0.999, 1e-8, o.weight_decay},
                                DataParallelOptions{cfg_.dist_bucket_mb, cfg_.dist_shard_optimizer});
    const LrSchedule schedule{o.lr, o.warmup, o.steps, o.min_lr_ratio};
    const data::ShapesDataset dataset = data::ShapesDataset::open(path("data/train.h5"));
    data::DataLoader loader(dataset, local_batch, seed, /*shuffle=*/true, rank(), world());
    int64_t step = 0;
    if (agree(fs::exists(state_path))) {
      REHYAT_CHECK(options_.resume, "'{}' exists: pass --resume to continue that training", state_path);
      TrainState state = load_train_state(state_path);
      std::map<std::string, Tensor> values(state.model.begin(), state.model.end());
      assign_parameters(params, values, state_path);
      trainer.load_optimizer_state(state.optimizer);
      REHYAT_CHECK(state.data.index % world() == 0,
                   "{}: the data position ({} samples into epoch {}) does not split over {} ranks", state_path,
                   state.data.index, state.data.epoch, world());
      loader.set_position({state.data.epoch, state.data.index / world()});
      step = state.step;
      if (rank() == 0) log::info("{}: resuming at step {} from {}", stage, step, state_path);
    }
    if (world() > 1 && rank() == 0)
      log::info("{}: data-parallel over {} ranks ({} backend), {} videos per rank per step, {} gradient buckets{}",
                stage, world(), comm_->backend(), local_batch, trainer.bucket_count(),
                cfg_.dist_shard_optimizer ? ", optimizer state sharded" : "");
    std::optional<TrainLog> train_log;
    if (rank() == 0) train_log.emplace(path(stage + "/metrics.jsonl"), stage, o.steps, step);
    const FlowMatchingOptions fm_options{cfg_.shift};
    const SampleSlice slice{rank(), world()};
    for (; step < o.steps; ++step) {
      const data::Batch batch = loader.next();
      const int64_t b = batch.videos.size(0);
      // Caption dropout: whole captions become "" (zeros) so the model also learns the
      // unconditional velocity classifier-free guidance needs.
      const std::vector<double> u =
          Tensor::rand({o.batch}, stream_seed(seed, kDropout), uint64_t(step * o.batch)).to_vector();
      std::vector<double> kept(static_cast<size_t>(b));
      for (int64_t j = 0; j < b; ++j)
        kept[size_t(j)] = u[size_t(slice.first + j * slice.stride)] < cfg_.caption_dropout ? 0.0 : 1.0;
      const Tensor text = mul(batch.text.to(cfg_.device), Tensor::from_vector(kept, {b, 1, 1}).to(cfg_.device));
      const FlowMatchingBatch fm =
          make_flow_matching_batch(batch.videos.to(cfg_.device), seed, step, fm_options, slice);
      trainer.zero_grad();
      const Tensor velocity = model.forward(fm.noisy, fm.timestep, text, cfg_.compute);
      Tensor loss = flow_matching_loss(velocity, fm.target);
      const double local_loss = loss.item();
      check_finite("loss", local_loss, step);
      loss.backward();
      trainer.finish_gradients();
      const double grad_norm = clip_grad_norm(param_tensors, o.grad_clip > 0 ? o.grad_clip : INFINITY);
      check_finite("gradient norm", grad_norm, step);
      const double lr = schedule.at(step);
      trainer.step(lr);
      const int64_t done = step + 1;
      if (done % o.log_every == 0 || done == o.steps) {
        const double loss_value = trainer.average(local_loss);  // the global batch's loss
        if (train_log) train_log->log(done, {{"loss", loss_value}, {"lr", lr}, {"grad_norm", grad_norm}});
      }
      if (done % o.checkpoint_every == 0 && done < o.steps) {
        TrainState state;
        state.step = done;
        state.model = params;
        state.optimizer = trainer.optimizer_state();  // every rank: a collective when sharded
        const data::LoaderPosition position = loader.position();
        state.data = {position.epoch, position.index * world()};
        state.seed = seed;
        state.extra = {{"stage", stage}, {"world_size", world()}};
        if (comm_) comm_->check();
        if (rank() == 0) save_train_state(state_path, state);
      }
    }
    if (train_log) train_log->finish();
    model.set_requires_grad(false);
  }

  // --- stages -----------------------------------------------------------------------------
  void teacher() {
    if (rank() == 0) {
      ensure_datasets();
      fs::create_directories(path("teacher"));
    }
    WanModel model = new_model();
    if (!cfg_.teacher_weights.empty()) {
      layers::load_checkpoint(model, cfg_.teacher_weights);
      log::info("teacher: loaded {} ({} parameters)", cfg_.teacher_weights, model.parameter_count());
    } else {
      if (rank() == 0)
        log::info("teacher: training a {}-parameter softmax DiT for {} steps", model.parameter_count(),
                  cfg_.teacher.steps);
      train_flow_matching(model, cfg_.teacher, "teacher", kTeacherStream);
    }
    if (rank() != 0) return;
    layers::save_checkpoint(model, path("teacher/model.safetensors"), layers::CheckpointNaming::Wan, DType::F32,
                            exporting::checkpoint_metadata(cfg_.model, attention::AttentionConfig{}));
  }

  SamplerOptions sampler_options(bool recurrent) const {
    SamplerOptions s;
    s.solver = cfg_.solver;
    s.steps = cfg_.sample_steps;
    s.shift = cfg_.sample_shift;
    s.guidance = cfg_.guidance;
    s.recurrent = recurrent;
    s.compute = cfg_.compute;
    return s;
  }

  Shape video_shape(int64_t batch) const {
    return {batch, 3, cfg_.shapes.frames, cfg_.shapes.height, cfg_.shapes.width};
  }

  // Teacher sampling trajectories of training captions; at the chosen denoising steps each
  // candidate block's self-attention input and output (conditional branch) are stored.
  void cache() {
    ensure_datasets();
    fs::create_directories(path("cache"));
    const WanModel model = teacher_model();
    const data::ShapesDataset dataset = data::ShapesDataset::open(path("data/train.h5"));
    REHYAT_CHECK(cfg_.cache_prompts <= dataset.size(), "cache.prompts {} exceeds the {} training videos",
                 cfg_.cache_prompts, dataset.size());
    std::vector<int64_t> capture = cfg_.cache_capture_steps;
    if (capture.empty())
      for (int64_t s = 0; s < cfg_.cache_sample_steps; ++s) capture.push_back(s);
    const std::set<int64_t> capture_set(capture.begin(), capture.end());
    const std::vector<int> blocks = candidate_blocks();
    const int64_t tokens = cfg_.shapes.frames / cfg_.model.patch_size[0] * (cfg_.shapes.height / cfg_.model.patch_size[1]) *
                           (cfg_.shapes.width / cfg_.model.patch_size[2]);
    const int64_t total = cfg_.cache_prompts * cfg_.cache_seeds * int64_t(capture_set.size());
    data::ActivationCacheWriter writer(path("cache/activations.h5"), blocks, tokens, cfg_.model.dim, total,
                                       cfg_.cache_dtype, model_hash(path("teacher/model.safetensors")),
                                       int(cfg_.cache_gzip));
    int64_t entry = 0;
    SamplerOptions options = sampler_options(false);
    options.steps = cfg_.cache_sample_steps;
    TrainLog progress(path("cache/progress.jsonl"), "cache", cfg_.cache_prompts * cfg_.cache_seeds,
                      writer.entries_written() / int64_t(capture_set.size()));
    for (int64_t p = 0; p < cfg_.cache_prompts; ++p) {
      for (int64_t s = 0; s < cfg_.cache_seeds; ++s) {
        const int64_t first_entry = entry;
        entry += int64_t(capture_set.size());
        if (entry <= writer.entries_written()) continue;  // finished before a restart
        const uint64_t seed = stream_seed(cfg_.seed + uint64_t(s), kCacheNoise);
        const Tensor noise = Tensor::randn(video_shape(1), seed, uint64_t(p) * uint64_t(shape_numel(video_shape(1))),
                                           DType::F32, cfg_.device);
        const Tensor context = dataset.text_embedding(p).unsqueeze(0).to(cfg_.device);
        int64_t next_entry = first_entry;
        int64_t step = 0;  // the solvers evaluate the velocity once per step
        auto velocity = [&](const Tensor& x, double sigma) {
          std::map<int, std::pair<Tensor, Tensor>> captured;
          const bool store = capture_set.count(step) && next_entry >= writer.entries_written();
          const layers::BlockHook hook = [&](int block, const layers::BlockActivations& a) {
            if (store && std::find(blocks.begin(), blocks.end(), block) != blocks.end())
              captured[block] = {a.self_attn_input.select(0, 0).to(DType::F32).to(Device::cpu()),
                                 a.self_attn_output.select(0, 0).to(DType::F32).to(Device::cpu())};
          };
          const Tensor v = guided_velocity(model, x, sigma, context, hook);
          if (capture_set.count(step)) {
            if (store)
              writer.append({p, seed, step, sigma}, captured);
            ++next_entry;
          }
          ++step;
          return v;
        };
        sample_flow(velocity, noise, options);
        progress.log(p * cfg_.cache_seeds + s + 1, {{"entries", double(writer.entries_written())}});
      }
    }
    progress.finish();
    write_text_atomically(path("cache/done"), fmt::format("{} entries\n", writer.entries_written()));
  }

  // v = v_u + g (v_c - v_u) for one conditional video (the hook sees the conditional pass).
  Tensor guided_velocity(const WanModel& model, const Tensor& x, double sigma, const Tensor& context,
                         const layers::BlockHook& hook) const {
    autograd::NoGradGuard no_grad;
    const Tensor t = Tensor::full({x.size(0)}, 1000.0 * sigma, DType::F32, cfg_.device);
    const Tensor vc = model.forward(x, t, context, cfg_.compute, hook);
    if (cfg_.guidance == 1.0) return vc;
    const Tensor vu = model.forward(x, t, null_context(x.size(0)), cfg_.compute);
    return add(vu, mul(sub(vc, vu), cfg_.guidance));
  }

  static std::string model_hash(const std::string& file) {
    // FNV-1a over the checkpoint bytes: ties a cache to the teacher it came from.
    std::ifstream in(file, std::ios::binary);
    REHYAT_CHECK(in.good(), "cannot read '{}'", file);
    uint64_t h = 0xcbf29ce484222325ull;
    char buffer[1 << 16];
    while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
      for (std::streamsize i = 0; i < in.gcount(); ++i) {
        h ^= uint8_t(buffer[i]);
        h *= 0x100000001b3ull;
      }
    }
    return fmt::format("{:016x}", h);
  }

  // Relative error of a block's self-attention output on cache entries: mean squared error
  // over the mean squared teacher output.
  double block_error(const WanModel& model, int block, const data::ActivationCacheReader& reader,
                     const std::vector<int64_t>& entries, const layers::RopeTables& rope,
                     const layers::Precision& precision) const {
    autograd::NoGradGuard no_grad;
    double err = 0, ref = 0;
    for (int64_t e : entries) {
      const auto [in, out] = reader.read(block, e);
      const Tensor target = out.to(cfg_.device);
      const Tensor y = model.block(block).self_attn.forward(in.unsqueeze(0).to(cfg_.device), rope, precision);
      const Tensor diff = sub(y.select(0, 0).to(DType::F32), target);
      err += mean(mul(diff, diff)).item();
      ref += mean(mul(target, target)).item();
    }
    return err / std::max(ref, 1e-30);
  }

  // Block-parallel over the ranks: with at least as many candidate blocks as ranks, rank r
  // distills blocks r, r + world, ... alone (reading only their cache entries); with more
  // ranks than blocks every block is trained by all ranks in turn, data-parallel (each
  // rank its share of distill.batch, gradients averaged). Each block's φ and its error
  // before/after go to distill/block_N.safetensors (resume skips finished blocks); rank 0
  // then gathers them into errors.json and the distilled student.
  void distill() {
    if (rank() == 0) fs::create_directories(path("distill"));
    wait_for_rank_zero("distill folder");
    const data::ActivationCacheReader reader = data::ActivationCacheReader::open(path("cache/activations.h5"));
    const int64_t entries = reader.entries();
    REHYAT_CHECK(entries > cfg_.distill_eval_entries, "{}: {} entries, but distill.eval_entries is {}",
                 reader.path(), entries, cfg_.distill_eval_entries);
    // The last eval_entries entries (later prompts) measure the error; the rest train.
    std::vector<int64_t> train_entries, eval_entries;
    for (int64_t e = 0; e < entries; ++e) (e < entries - cfg_.distill_eval_entries ? train_entries : eval_entries).push_back(e);

    WanModel model = teacher_model();
    const std::vector<int> blocks = candidate_blocks();
    attention::AttentionConfig all = cfg_.attention;
    all.hybrid_blocks.assign(blocks.begin(), blocks.end());
    all.hybrid_block_count = 0;
    all.block_ranking.clear();
    layers::apply_attention_config(model, all, stream_seed(cfg_.seed, kPhiInit));
    model.set_requires_grad(false);
    // RoPE tables and precision of the video's token grid.
    const layers::PreparedInputs prepared =
        model.prepare(Tensor::zeros(video_shape(1), DType::F32, cfg_.device), Tensor::zeros({1}), null_context(1),
                      cfg_.compute);

    const bool data_parallel = world() > int(blocks.size());
    if (data_parallel) {
      REHYAT_CHECK(cfg_.distill_batch % world() == 0,
                   "distill.batch {}: with more ranks ({}) than blocks to distill ({}) each block is trained by every "
                   "rank, so distill.batch must be a multiple of {}",
                   cfg_.distill_batch, world(), blocks.size(), world());
      if (rank() == 0) log::info("distill: {} blocks, each data-parallel over {} ranks", blocks.size(), world());
    } else if (world() > 1 && rank() == 0) {
      log::info("distill: {} blocks spread over {} ranks", blocks.size(), world());
    }
    for (size_t k = 0; k < blocks.size(); ++k) {
      const int block = blocks[k];
      if (!data_parallel && int(k % size_t(world())) != rank()) continue;
      const std::string done_path = path(fmt::format("distill/block_{}.safetensors", block));
      layers::HybridAttentionCore* core = layers::hybrid_core(model, block);
      NamedTensors phi;
      core->collect(layers::block_prefix(block) + ".self_attn", phi);
      if (agree_within(data_parallel, fs::exists(done_path))) {
        log::info("distill: block {} already distilled", block);
        continue;
      }
      const double before = block_error(model, block, reader, eval_entries, prepared.rope, prepared.precision);
      distill_block(model, block, phi, reader, train_entries, prepared, data_parallel);
      const double after = block_error(model, block, reader, eval_entries, prepared.rope, prepared.precision);
      if (data_parallel && rank() != 0) continue;
      log::info("distill: block {} relative error {:.4g} -> {:.4g} ({:.1f}x lower)", block, before, after,
                before / std::max(after, 1e-30));
      save_safetensors(done_path, phi, {{"error_before", fmt::format("{}", before)},
                                        {"error_after", fmt::format("{}", after)}});
    }
    wait_for_rank_zero("distill blocks");
    if (rank() != 0) return;

    // Gather: each block's error from its file, ranked by the error after distillation;
    // convert the list, the N best, or all.
    json errors = json::object();
    for (int block : blocks) {
      const std::string file = path(fmt::format("distill/block_{}.safetensors", block));
      const std::map<std::string, std::string> meta = SafetensorsFile::open(file).metadata();
      auto number = [&](const char* key) {
        auto it = meta.find(key);
        REHYAT_CHECK(it != meta.end(), "{}: no '{}' in its metadata", file, key);
        return std::stod(it->second);
      };
      errors["blocks"][std::to_string(block)] = {{"before", number("error_before")}, {"after", number("error_after")}};
    }
    std::vector<int64_t> ranking(blocks.begin(), blocks.end());
    auto after_of = [&](int64_t b) { return errors["blocks"][std::to_string(b)]["after"].get<double>(); };
    std::stable_sort(ranking.begin(), ranking.end(), [&](int64_t a, int64_t b) { return after_of(a) < after_of(b); });
    std::vector<int64_t> converted = ranking;
    if (cfg_.attention.hybrid_blocks.empty() && cfg_.attention.hybrid_block_count > 0)
      converted.resize(size_t(std::min<int64_t>(cfg_.attention.hybrid_block_count, int64_t(ranking.size()))));
    std::sort(converted.begin(), converted.end());
    errors["ranking"] = ranking;
    errors["converted_blocks"] = converted;
    write_text_atomically(path("distill/errors.json"), errors.dump(2) + "\n");

    // The distilled student: teacher weights, hybrid cores in the converted blocks.
    WanModel student = teacher_model();
    attention::AttentionConfig chosen = cfg_.attention;
    chosen.hybrid_blocks = converted;
    chosen.hybrid_block_count = 0;
    chosen.block_ranking = ranking;
    layers::apply_attention_config(student, chosen, stream_seed(cfg_.seed, kPhiInit));
    for (int64_t b : converted) {
      NamedTensors phi;
      layers::hybrid_core(student, int(b))->collect(layers::block_prefix(int(b)) + ".self_attn", phi);
      const std::string file = path(fmt::format("distill/block_{}.safetensors", b));
      assign_parameters(phi, load_safetensors(file), file);
    }
    write_text_atomically(path("distill/attention.yaml"), chosen.to_yaml());
    layers::save_checkpoint(student, path("distill/model.safetensors"), layers::CheckpointNaming::Wan, DType::F32,
                            exporting::checkpoint_metadata(cfg_.model, chosen));
  }

  // agree() among the ranks sharing the work (all of them when data-parallel), else this
  // rank's own view.
  bool agree_within(bool all_ranks, bool value) { return all_ranks ? agree(value) : value; }

  // One block's φ: `distill.batch` cache entries per step (split over the ranks when
  // data_parallel), drawn from a (seed, step) stream at their global sample indices.
  void distill_block(WanModel& model, int block, const NamedTensors& phi, const data::ActivationCacheReader& reader,
                     const std::vector<int64_t>& train_entries, const layers::PreparedInputs& prepared,
                     bool data_parallel) {
    const uint64_t seed = stream_seed(cfg_.seed + uint64_t(block), kDistillStream);
    const std::string stage = fmt::format("distill/block_{}", block);
    const std::string state_path = path(stage + ".state.safetensors");
    const bool writer = !data_parallel || rank() == 0;
    for (const auto& [name, t] : phi) Tensor(t).set_requires_grad(true);
    DataParallelTrainer trainer(data_parallel ? comm_ : nullptr, phi,
                                AdamWOptions{cfg_.distill_lr, 0.9, 0.999, 1e-8, 0.0},
                                DataParallelOptions{cfg_.dist_bucket_mb, cfg_.dist_shard_optimizer});
    const int shards = data_parallel ? world() : 1, shard = data_parallel ? rank() : 0;
    int64_t step = 0;
    if (agree_within(data_parallel, fs::exists(state_path))) {
      REHYAT_CHECK(options_.resume, "'{}' exists: pass --resume to continue that distillation", state_path);
      TrainState state = load_train_state(state_path);
      assign_parameters(phi, std::map<std::string, Tensor>(state.model.begin(), state.model.end()), state_path);
      trainer.load_optimizer_state(state.optimizer);
      step = state.step;
      if (writer) log::info("distill: block {} resuming at step {}", block, step);
    }
    std::optional<TrainLog> train_log;
    if (writer)
      train_log.emplace(path(stage + ".metrics.jsonl"), fmt::format("distill block {}", block), cfg_.distill_steps,
                        step);
    const LrSchedule schedule{cfg_.distill_lr, 0, cfg_.distill_steps, cfg_.distill_min_lr_ratio};
    const int64_t batch = cfg_.distill_batch;
    for (; step < cfg_.distill_steps; ++step) {
      // The step's `batch` uniforms pick cache entries; this rank takes every shards-th.
      const std::vector<double> u = Tensor::rand({batch}, seed, uint64_t(step * batch)).to_vector();
      std::vector<Tensor> inputs, targets;
      for (int64_t i = shard; i < batch; i += shards) {
        const int64_t entry = train_entries[size_t(
            std::min<double>(u[size_t(i)] * double(train_entries.size()), double(train_entries.size() - 1)))];
        const auto [in, out] = reader.read(block, entry);
        inputs.push_back(in.unsqueeze(0));
        targets.push_back(out.unsqueeze(0));
      }
      trainer.zero_grad();
      const Tensor y = model.block(block).self_attn.forward(concat(inputs, 0).to(cfg_.device), prepared.rope,
                                                            prepared.precision);
      Tensor loss = mse_loss(y.to(DType::F32), concat(targets, 0).to(cfg_.device));
      const double local_loss = loss.item();
      check_finite("distillation loss", local_loss, step);
      loss.backward();
      trainer.finish_gradients();
      const double lr = schedule.at(step);
      trainer.step(lr);
      const int64_t done = step + 1;
      if (done % cfg_.distill_log_every == 0 || done == cfg_.distill_steps) {
        const double loss_value = trainer.average(local_loss);
        if (train_log) train_log->log(done, {{"loss", loss_value}, {"lr", lr}});
      }
      if (done % cfg_.distill_checkpoint_every == 0 && done < cfg_.distill_steps) {
        TrainState state;
        state.step = done;
        state.model = phi;
        state.optimizer = trainer.optimizer_state();
        state.seed = seed;
        state.extra = {{"stage", stage}};
        if (writer) save_train_state(state_path, state);
      }
    }
    if (train_log) train_log->finish();
    for (const auto& [name, t] : phi) Tensor(t).set_requires_grad(false);
  }

  void finetune() {
    WanModel model = student_model(path("distill/model.safetensors"));
    if (rank() == 0)
      log::info("finetune: all {} parameters of the hybrid DiT for {} steps", model.parameter_count(),
                cfg_.finetune.steps);
    train_flow_matching(model, cfg_.finetune, "finetune", kFinetuneStream);
    if (rank() != 0) return;
    layers::save_checkpoint(model, path("finetune/model.safetensors"), layers::CheckpointNaming::Wan, DType::F32,
                            exporting::checkpoint_metadata(cfg_.model, student_attention()));
  }

  // The models that exist so far, in report order.
  std::vector<std::string> sampled_models() const {
    std::vector<std::string> models;
    if (exists("teacher/model.safetensors")) models.push_back("teacher");
    if (exists("distill/model.safetensors")) models.push_back("distill");
    if (exists("finetune/model.safetensors")) models.push_back("finetune");
    return models;
  }

  WanModel load_named_model(const std::string& name) const {
    if (name == "teacher") return teacher_model();
    return student_model(path(name + "/model.safetensors"));
  }

  void sample() {
    ensure_datasets();
    const data::ShapesDataset heldout = data::ShapesDataset::open(path("data/heldout.h5"));
    const int64_t prompts = cfg_.sample_prompts;
    std::vector<Tensor> texts;
    for (int64_t i = 0; i < prompts; ++i) texts.push_back(heldout.text_embedding(i).unsqueeze(0));
    const Tensor context = concat(texts, 0).to(cfg_.device);
    const Tensor noise =
        Tensor::randn(video_shape(prompts), stream_seed(cfg_.seed, kSampleNoise), 0, DType::F32, cfg_.device);
    for (const std::string& name : sampled_models()) {
      const std::string out = path("samples/" + name);
      fs::create_directories(out);
      WanModel model = load_named_model(name);
      const bool recurrent = name != "teacher" && cfg_.sample_mode == "recurrent";
      TrainLog progress(out + "/progress.jsonl", "sample " + name, cfg_.sample_steps, 0);
      const Tensor videos = sample_video(model, noise, context, null_context(prompts), sampler_options(recurrent),
                                         [&](int64_t step) { progress.log(step + 1, {}); })
                                .to(Device::cpu());
      progress.finish();
      save_safetensors(out + "/videos.safetensors", {{"videos", videos}},
                       {{"model", name}, {"mode", recurrent ? "recurrent" : "parallel"}, {"solver", cfg_.solver}});
      if (!gif_supported()) log::warn("sample: rehyat was built without giflib: PNG strips only, no GIFs");
      for (int64_t i = 0; i < prompts; ++i) {
        if (gif_supported()) write_gif(fmt::format("{}/prompt_{}.gif", out, i), videos.select(0, i));
        write_png_strip(fmt::format("{}/prompt_{}.png", out, i), videos.select(0, i));
      }
      write_video_grid(out + "/grid.png", videos);
    }
    write_text_atomically(path("samples/done"), "\n");
  }

  // Mean flow-matching loss on held-out videos at fixed noise levels (σ evenly spaced).
  double heldout_loss(const WanModel& model, const data::ShapesDataset& heldout) const {
    autograd::NoGradGuard no_grad;
    double total = 0;
    for (int64_t i = 0; i < cfg_.eval_videos; ++i) {
      const Tensor x0 = heldout.video(i).unsqueeze(0).to(cfg_.device);
      const Tensor text = heldout.text_embedding(i).unsqueeze(0).to(cfg_.device);
      for (int64_t k = 0; k < cfg_.eval_sigmas; ++k) {
        const double sigma = (double(k) + 0.5) / double(cfg_.eval_sigmas);
        const Tensor eps = Tensor::randn(video_shape(1), stream_seed(cfg_.seed, kEvalNoise),
                                         uint64_t(i * cfg_.eval_sigmas + k) * uint64_t(shape_numel(video_shape(1))),
                                         DType::F32, cfg_.device);
        const Tensor noisy = add(mul(x0, 1.0 - sigma), mul(eps, sigma));
        const Tensor v = model.forward(noisy, Tensor::full({1}, 1000.0 * sigma, DType::F32, cfg_.device), text,
                                       cfg_.compute);
        total += flow_matching_loss(v, sub(eps, x0)).item();
      }
    }
    return total / double(cfg_.eval_videos * cfg_.eval_sigmas);
  }

  // What one velocity evaluation of one held-out video costs in the mode the sample stage
  // used (recurrent for a causal student when sample.mode is recurrent, else parallel):
  // core/measure.h's median wall time of kLatencyRuns runs after a warm-up, device
  // synchronized, and the allocator's peak during a run beyond what was held before it
  // (parameters, inputs) less the returned velocity.
  static constexpr int kLatencyRuns = 5;

  Measurement forward_cost(WanModel& model, bool recurrent, const data::ShapesDataset& heldout) const {
    autograd::NoGradGuard no_grad;
    const Tensor x = Tensor::randn(video_shape(1), stream_seed(cfg_.seed, kEvalNoise), 0, DType::F32, cfg_.device);
    const Tensor t = Tensor::full({1}, 500.0, DType::F32, cfg_.device);
    const Tensor text = heldout.text_embedding(0).unsqueeze(0).to(cfg_.device);
    const Measurement m = measure_run(cfg_.device, /*warmup=*/1, kLatencyRuns, [&] {
      return recurrent ? layers::recurrent_forward(model, x, t, text, cfg_.compute)
                       : model.forward(x, t, text, cfg_.compute);
    });
    REHYAT_CHECK(m.ok, "eval: timing one forward ({}) failed: {}", recurrent ? "recurrent" : "parallel", m.failure);
    return m;
  }

  void eval() {
    ensure_datasets();
    fs::create_directories(path("eval"));
    const data::ShapesDataset heldout = data::ShapesDataset::open(path("data/heldout.h5"));
    json metrics = json::object();
    std::map<std::string, Tensor> videos;
    for (const std::string& name : sampled_models()) {
      const std::string file = path("samples/" + name + "/videos.safetensors");
      REHYAT_CHECK(fs::exists(file), "eval: no samples of the {} model ('{}'): run the sample stage first", name, file);
      videos[name] = load_safetensors(file).at("videos");
    }
    for (const auto& [name, v] : videos) {
      json m;
      int64_t colours = 0, motion = 0, both = 0;
      double smooth_sum = 0, incoherence_sum = 0;
      int64_t smooth_count = 0, incoherence_count = 0;
      const int64_t n = v.size(0);
      // Videos of wrapped data cross the frame edges: the detector and the smoothness follow
      // them across. The held-out file says how its videos were made (the config may have
      // changed since it was written).
      const bool wrap = heldout.options().wrap;
      for (int64_t i = 0; i < n; ++i) {
        const Tensor video = v.select(0, i);
        const data::PromptAgreement a = data::prompt_agreement(video, heldout.objects(i), wrap);
        colours += a.colours_ok;
        motion += a.motion_ok;
        both += a.all_ok;
        for (const data::ObjectTrack& track : data::detect_objects(video, wrap)) {
          const double s = trajectory_smoothness(track.centres, wrap, video.size(3), video.size(2));
          if (std::isfinite(s)) smooth_sum += s, ++smooth_count;
        }
        const double inc = chunk_boundary_incoherence(video, cfg_.attention.chunk_frames);
        if (std::isfinite(inc)) incoherence_sum += inc, ++incoherence_count;
      }
      m["colour_agreement"] = double(colours) / double(n);
      m["motion_agreement"] = double(motion) / double(n);
      m["prompt_agreement"] = double(both) / double(n);
      m["trajectory_smoothness"] = smooth_count ? smooth_sum / double(smooth_count) : NAN;
      m["chunk_boundary_incoherence"] = incoherence_count ? incoherence_sum / double(incoherence_count) : NAN;
      if (name != "teacher" && videos.count("teacher")) {
        double p = 0;
        for (int64_t i = 0; i < n; ++i) p += psnr(v.select(0, i), videos.at("teacher").select(0, i));
        m["psnr_vs_teacher"] = p / double(n);
      }
      WanModel model = load_named_model(name);
      m["heldout_fm_loss"] = heldout_loss(model, heldout);
      const bool recurrent = name != "teacher" && cfg_.sample_mode == "recurrent";
      const Measurement cost = forward_cost(model, recurrent, heldout);
      m["latency_ms"] = cost.ms;
      m["peak_memory_bytes"] = cost.working_peak;
      m["latency_mode"] = recurrent ? "recurrent" : "parallel";
      m["device"] = device_name(cfg_.device);
      metrics[name] = m;
      log::info("eval {}: prompt agreement {:.2f}, held-out loss {:.4f}", name, m["prompt_agreement"].get<double>(),
                m["heldout_fm_loss"].get<double>());
    }
    write_text_atomically(path("eval/metrics.json"), metrics.dump(2) + "\n");
    write_report(metrics, heldout);
  }

  void write_report(const json& metrics, const data::ShapesDataset& heldout) const {
    std::string r = fmt::format("# rehyat run `{}`\n\n", cfg_.name);
    r += fmt::format("Device {}, compute {}. Model: dim {}, {} blocks, {} heads; videos {}x{}x{} (frames x H x W).\n",
                     cfg_.device.str(), dtype_name(cfg_.compute), cfg_.model.dim, cfg_.model.num_layers,
                     cfg_.model.num_heads, cfg_.shapes.frames, cfg_.shapes.height, cfg_.shapes.width);
    r += fmt::format("Student attention: {} with Tc={}, To={}, {}, P={}.\n\n",
                     attention::attention_kind_name(cfg_.attention.kind), cfg_.attention.chunk_frames,
                     cfg_.attention.overlap_frames, cfg_.attention.causal ? "causal" : "non-causal",
                     cfg_.attention.degree);
    if (exists("stages.json")) {
      const json times = read_json(path("stages.json"));
      r += "## Stages\n\n| stage | seconds |\n|---|---|\n";
      for (const std::string& s : stage_names())
        if (times.contains(s)) r += fmt::format("| {} | {:.1f} |\n", s, times[s]["seconds"].get<double>());
      r += "\n";
    }
    if (exists("distill/errors.json")) {
      const json errors = read_json(path("distill/errors.json"));
      r += "## Distillation: relative self-attention output error per block\n\n"
           "| block | before | after | reduction | converted |\n|---|---|---|---|---|\n";
      const auto converted = errors.value("converted_blocks", std::vector<int64_t>{});
      for (const auto& [block, e] : errors["blocks"].items()) {
        const double before = e["before"], after = e["after"];
        const bool used = std::find(converted.begin(), converted.end(), std::stoll(block)) != converted.end();
        r += fmt::format("| {} | {:.4g} | {:.4g} | {:.1f}x | {} |\n", block, before, after,
                         before / std::max(after, 1e-30), used ? "yes" : "no");
      }
      r += "\n";
    }
    r += "## Metrics (held-out prompts, SPEC §5)\n\n"
         "| model | prompt agreement | colour | motion | PSNR vs teacher (dB) | held-out FM loss | smoothness (px) | "
         "boundary incoherence | one forward (ms) | its peak memory (MiB) |\n|---|---|---|---|---|---|---|---|---|---|\n";
    auto num = [](const json& m, const char* key, const char* f) {
      if (!m.contains(key) || m[key].is_null()) return std::string("–");
      return fmt::format(fmt::runtime(f), m[key].get<double>());
    };
    for (const auto& [name, m] : metrics.items())
      r += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {:.1f} |\n", name,
                       num(m, "prompt_agreement", "{:.2f}"), num(m, "colour_agreement", "{:.2f}"),
                       num(m, "motion_agreement", "{:.2f}"), num(m, "psnr_vs_teacher", "{:.2f}"),
                       num(m, "heldout_fm_loss", "{:.4f}"), num(m, "trajectory_smoothness", "{:.3f}"),
                       num(m, "chunk_boundary_incoherence", "{:.3f}"), num(m, "latency_ms", "{:.1f}"),
                       m.value("latency_mode", "?"), double(m.value("peak_memory_bytes", size_t(0))) / double(1 << 20));
    r += fmt::format("\nOne forward: one velocity evaluation of one video on {} (median of {} runs), in the mode the "
                     "sample stage used; its peak memory is the allocator's beyond the parameters and inputs, less the "
                     "velocity.\n",
                     device_name(cfg_.device), kLatencyRuns);
    r += "\n## Samples\n\nOne row per held-out prompt (frames left to right):\n\n";
    for (int64_t i = 0; i < cfg_.sample_prompts; ++i) r += fmt::format("{}. {}\n", i + 1, heldout.caption(i));
    r += "\n";
    for (const auto& [name, m] : metrics.items()) {
      r += fmt::format("### {}\n\n![{} samples](samples/{}/grid.png)\n\n", name, name, name);
      std::string links;
      for (int64_t i = 0; i < cfg_.sample_prompts; ++i)
        if (exists(fmt::format("samples/{}/prompt_{}.gif", name, i)))
          links += fmt::format("[{}](samples/{}/prompt_{}.gif) ", i + 1, name, i);
      if (!links.empty()) r += "Animated: " + links + "\n\n";
    }
    write_text_atomically(path("report.md"), r);
    log::info("report: {}", path("report.md"));
  }

  Config resolved_;
  RunConfig cfg_;
  PipelineOptions options_;
  std::string dir_;
  data::TextEncoder encoder_;
  dist::Communicator* comm_ = nullptr;
};

}  // namespace

void run_pipeline(const Config& config, const std::vector<std::string>& stages, const PipelineOptions& options) {
  for (const std::string& s : stages)
    REHYAT_CHECK(std::find(stage_names().begin(), stage_names().end(), s) != stage_names().end(),
                 "unknown stage '{}' (stages: {})", s, fmt::join(stage_names(), ", "));
  // A multi-process run (RANK / WORLD_SIZE, mpirun, srun: train/dist_env.h): one rank per
  // GPU, or CPU ranks over the control channel for tests.
  const dist::DistEnv env = dist::detect_dist_env();
  std::unique_ptr<dist::Communicator> comm;
  if (env.distributed()) {
    const bool cuda = config.get<std::string>("run.device") == "cuda";
    comm = dist::Communicator::create(env, cuda ? dist::local_device(env) : Device::cpu());
    log::info("rank {} of {}: {} on {}", env.rank, env.world_size, comm->backend(), comm->device().str());
  }
  Pipeline(config, options, comm.get()).run(stages);
}

}  // namespace rehyat::train
