// The analytic FLOP counter (attention/flops.h) against hand-computed counts at a tiny
// config, and its limits: Tc >= T is plain softmax, token grids from video sizes.
#include <gtest/gtest.h>

#include "attention/flops.h"
#include "core/check.h"

namespace rehyat::attention {
namespace {

// D = 8, 2 heads of d = 4, ffn 16, 3 text rows; a 1 x 2 token frame (N = 2 per frame).
layers::WanConfig tiny_model() {
  layers::WanConfig c;
  c.dim = 8;
  c.num_heads = 2;
  c.ffn_dim = 16;
  c.freq_dim = 4;
  c.num_layers = 2;
  c.in_dim = 2;
  c.out_dim = 2;
  c.text_len = 3;
  c.text_dim = 5;
  return c;
}

layers::TokenGrid grid(int64_t frames) { return {frames, 1, 2, 0}; }

AttentionConfig rehyat(int64_t chunk_frames, int64_t overlap_frames, bool causal = true) {
  AttentionConfig a;
  a.kind = AttentionKind::Rehyat;
  a.chunk_frames = chunk_frames;
  a.overlap_frames = overlap_frames;
  a.causal = causal;
  return a;  // h = Dp = 2d = 8, P = 2
}

int64_t op(const BlockFlops& b, const std::string& name) {
  for (const OpFlops& o : b.ops)
    if (o.name == name) return o.flops;
  return -1;
}

TEST(Flops, SoftmaxBlockByHand) {
  const BlockFlops b = block_flops(tiny_model(), AttentionConfig{}, 1, grid(5));  // N = 10
  EXPECT_EQ(b.attention, "softmax");
  EXPECT_EQ(op(b, "self_attn.qkv_proj"), 3 * 2 * 10 * 8 * 8);
  EXPECT_EQ(op(b, "self_attn.softmax_scores"), 2 * 2 * 100 * 4);  // H * 2 * pairs * d
  EXPECT_EQ(op(b, "self_attn.softmax_values"), 1600);
  EXPECT_EQ(op(b, "self_attn.o_proj"), 1280);
  EXPECT_EQ(op(b, "cross_attn.q_proj"), 1280);
  EXPECT_EQ(op(b, "cross_attn.kv_proj"), 2 * 2 * 3 * 8 * 8);
  EXPECT_EQ(op(b, "cross_attn.scores"), 2 * 2 * 10 * 3 * 4);
  EXPECT_EQ(op(b, "cross_attn.values"), 480);
  EXPECT_EQ(op(b, "cross_attn.o_proj"), 1280);
  EXPECT_EQ(op(b, "ffn"), 2 * 2 * 10 * 8 * 16);
  EXPECT_EQ(op(b, "self_attn.phi_q"), -1);
  EXPECT_EQ(b.total(), 17728);
  EXPECT_EQ(b.self_attention(), 3200);
}

TEST(Flops, CausalRehyatBlockByHand) {
  // T = 5, Tc = 2, To = 1: chunk 0 frames [0,2) sees S = [0,2); chunk 1 [2,4) sees S = [1,4),
  // L = [0,1); chunk 2 [4,5) sees S = [3,5), L = [0,3).
  const BlockFlops b = block_flops(tiny_model(), rehyat(2, 1), 1, grid(5));
  EXPECT_EQ(b.attention, "rehyat");
  const int64_t pairs = 4 * 4 + 4 * 6 + 2 * 4;  // per head: queries x softmax keys per chunk = 48
  EXPECT_EQ(op(b, "self_attn.softmax_scores"), 2 * 2 * pairs * 4);
  EXPECT_EQ(op(b, "self_attn.softmax_values"), 2 * 2 * pairs * 4);
  EXPECT_EQ(op(b, "self_attn.phi_q"), 2 * 2 * 10 * (4 * 8 + 8 * 8));  // H * 2N(dh + hDp)
  EXPECT_EQ(op(b, "self_attn.phi_k"), 3840);
  // State: frames [0, 3) = 6 keys, each 2 Dp d + Dp; applied to the 6 queries of chunks 1, 2.
  EXPECT_EQ(op(b, "self_attn.linear_state"), 2 * (2 * 8 * 4 * 6 + 8 * 6));
  EXPECT_EQ(op(b, "self_attn.linear_apply"), 2 * (2 * 6 * 4 * 8 + 2 * 6 * 8));
  EXPECT_EQ(b.total(), 17728 - 3200 + 768 + 768 + 3840 + 3840 + 864 + 960);
  EXPECT_EQ(b.self_attention(), 768 + 768 + 3840 + 3840 + 864 + 960);
  // Batch multiplies everything.
  EXPECT_EQ(block_flops(tiny_model(), rehyat(2, 1), 3, grid(5)).total(), 3 * b.total());
}

TEST(Flops, LinearAndNonCausalByHand) {
  AttentionConfig linear;
  linear.kind = AttentionKind::Linear;
  const BlockFlops l = block_flops(tiny_model(), linear, 1, grid(5));
  EXPECT_EQ(op(l, "self_attn.softmax_scores"), -1);
  EXPECT_EQ(op(l, "self_attn.linear_state"), 2 * (2 * 8 * 4 * 10 + 8 * 10));
  EXPECT_EQ(op(l, "self_attn.linear_apply"), 2 * (2 * 10 * 4 * 8 + 2 * 10 * 8));
  // Non-causal: every chunk has a linear set; the total over all 10 keys minus each
  // chunk's window (2 + 3 + 2 frames).
  const BlockFlops nc = block_flops(tiny_model(), rehyat(2, 1, false), 1, grid(5));
  EXPECT_EQ(op(nc, "self_attn.linear_state"), 2 * (2 * 8 * 4 * 24 + 8 * 24));
  EXPECT_EQ(op(nc, "self_attn.linear_apply"), 2 * (2 * 10 * 4 * 8 + 2 * 10 * 8));
  // Uniform hybrid R = 2: softmax key frames 0, 2, 4 (6 keys) for all 10 queries.
  AttentionConfig uniform;
  uniform.kind = AttentionKind::UniformHybrid;
  uniform.rate = 2;
  const BlockFlops u = block_flops(tiny_model(), uniform, 1, grid(5));
  EXPECT_EQ(op(u, "self_attn.softmax_scores"), 2 * 2 * 60 * 4);
  EXPECT_EQ(op(u, "self_attn.linear_state"), 2 * (2 * 8 * 4 * 4 + 8 * 4));
}

TEST(Flops, ChunkAtLeastVideoIsSoftmax) {
  const BlockFlops softmax = block_flops(tiny_model(), AttentionConfig{}, 1, grid(5));
  for (int64_t tc : {5, 6, 9})
    for (int64_t to : {0, 1, 4}) {
      const BlockFlops b = block_flops(tiny_model(), rehyat(tc, to), 1, grid(5));
      EXPECT_EQ(b.total(), softmax.total()) << "Tc " << tc << " To " << to;
      EXPECT_EQ(b.self_attention(), softmax.self_attention());
    }
  // The same at Wan-1.3B size.
  const layers::WanConfig wan = layers::WanConfig::wan_1_3b();
  const layers::TokenGrid g{21, 30, 52, 0};
  EXPECT_EQ(block_flops(wan, rehyat(21, 1), 1, g).total(), block_flops(wan, AttentionConfig{}, 1, g).total());
  EXPECT_LT(block_flops(wan, rehyat(3, 1), 1, g).total(), block_flops(wan, AttentionConfig{}, 1, g).total());
}

TEST(Flops, ModelByHand) {
  const layers::WanConfig c = tiny_model();
  const int64_t embeddings = 2 * 10 * 8 * 8 + 2 * (4 * 8 + 8 * 8 + 8 * 48) + 2 * (3 * 8 * 5 + 3 * 8 * 8);
  const int64_t head = 2 * 10 * 8 * 8;
  const int64_t softmax_block = 17728, hybrid_block = 25568;
  EXPECT_EQ(model_flops(c, AttentionConfig{}, 1, grid(5)).total(), embeddings + head + 2 * softmax_block);
  const ModelFlops all = model_flops(c, rehyat(2, 1), 1, grid(5));
  EXPECT_EQ(all.total(), embeddings + head + 2 * hybrid_block);
  EXPECT_EQ(all.softmax_block.total(), softmax_block);
  AttentionConfig one = rehyat(2, 1);
  one.hybrid_blocks = {1};
  const ModelFlops m = model_flops(c, one, 1, grid(5));
  EXPECT_EQ(m.blocks[0].attention, "softmax");
  EXPECT_EQ(m.blocks[1].attention, "rehyat");
  EXPECT_EQ(m.total(), embeddings + head + softmax_block + hybrid_block);
}

TEST(Flops, VideoTokenGrid) {
  const layers::WanConfig wan = layers::WanConfig::wan_1_3b();
  const layers::TokenGrid a = video_token_grid(wan, 81, 480, 832);
  EXPECT_EQ(a.frames, 21);
  EXPECT_EQ(a.height, 30);
  EXPECT_EQ(a.width, 52);
  const layers::TokenGrid b = video_token_grid(wan, 641, 320, 480);
  EXPECT_EQ(b.frames, 161);
  EXPECT_EQ(b.frame_tokens(), 600);
  EXPECT_THROW(video_token_grid(wan, 80, 480, 832), Error);
  EXPECT_THROW(video_token_grid(wan, 81, 480, 836), Error);
}

}  // namespace
}  // namespace rehyat::attention
