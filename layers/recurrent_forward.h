// Recurrent (chunk-by-chunk) DiT forward for causal ReHyAt models (SPEC §3 "Recurrent
// (RNN) inference"): the video's latents go through the whole DiT Tc latent frames at a
// time, each converted block carrying its running state (attention/recurrent.h) from one
// chunk to the next, so memory does not grow with the video (apart from the latents and
// the velocity themselves). The result equals the parallel forward of the same model.
//
// Every chunk is prepared with WanModel::prepare(chunk latents, ..., frame_offset) so RoPE
// positions stay global; its blocks run through the model's own WanBlock::forward with
// each hybrid core temporarily replaced by a recurrent core that owns the state (restored
// when the call returns or throws; the model is not otherwise changed).
//
// Softmax blocks: a block with full (non-causal) softmax attention lets every token see
// later frames, which a chunk-by-chunk pass cannot know, so no recurrent form can equal
// the parallel model. Recurrent mode therefore requires EVERY block to hold a causal
// ReHyAt core (kind rehyat, causal: true), all with the same chunk_frames, and fails
// naming the blocks that do not.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "layers/wan_model.h"

namespace rehyat::layers {

// latents [B, in, F, H, W], timestep [B], context [B, L, text_dim] (any device / float
// dtype, as WanModel::forward); chunk_frames: Tc in DiT frames (0: the cores' own
// chunk_frames; otherwise it must equal them). Returns the velocity [B, out, F, H, W] in
// the high dtype on the model's device. Forward only (no autograd graph is built).
Tensor recurrent_forward(WanModel& model, const Tensor& latents, const Tensor& timestep, const Tensor& context,
                         DType compute = DType::F32, int64_t chunk_frames = 0);

// Throws unless the model can run recurrent_forward (every block a causal ReHyAt core
// with one chunk_frames); returns that chunk_frames.
int64_t recurrent_chunk_frames(WanModel& model);

}  // namespace rehyat::layers
