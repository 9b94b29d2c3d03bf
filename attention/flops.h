// Analytic FLOP counter for a Wan2.1 DiT with any attention config and video shape
// (SPEC §3 "FLOPs"): per op, per block and for the whole forward, so ablations can report
// the cost of softmax, ReHyAt, linear and uniform-hybrid blocks at any Tc, To, P.
//
// What is counted (one forward, no guidance; batch multiplies everything):
// - every matrix product as 2·m·n·k: q/k/v/o and cross-attention projections, FFN, the
//   patch/time/text embeddings and the head;
// - attention scores and values only for the (query, key) pairs actually used: 2·d per
//   pair for q·k and 2·d for the value sum (softmax full, or restricted to each chunk's
//   softmax set S_t; cross-attention over all text_len context rows);
// - the linear part of hybrid attention, per head: the feature maps φq and φk on every
//   token, 2·N·(d·h + h·Dp) each; building the state from every key that enters a linear
//   set, 2·Dp·d per key for S plus Dp for z (causal: running sums, each key once;
//   non-causal: the sum over all keys once, minus each chunk's softmax window, as a
//   total-minus-window implementation does); applying it to every query with a
//   non-empty linear set, 2·Dp·d for φq·S plus 2·Dp for φq·z.
// Not counted (elementwise, O(N·D) and small next to the above): norms, RMSNorm, RoPE,
// modulation, gates, residual adds, GELU/softplus/powers, softmax exponentials and the
// hybrid's final division.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention/attention_config.h"
#include "layers/rope.h"
#include "layers/wan_config.h"

namespace rehyat::attention {

// The DiT token grid of a video of `frames` x `height` x `width` pixels: Wan's VAE gives
// (frames - 1)/4 + 1 latent frames of height/8 x width/8, then the patch divides them.
// Throws naming the value unless frames = 4k + 1 and the sizes divide evenly.
layers::TokenGrid video_token_grid(const layers::WanConfig& model, int64_t frames, int64_t height, int64_t width);

struct OpFlops {
  std::string name;   // "self_attn.softmax_scores", "ffn", ...
  int64_t flops = 0;
};

struct BlockFlops {
  std::string attention;       // the self-attention kind of this block ("softmax", "rehyat", ...)
  std::vector<OpFlops> ops;    // in forward order
  int64_t total() const;
  // The self-attention op alone (between the projections): feature maps, softmax part,
  // linear part.
  int64_t self_attention() const;
};

// The self-attention op of one block (names prefixed "self_attn."): kind from `attention`
// (Softmax: full attention), batch B, H heads of head_dim d, grid.frames frames of
// grid.frame_tokens() tokens.
std::vector<OpFlops> self_attention_flops(const AttentionConfig& attention, int64_t batch, int64_t heads,
                                          int64_t head_dim, const layers::TokenGrid& grid);

// One block: self-attention with `attention` (pass a default AttentionConfig for the
// teacher's softmax block), cross-attention over text_len rows, FFN.
BlockFlops block_flops(const layers::WanConfig& model, const AttentionConfig& attention, int64_t batch,
                       const layers::TokenGrid& grid);

struct ModelFlops {
  std::vector<OpFlops> embeddings;  // patch, time, text
  std::vector<BlockFlops> blocks;   // one per layer (converted ones with the hybrid kind)
  std::vector<OpFlops> head;
  BlockFlops softmax_block;         // a teacher block at this shape
  BlockFlops hybrid_block;          // a block with `attention` at this shape
  int64_t total() const;
};

// The whole forward; blocks listed by attention.converted_blocks() run `attention`, the
// rest softmax.
ModelFlops model_flops(const layers::WanConfig& model, const AttentionConfig& attention, int64_t batch,
                       const layers::TokenGrid& grid);

}  // namespace rehyat::attention
