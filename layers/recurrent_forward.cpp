// Chunk-by-chunk DiT forward: recurrent cores swapped into the hybrid blocks for the call.
#include "layers/recurrent_forward.h"

#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "attention/recurrent.h"
#include "autograd/graph.h"
#include "core/check.h"
#include "layers/hybrid_core.h"

namespace rehyat::layers {

namespace {

// Stands in for a block's HybridAttentionCore during recurrent_forward: same feature maps,
// the attention from the running state.
class RecurrentCore : public AttentionCore {
 public:
  explicit RecurrentCore(std::shared_ptr<HybridAttentionCore> hybrid) : hybrid_(std::move(hybrid)) {}
  std::string kind() const override { return "rehyat (recurrent)"; }

  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const TokenGrid& grid) override {
    if (!recurrent_) {
      attention::HybridOptions options = hybrid_->options();
      options.frame_tokens = grid.frame_tokens();
      recurrent_ = std::make_unique<attention::RecurrentHybridAttention>(options);
    }
    REHYAT_CHECK(grid.frame_offset == recurrent_->frames_done() && grid.frame_tokens() == recurrent_->options().frame_tokens,
                 "recurrent core: chunk at frame {} ({} tokens per frame) does not follow the {} frames of {} tokens "
                 "already seen",
                 grid.frame_offset, grid.frame_tokens(), recurrent_->frames_done(), recurrent_->options().frame_tokens);
    return recurrent_->step(q, k, v, hybrid_->phi_q().forward(q), hybrid_->phi_k().forward(k));
  }

 private:
  std::shared_ptr<HybridAttentionCore> hybrid_;
  std::unique_ptr<attention::RecurrentHybridAttention> recurrent_;  // built on the first chunk
};

// Installs recurrent cores in every block for its lifetime; puts the originals back.
class RecurrentCoresInstalled {
 public:
  explicit RecurrentCoresInstalled(WanModel& model) : model_(model) {
    for (int i = 0; i < model.num_blocks(); ++i) {
      std::shared_ptr<AttentionCore>& core = model.block(i).self_attn.core;
      originals_.push_back(core);
      core = std::make_shared<RecurrentCore>(std::static_pointer_cast<HybridAttentionCore>(core));
    }
  }
  ~RecurrentCoresInstalled() {
    for (int i = 0; i < model_.num_blocks(); ++i) model_.block(i).self_attn.core = originals_[size_t(i)];
  }
  RecurrentCoresInstalled(const RecurrentCoresInstalled&) = delete;
  RecurrentCoresInstalled& operator=(const RecurrentCoresInstalled&) = delete;

 private:
  WanModel& model_;
  std::vector<std::shared_ptr<AttentionCore>> originals_;
};

}  // namespace

int64_t recurrent_chunk_frames(WanModel& model) {
  std::vector<std::string> problems;
  int64_t chunk_frames = 0;
  for (int i = 0; i < model.num_blocks(); ++i) {
    const HybridAttentionCore* core = hybrid_core(model, i);
    const AttentionCore* any = model.block(i).self_attn.core.get();
    if (!core) {
      problems.push_back(fmt::format("block {} has {} attention", i, any ? any->kind() : "no"));
      continue;
    }
    const attention::HybridOptions& o = core->options();
    if (o.kind != attention::AttentionKind::Rehyat || !o.causal) {
      problems.push_back(fmt::format("block {} has {} attention with causal = {}", i,
                                     attention::attention_kind_name(o.kind), o.causal));
      continue;
    }
    if (chunk_frames == 0) chunk_frames = o.chunk_frames;
    if (o.chunk_frames != chunk_frames)
      problems.push_back(fmt::format("block {} has chunk_frames {} where earlier blocks have {}", i, o.chunk_frames, chunk_frames));
  }
  REHYAT_CHECK(problems.empty() && chunk_frames > 0,
               "recurrent inference needs every block to hold causal ReHyAt attention (attention.kind = rehyat, "
               "causal = true, every block converted) with one chunk_frames: a full-softmax block sees future frames, "
               "which a chunk-by-chunk pass cannot. {}",
               fmt::join(problems, "; "));
  return chunk_frames;
}

Tensor recurrent_forward(WanModel& model, const Tensor& latents, const Tensor& timestep, const Tensor& context,
                         DType compute, int64_t chunk_frames) {
  const int64_t core_chunk_frames = recurrent_chunk_frames(model);
  REHYAT_CHECK(chunk_frames == 0 || chunk_frames == core_chunk_frames,
               "recurrent_forward: chunk_frames {} differs from the model's attention chunk_frames {}", chunk_frames,
               core_chunk_frames);
  REHYAT_CHECK(latents.dim() == 5, "recurrent_forward: latents {} must be [B, C, F, H, W]", latents.str());
  const WanConfig& config = model.config();
  const int64_t chunk_latent_frames = core_chunk_frames * config.patch_size[0];
  const int64_t F = latents.size(2);
  REHYAT_CHECK(F % config.patch_size[0] == 0, "recurrent_forward: {} latent frames are not whole temporal patches of {}",
               F, config.patch_size[0]);

  autograd::NoGradGuard no_grad;
  const Precision p = Precision::for_compute(compute);
  Tensor velocity = Tensor::empty({latents.size(0), config.out_dim, F, latents.size(3), latents.size(4)}, p.high,
                                  model.device());  // [B, out, F, H, W]
  RecurrentCoresInstalled installed(model);
  for (int64_t first = 0; first < F; first += chunk_latent_frames) {
    const int64_t last = std::min(first + chunk_latent_frames, F);
    const PreparedInputs in =
        model.prepare(latents.slice(2, first, last), timestep, context, compute, first / config.patch_size[0]);
    Tensor chunk = velocity.slice(2, first, last);
    chunk.copy_(model.run_head(model.run_blocks(in.x, in), in));
  }
  return velocity;
}

}  // namespace rehyat::layers
