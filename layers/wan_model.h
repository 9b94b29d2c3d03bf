// WanModel: the Wan2.1 text-to-video DiT (SPEC §2), built from layers/ pieces.
//
//   velocity = model.forward(latents [B, in, F, H, W], timestep [B], context [B, L, text_dim],
//                            compute dtype)                      -> [B, out, F, H, W]
//
// The forward is split into the steps later stages need (SPEC §3-4):
//   prepare()   patchify + patch embedding, time embedding (e, e0), text embedding,
//               RoPE tables for the token grid (optionally shifted by a frame offset for
//               chunk-by-chunk inference);
//   run_block() one block (distillation and per-block capture);
//   run_head()  the head and unpatchify.
// Blocks are separate objects (block(i)); a block's self-attention core is replaceable
// (block(i).self_attn.core), and its parameters then appear in named_parameters() under
// the block's prefix. A BlockHook sees each block's self-attention input and output.
//
// Parameters live on one device in a param dtype (f32 default; f64 for gradient checks;
// bf16 possible) as leaves with requires_grad. They carry Wan's original key names
// (named_parameters()); layers/wan_checkpoint.h loads and saves them. Initialization is
// Wan's init_weights, drawn from seeded Philox streams (one per parameter name), so the
// same seed gives the same model on CPU and CUDA.
//
// Precision: see layers/modules.h. The result is in the high dtype: f32 (f64 for f64
// compute).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "layers/embeddings.h"
#include "layers/wan_block.h"
#include "layers/wan_config.h"

namespace rehyat::layers {

// Called after each block's self-attention (block index, its activations).
using BlockHook = std::function<void(int block, const BlockActivations& activations)>;

// Everything the blocks and the head need besides x, computed once per forward.
struct PreparedInputs {
  Tensor x;           // [B, N, D] high dtype: patch-embedded tokens (the residual stream)
  Tensor e;           // [B, D] high: time embedding (head modulation)
  Tensor e0;          // [B, 6, D] high: time projection (block modulation)
  Tensor context;     // [B, text_len, D] compute: embedded text
  RopeTables rope;    // [N, 1, d/2] cos/sin in the high dtype
  TokenGrid grid;     // token grid (and frame offset)
  Precision precision;
};

class WanModel {
 public:
  WanModel(const WanConfig& config, Device device = Device::cpu(), DType param_dtype = DType::F32,
           uint64_t seed = 0);
  WanModel(WanModel&&) = default;
  WanModel& operator=(WanModel&&) = default;

  const WanConfig& config() const { return config_; }
  Device device() const { return device_; }
  DType param_dtype() const { return param_dtype_; }

  // Every parameter under its Wan key name, in a fixed order (embeddings, blocks, head).
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  int64_t parameter_count() const;
  // Turns requires_grad on or off for every parameter (off for a frozen teacher).
  void set_requires_grad(bool enabled);
  void zero_grad();

  // --- forward ---------------------------------------------------------------------------
  // latents/timestep/context may be on any device (moved to the model's) and any float
  // dtype; compute: f32 or f64 anywhere, bf16 (or f16) on CUDA.
  Tensor forward(const Tensor& latents, const Tensor& timestep, const Tensor& context,
                 DType compute = DType::F32, const BlockHook& hook = {}) const;

  PreparedInputs prepare(const Tensor& latents, const Tensor& timestep, const Tensor& context,
                         DType compute = DType::F32, int64_t frame_offset = 0) const;
  // Block `index` on x [B, N, D] (the residual stream); returns the new x.
  Tensor run_block(int index, const Tensor& x, const PreparedInputs& in,
                   BlockActivations* capture = nullptr) const;
  // All blocks in order, calling hook (if any) after each.
  Tensor run_blocks(const Tensor& x, const PreparedInputs& in, const BlockHook& hook = {}) const;
  // Head + unpatchify: x [B, N, D] -> velocity [B, out, F, H, W] in the high dtype.
  Tensor run_head(const Tensor& x, const PreparedInputs& in) const;

  // --- parts ------------------------------------------------------------------------------
  int num_blocks() const { return int(blocks_.size()); }
  WanBlock& block(int index);
  const WanBlock& block(int index) const;
  PatchEmbedding& patch_embedding() { return patch_embedding_; }
  TimeEmbedding& time_embedding() { return time_embedding_; }
  TextEmbedding& text_embedding() { return text_embedding_; }
  Head& head() { return head_; }
  const PatchEmbedding& patch_embedding() const { return patch_embedding_; }
  const TimeEmbedding& time_embedding() const { return time_embedding_; }
  const TextEmbedding& text_embedding() const { return text_embedding_; }
  const Head& head() const { return head_; }

 private:
  WanConfig config_;
  Device device_;
  DType param_dtype_;
  PatchEmbedding patch_embedding_;
  TimeEmbedding time_embedding_;
  TextEmbedding text_embedding_;
  std::vector<std::unique_ptr<WanBlock>> blocks_;
  Head head_;
};

// "blocks.N" for block N.
std::string block_prefix(int index);

}  // namespace rehyat::layers
