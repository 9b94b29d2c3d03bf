// Analytic FLOP counts (see flops.h for what is and is not counted).
#include "attention/flops.h"

#include <algorithm>

#include "attention/softmax_attention.h"
#include "core/check.h"

namespace rehyat::attention {

namespace {

int64_t matmul_flops(int64_t m, int64_t n, int64_t k) { return 2 * m * n * k; }

// Per head and batch item: what the hybrid's linear part touches.
struct LinearWork {
  int64_t state_keys = 0;    // keys accumulated into S and z
  int64_t queries = 0;       // queries that read S and z
};

// Softmax key frames of chunk t: [first, last).
struct FrameRange {
  int64_t first = 0, last = 0;
  int64_t size() const { return last - first; }
};
FrameRange softmax_frames(int64_t chunk, int64_t chunk_frames, int64_t overlap_frames, int64_t frames) {
  return {std::max<int64_t>(chunk * chunk_frames - overlap_frames, 0), std::min((chunk + 1) * chunk_frames, frames)};
}

// ReHyAt: the linear set of chunk t is causal [0, first) or non-causal "all but S_t".
LinearWork rehyat_linear_work(const AttentionConfig& a, int64_t frames, int64_t frame_tokens) {
  const int64_t chunks = (frames + a.chunk_frames - 1) / a.chunk_frames;
  LinearWork w;
  int64_t causal_keys = 0;  // frames in the largest causal linear set
  int64_t window_keys = 0;  // non-causal: each chunk's window, subtracted from the total
  for (int64_t t = 0; t < chunks; ++t) {
    const FrameRange s = softmax_frames(t, a.chunk_frames, a.overlap_frames, frames);
    const int64_t query_frames = std::min((t + 1) * a.chunk_frames, frames) - t * a.chunk_frames;
    const int64_t linear_frames = a.causal ? s.first : frames - s.size();
    if (linear_frames == 0) continue;
    w.queries += query_frames * frame_tokens;
    causal_keys = std::max(causal_keys, s.first);
    window_keys += s.size();
  }
  if (a.causal)
    w.state_keys = causal_keys * frame_tokens;
  else if (w.queries > 0)
    w.state_keys = (frames + window_keys) * frame_tokens;
  return w;
}

}  // namespace

layers::TokenGrid video_token_grid(const layers::WanConfig& model, int64_t frames, int64_t height, int64_t width) {
  REHYAT_CHECK(frames >= 1 && (frames - 1) % 4 == 0,
               "video frames must be 4k + 1 (Wan's VAE keeps the first frame and compresses 4:1), got {}", frames);
  const int64_t latent_frames = (frames - 1) / 4 + 1;
  const auto& p = model.patch_size;
  REHYAT_CHECK(height > 0 && width > 0 && height % (8 * p[1]) == 0 && width % (8 * p[2]) == 0,
               "video height {} and width {} must be positive multiples of {} and {} (VAE 8x, patch {}x{})", height,
               width, 8 * p[1], 8 * p[2], p[1], p[2]);
  REHYAT_CHECK(latent_frames % p[0] == 0, "{} latent frames are not a multiple of the temporal patch {}",
               latent_frames, p[0]);
  layers::TokenGrid grid;
  grid.frames = latent_frames / p[0];
  grid.height = height / 8 / p[1];
  grid.width = width / 8 / p[2];
  return grid;
}

int64_t BlockFlops::total() const {
  int64_t n = 0;
  for (const OpFlops& op : ops) n += op.flops;
  return n;
}

int64_t BlockFlops::self_attention() const {
  int64_t n = 0;
  for (const OpFlops& op : ops)
    if (op.name.rfind("self_attn.", 0) == 0 && op.name.find("_proj") == std::string::npos) n += op.flops;
  return n;
}

int64_t ModelFlops::total() const {
  int64_t n = 0;
  for (const OpFlops& op : embeddings) n += op.flops;
  for (const BlockFlops& b : blocks) n += b.total();
  for (const OpFlops& op : head) n += op.flops;
  return n;
}

std::vector<OpFlops> self_attention_flops(const AttentionConfig& a, int64_t batch, int64_t heads, int64_t d,
                                          const layers::TokenGrid& grid) {
  const int64_t frames = grid.frames, ft = grid.frame_tokens(), N = grid.tokens();
  REHYAT_CHECK(frames > 0 && ft > 0, "FLOP count: empty token grid {} x {} x {}", grid.frames, grid.height,
               grid.width);
  const int64_t bh = batch * heads;
  int64_t softmax_pairs = 0;  // (query, key) pairs through the softmax part, per head
  LinearWork linear;          // per head
  bool features = true;
  switch (a.kind) {
    case AttentionKind::Softmax:
      softmax_pairs = N * N;
      features = false;
      break;
    case AttentionKind::Rehyat:
      REHYAT_CHECK(a.chunk_frames >= 1 && a.overlap_frames >= 0, "FLOP count: chunk_frames {} / overlap_frames {}",
                   a.chunk_frames, a.overlap_frames);
      softmax_pairs = scored_pairs(KeyRange{ft, a.chunk_frames, a.overlap_frames}, N, N);
      linear = rehyat_linear_work(a, frames, ft);
      break;
    case AttentionKind::Linear:
      linear = {N, N};
      break;
    case AttentionKind::UniformHybrid: {
      REHYAT_CHECK(a.rate >= 1, "FLOP count: rate {} must be >= 1", a.rate);
      const int64_t softmax_keys = ((frames - 1) / a.rate + 1) * ft;  // frames 0, R, 2R, ...
      softmax_pairs = N * softmax_keys;
      if (N > softmax_keys) linear = {N - softmax_keys, N};
      break;
    }
  }
  // With no query reading a linear set (e.g. Tc >= T) the op is plain chunked softmax: no
  // feature maps are needed.
  if (linear.queries == 0) features = false;
  std::vector<OpFlops> ops;
  if (features) {
    const FeatureMapOptions fm{heads, d, a.hidden_dim, a.feature_dim, a.degree, a.activation};
    const int64_t h = fm.hidden(), Dp = fm.features();
    const int64_t phi = matmul_flops(N, h, d) + matmul_flops(N, Dp, h);  // per head
    ops.push_back({"self_attn.phi_q", bh * phi});
    ops.push_back({"self_attn.phi_k", bh * phi});
    if (softmax_pairs > 0) {
      ops.push_back({"self_attn.softmax_scores", bh * 2 * softmax_pairs * d});
      ops.push_back({"self_attn.softmax_values", bh * 2 * softmax_pairs * d});
    }
    ops.push_back({"self_attn.linear_state", bh * (matmul_flops(Dp, d, linear.state_keys) + Dp * linear.state_keys)});
    ops.push_back({"self_attn.linear_apply", bh * (matmul_flops(linear.queries, d, Dp) + matmul_flops(linear.queries, 1, Dp))});
  } else {
    ops.push_back({"self_attn.softmax_scores", bh * 2 * softmax_pairs * d});
    ops.push_back({"self_attn.softmax_values", bh * 2 * softmax_pairs * d});
  }
  return ops;
}

BlockFlops block_flops(const layers::WanConfig& model, const AttentionConfig& attention, int64_t batch,
                       const layers::TokenGrid& grid) {
  const int64_t N = grid.tokens(), D = model.dim, L = model.text_len, H = model.num_heads, d = model.head_dim();
  BlockFlops b;
  b.attention = attention_kind_name(attention.kind);
  b.ops.push_back({"self_attn.qkv_proj", batch * 3 * matmul_flops(N, D, D)});
  for (OpFlops& op : self_attention_flops(attention, batch, H, d, grid)) b.ops.push_back(std::move(op));
  b.ops.push_back({"self_attn.o_proj", batch * matmul_flops(N, D, D)});
  b.ops.push_back({"cross_attn.q_proj", batch * matmul_flops(N, D, D)});
  b.ops.push_back({"cross_attn.kv_proj", batch * 2 * matmul_flops(L, D, D)});
  b.ops.push_back({"cross_attn.scores", batch * H * matmul_flops(N, L, d)});
  b.ops.push_back({"cross_attn.values", batch * H * matmul_flops(N, d, L)});
  b.ops.push_back({"cross_attn.o_proj", batch * matmul_flops(N, D, D)});
  b.ops.push_back({"ffn", batch * (matmul_flops(N, model.ffn_dim, D) + matmul_flops(N, D, model.ffn_dim))});
  return b;
}

ModelFlops model_flops(const layers::WanConfig& model, const AttentionConfig& attention, int64_t batch,
                       const layers::TokenGrid& grid) {
  const int64_t N = grid.tokens(), D = model.dim, L = model.text_len;
  ModelFlops m;
  m.embeddings.push_back({"patch_embedding", batch * matmul_flops(N, D, model.in_dim * model.patch_volume())});
  m.embeddings.push_back({"time_embedding", batch * (matmul_flops(1, D, model.freq_dim) + matmul_flops(1, D, D) +
                                                      matmul_flops(1, 6 * D, D))});
  m.embeddings.push_back({"text_embedding", batch * (matmul_flops(L, D, model.text_dim) + matmul_flops(L, D, D))});
  m.softmax_block = block_flops(model, AttentionConfig{}, batch, grid);
  m.hybrid_block = block_flops(model, attention, batch, grid);
  const std::vector<int> converted = attention.converted_blocks(model.num_layers);
  for (int i = 0; i < int(model.num_layers); ++i) {
    const bool hybrid = std::find(converted.begin(), converted.end(), i) != converted.end();
    m.blocks.push_back(hybrid ? m.hybrid_block : m.softmax_block);
  }
  m.head.push_back({"head", batch * matmul_flops(N, model.out_dim * model.patch_volume(), D)});
  return m;
}

}  // namespace rehyat::attention
