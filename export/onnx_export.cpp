// The recurrent step function of a causal ReHyAt DiT as an ONNX graph. The graph follows
// the framework's own code path for one chunk (WanModel::prepare with a frame offset,
// WanBlock::forward with RecurrentHybridAttention::step in place of the hybrid core,
// WanModel::run_head), op for op:
//   prepare   patchify → patch embedding; sinusoid(t) (f64) → time MLP → e, e0; context
//             (zero-padded) → text MLP; RoPE cos/sin from the global frame positions (f64).
//   block     m = modulation + e0; a = LN1(x)(1+m1) + m0; q, k = RoPE(RMSNorm(W a)), v;
//             window keys = kept frames (masked before frame 0) then the chunk;
//             y = (Σ exp(s − c) v + φq S) / (Σ exp(s − c) + φq z) with c the row max over
//             the window; x += o(y)·m2; cross-attention; FFN; the window's first f
//             frames (f = the chunk's DiT frames) are absorbed into S, z (those that
//             exist), its last To frames kept.
//   head      LN(x)(1+scale)+shift → Linear → unpatchify.
#include "export/onnx_export.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <set>

#include <onnx/checker.h>

#include "attention/feature_map.h"
#include "core/atomic_file.h"
#include "core/check.h"
#include "export/onnx_graph.h"
#include "layers/hybrid_core.h"
#include "layers/recurrent_forward.h"
#include "layers/rope.h"

namespace rehyat::exporting {

std::string onnx_state_input(int block, const std::string& part) { return fmt::format("blocks.{}.{}", block, part); }
std::string onnx_state_output(int block, const std::string& part) { return "new_" + onnx_state_input(block, part); }

namespace {

constexpr auto kFloat = onnx::TensorProto_DataType_FLOAT;
constexpr auto kDouble = onnx::TensorProto_DataType_DOUBLE;
constexpr auto kInt64 = onnx::TensorProto_DataType_INT64;
constexpr auto kBool = onnx::TensorProto_DataType_BOOL;
constexpr int64_t kExternalAbove = int64_t(1) << 30;  // Auto: external data above 1 GiB of weights
constexpr int64_t kDataAlignment = 4096;               // external tensors start page-aligned (mmap-able)

using Dim = OnnxGraphBuilder::Dim;

// Block `index`'s hybrid core (export_onnx checked that every block has one).
const layers::HybridAttentionCore& rehyat_core(const layers::WanModel& model, int index) {
  const auto* core = dynamic_cast<const layers::HybridAttentionCore*>(model.block(index).self_attn.core.get());
  REHYAT_CHECK(core, "ONNX export: block {} has no ReHyAt core", index);
  return *core;
}

// The sizes every part of the graph needs.
struct StepSizes {
  int64_t dim = 0, heads = 0, head_dim = 0;
  int64_t pt = 1, ph = 1, pw = 1;
  int64_t height = 0, width = 0;      // latent pixels
  int64_t rows = 0, cols = 0;         // tokens per frame = rows * cols
  int64_t text_len_in = 0;            // context rows given
  int64_t frame_tokens() const { return rows * cols; }
};

class StepGraphBuilder {
 public:
  StepGraphBuilder(const layers::WanModel& model, const StepSizes& sizes, OnnxGraphBuilder& g)
      : model_(model), s_(sizes), g_(g) {}

  // Declares the inputs and outputs (batch and frames dims given) and adds every node.
  void build(const Dim& batch, const Dim& frames);
  const std::set<std::string>& weight_keys() const { return weight_keys_; }

 private:
  // Values of this call that every block reads.
  struct Shared {
    std::string x;            // [B, N, D] the residual stream
    std::string e, e0;        // [B, D], [B, 6, D]
    std::string context;      // [B, text_len, D] embedded text
    std::string cos, sin;     // [N, 1, d/2, 1] RoPE tables
    std::string frame_offset; // i64 [] in DiT frames
    std::string first_chunk;  // bool []: frame_offset == 0
    std::string chunk_tokens; // i64 [1]: N
  };
  // The masks of a block with To > 0 kept frames (shared by blocks with the same To).
  struct WindowMasks {
    std::string window;    // bool [To*ft + N]: which window tokens exist
    std::string kept;      // bool [To*ft, 1]
    std::string absorbed;  // bool [N, 1]: the first N window tokens that exist
  };

  std::string weight(const std::string& key, const Tensor& t);
  std::string linear(const layers::Linear& l, const std::string& key, const std::string& x);
  std::string layer_norm(const layers::LayerNorm& n, const std::string& key, const std::string& x);
  std::string rms_norm(const layers::RMSNorm& n, const std::string& key, const std::string& x);
  std::string gelu(const std::string& x);
  std::string silu(const std::string& x);
  std::string modulate(const std::string& normed, const std::string& shift, const std::string& scale);
  std::string rope(const std::string& x, const Shared& in);  // [B, N, H, d] -> rotated
  std::string feature_map(const attention::FeatureMap& phi, const std::string& key, const std::string& x);

  Shared prepare(const std::string& latents, const std::string& timestep, const std::string& context,
                 const std::string& frame_offset);
  const WindowMasks& window_masks(int64_t overlap_frames, const Shared& in);
  std::string block(int index, const std::string& x, const Shared& in);
  std::string self_attention(int index, const std::string& a, const Shared& in);
  std::string cross_attention(int index, const std::string& x, const Shared& in);
  void head(const std::string& x, const Shared& in);

  const layers::WanModel& model_;
  StepSizes s_;
  OnnxGraphBuilder& g_;
  std::set<std::string> weight_keys_;
  std::map<int64_t, WindowMasks> masks_;  // by To
};

std::string StepGraphBuilder::weight(const std::string& key, const Tensor& t) {
  REHYAT_CHECK(weight_keys_.insert(key).second, "ONNX export: parameter '{}' added twice", key);
  return g_.weight(key, t);
}

// --- modules ----------------------------------------------------------------------------------

std::string StepGraphBuilder::linear(const layers::Linear& l, const std::string& key, const std::string& x) {
  const std::string w = g_.transpose(weight(key + ".weight", l.weight), {1, 0});  // [in, out]
  return g_.add(g_.matmul(x, w), weight(key + ".bias", l.bias));
}

std::string StepGraphBuilder::layer_norm(const layers::LayerNorm& n, const std::string& key, const std::string& x) {
  const std::string centered = g_.sub(x, g_.reduce("ReduceMean", x, {-1}, true));
  const std::string variance = g_.reduce("ReduceMean", g_.mul(centered, centered), {-1}, true);
  std::string y = g_.div(centered, g_.op("Sqrt", {g_.add(variance, g_.scalar_f32(float(n.eps)))}));
  if (n.weight.defined()) y = g_.add(g_.mul(y, weight(key + ".weight", n.weight)), weight(key + ".bias", n.bias));
  return y;
}

std::string StepGraphBuilder::rms_norm(const layers::RMSNorm& n, const std::string& key, const std::string& x) {
  const std::string mean_square = g_.reduce("ReduceMean", g_.mul(x, x), {-1}, true);
  const std::string rms = g_.op("Sqrt", {g_.add(mean_square, g_.scalar_f32(float(n.eps)))});
  return g_.mul(g_.div(x, rms), weight(key + ".weight", n.weight));
}

// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the tanh form rehyat uses.
std::string StepGraphBuilder::gelu(const std::string& x) {
  const std::string cube = g_.mul(g_.mul(x, x), x);
  const std::string inner = g_.mul(g_.add(x, g_.mul(cube, g_.scalar_f32(0.044715f))),
                                   g_.scalar_f32(float(std::sqrt(2.0 / M_PI))));
  const std::string one_plus = g_.add(g_.op("Tanh", {inner}), g_.scalar_f32(1.0f));
  return g_.mul(g_.mul(x, one_plus), g_.scalar_f32(0.5f));
}

std::string StepGraphBuilder::silu(const std::string& x) { return g_.mul(x, g_.op("Sigmoid", {x})); }

std::string StepGraphBuilder::modulate(const std::string& normed, const std::string& shift, const std::string& scale) {
  return g_.add(g_.mul(normed, g_.add(scale, g_.scalar_f32(1.0f))), shift);
}

// Pairs (x[2j], x[2j+1]) turned by the token's angles: (x0 cos − x1 sin, x0 sin + x1 cos).
std::string StepGraphBuilder::rope(const std::string& x, const Shared& in) {
  const int64_t H = s_.heads, d = s_.head_dim;
  const std::string pairs = g_.reshape(x, {0, 0, H, d / 2, 2});  // [B, N, H, d/2, 2]
  const std::string x0 = g_.slice(pairs, 4, 0, 1), x1 = g_.slice(pairs, 4, 1, 2);
  const std::string y0 = g_.sub(g_.mul(x0, in.cos), g_.mul(x1, in.sin));
  const std::string y1 = g_.add(g_.mul(x0, in.sin), g_.mul(x1, in.cos));
  return g_.reshape(g_.op("Concat", {y0, y1}, {{"axis", int64_t(4)}}), {0, 0, H, d});
}

// φ(x) per head: x [B, H, M, d] -> [B, H, M, Dp] (attention/feature_map.h).
std::string StepGraphBuilder::feature_map(const attention::FeatureMap& phi, const std::string& key,
                                          const std::string& x) {
  OnnxGraphBuilder::Scope scope(g_, key.substr(key.rfind('.') + 1));
  const attention::FeatureMapOptions& o = phi.options();
  const std::string w1 = g_.transpose(weight(key + ".0.weight", phi.weight1), {0, 2, 1});  // [H, d, h]
  const std::string b1 = g_.unsqueeze(weight(key + ".0.bias", phi.bias1), {1});           // [H, 1, h]
  std::string hidden = g_.add(g_.matmul(x, w1), b1);                                       // [B, H, M, h]
  switch (o.activation) {
    case attention::FeatureActivation::Gelu: hidden = gelu(hidden); break;
    case attention::FeatureActivation::Relu: hidden = g_.op("Relu", {hidden}); break;
    case attention::FeatureActivation::None: break;
  }
  const std::string w2 = g_.transpose(weight(key + ".2.weight", phi.weight2), {0, 2, 1});  // [H, h, Dp]
  const std::string b2 = g_.unsqueeze(weight(key + ".2.bias", phi.bias2), {1});           // [H, 1, Dp]
  const std::string psi = g_.op("Softplus", {g_.add(g_.matmul(hidden, w2), b2)});          // [B, H, M, Dp]
  if (o.degree == 1) return psi;
  const int64_t part = o.features() / o.degree;
  std::vector<std::string> parts = g_.split(psi, 3, std::vector<int64_t>(size_t(o.degree), part));
  for (size_t i = 1; i < parts.size(); ++i) {  // part i (0-based) to the power i + 1
    const std::string base = parts[i];
    for (size_t p = 0; p < i; ++p) parts[i] = g_.mul(parts[i], base);
  }
  return g_.op("Concat", parts, {{"axis", int64_t(3)}});
}

// --- prepare ----------------------------------------------------------------------------------

StepGraphBuilder::Shared StepGraphBuilder::prepare(const std::string& latents, const std::string& timestep,
                                                   const std::string& context, const std::string& frame_offset) {
  OnnxGraphBuilder::Scope scope(g_, "prepare");
  const layers::WanConfig& c = model_.config();
  const int64_t D = s_.dim, d = s_.head_dim, half_pairs = d / 2;
  Shared in;

  // Patchify [B, C, F, H, W] -> [B, f*rows*cols, C*pt*ph*pw] (Conv3d weight order), then
  // the patch embedding as a linear map.
  const std::string patches = g_.reshape(latents, {0, 0, -1, s_.pt, s_.rows, s_.ph, s_.cols, s_.pw});
  const std::string tokens =
      g_.reshape(g_.transpose(patches, {0, 2, 4, 6, 1, 3, 5, 7}), {0, -1, c.in_dim * s_.pt * s_.ph * s_.pw});
  const layers::PatchEmbedding& pe = model_.patch_embedding();
  const std::string pe_weight = g_.transpose(g_.reshape(weight("patch_embedding.weight", pe.weight), {D, -1}), {1, 0});
  in.x = g_.add(g_.matmul(tokens, pe_weight), weight("patch_embedding.bias", pe.bias));  // [B, N, D]
  in.chunk_tokens = g_.slice(g_.op("Shape", {in.x}), 0, 1, 2);

  // Time embedding: [cos(t·w_k), sin(t·w_k)], w_k = 10000^(-k/half), in f64 as rehyat does.
  const layers::TimeEmbedding& te = model_.time_embedding();
  const int64_t half = te.freq_dim / 2;
  std::vector<double> frequencies(static_cast<size_t>(half));
  for (int64_t k = 0; k < half; ++k) frequencies[size_t(k)] = std::pow(10000.0, -double(k) / double(half));
  const std::string angle =
      g_.mul(g_.unsqueeze(g_.cast(timestep, kDouble), {1}), g_.constant_f64(frequencies, {1, half}));  // [B, half]
  const std::string sinusoid = g_.cast(
      g_.op("Concat", {g_.op("Cos", {angle}), g_.op("Sin", {angle})}, {{"axis", int64_t(1)}}), kFloat);
  in.e = linear(te.fc2, "time_embedding.2", silu(linear(te.fc1, "time_embedding.0", sinusoid)));  // [B, D]
  in.e0 = g_.reshape(linear(te.projection, "time_projection.1", silu(in.e)), {0, 6, D});       // [B, 6, D]

  // Text embedding of the context zero-padded to the model's text_len.
  std::string padded = context;
  if (s_.text_len_in < c.text_len)
    padded = g_.op("Pad", {context, g_.ints({0, 0, 0, 0, c.text_len - s_.text_len_in, 0})});
  const layers::TextEmbedding& text = model_.text_embedding();
  in.context = linear(text.mlp.fc2, "text_embedding.2", gelu(linear(text.mlp.fc1, "text_embedding.0", padded)));

  // RoPE: angle(token, pair) = frame band: (frame_offset + f)·w_j; row / column bands: the
  // token's row / column times theirs (constants). Summed as [f, 1, d/2] + [1, rows·cols,
  // d/2] (each zero outside its bands) in f64, then cos / sin to f32 [N, 1, d/2, 1].
  in.frame_offset = frame_offset;
  if (s_.pt > 1) in.frame_offset = g_.div(frame_offset, g_.constant_i64({s_.pt}, {}));
  in.first_chunk = g_.op("Equal", {in.frame_offset, g_.constant_i64({0}, {})});
  const std::string frames =
      g_.div(g_.op("Gather", {g_.op("Shape", {latents}), g_.constant_i64({2}, {})}, {{"axis", int64_t(0)}}),
             g_.constant_i64({s_.pt}, {}));
  const std::string positions = g_.op(
      "Range", {in.frame_offset, g_.add(in.frame_offset, frames), g_.constant_i64({1}, {})});  // i64 [f]
  const layers::TokenGrid one_frame{1, 1, 1, 1};  // position 1 on the frame axis: the frame band's rates
  const std::vector<double> frame_rates = layers::rope_angles(d, one_frame);                    // [d/2]
  const layers::RopeBands bands = layers::rope_bands(d);
  std::vector<double> frame_band(static_cast<size_t>(half_pairs), 0.0);
  for (int64_t j = 0; j < bands.frame_pairs; ++j) frame_band[size_t(j)] = frame_rates[size_t(j)];
  const layers::TokenGrid frame_zero{1, s_.rows, s_.cols, 0};  // frame 0: only the row / column bands
  const std::vector<double> spatial = layers::rope_angles(d, frame_zero);  // [rows*cols, d/2]
  const std::string frame_angles = g_.mul(g_.unsqueeze(g_.cast(positions, kDouble), {1, 2}),
                                          g_.constant_f64(frame_band, {1, 1, half_pairs}));  // [f, 1, d/2]
  const std::string angles = g_.reshape(
      g_.add(frame_angles, g_.constant_f64(spatial, {1, s_.frame_tokens(), half_pairs})), {-1, 1, half_pairs, 1});
  in.cos = g_.cast(g_.op("Cos", {angles}), kFloat);  // [N, 1, d/2, 1]
  in.sin = g_.cast(g_.op("Sin", {angles}), kFloat);
  return in;
}

// Window tokens: To kept frames (global DiT frames offset − To .. offset − 1), then the
// chunk's N tokens. A kept frame exists when its index is >= 0.
const StepGraphBuilder::WindowMasks& StepGraphBuilder::window_masks(int64_t overlap_frames, const Shared& in) {
  auto found = masks_.find(overlap_frames);
  if (found != masks_.end()) return found->second;
  OnnxGraphBuilder::Scope scope(g_, fmt::format("overlap{}", overlap_frames));
  const int64_t To = overlap_frames, ft = s_.frame_tokens();
  std::vector<int64_t> back(static_cast<size_t>(To));
  for (int64_t j = 0; j < To; ++j) back[size_t(j)] = j - To;  // kept frame j is offset + (j − To)
  const std::string kept_frames =
      g_.op("GreaterOrEqual", {g_.add(in.frame_offset, g_.constant_i64(back, {To})), g_.constant_i64({0}, {})});
  const std::string kept_tokens =
      g_.reshape(g_.op("Expand", {g_.unsqueeze(kept_frames, {1}), g_.ints({To, ft})}), {To * ft});  // [To*ft]
  onnx::TensorProto true_value;
  true_value.set_data_type(kBool);
  true_value.add_dims(1);
  true_value.add_int32_data(1);
  const std::string chunk_tokens = g_.op("ConstantOfShape", {in.chunk_tokens}, {{"value", true_value}});  // [N]
  WindowMasks m;
  m.window = g_.op("Concat", {kept_tokens, chunk_tokens}, {{"axis", int64_t(0)}});  // [To*ft + N]
  m.kept = g_.unsqueeze(kept_tokens, {1});                                         // [To*ft, 1]
  m.absorbed = g_.unsqueeze(g_.slice(m.window, 0, 0, -To * ft), {1});               // [N, 1]
  return masks_.emplace(overlap_frames, m).first->second;
}

// --- blocks -----------------------------------------------------------------------------------

// Self-attention of block `index` on its input a [B, N, D]: returns o(y) [B, N, D] and
// writes the block's new state to the graph outputs.
std::string StepGraphBuilder::self_attention(int index, const std::string& a, const Shared& in) {
  OnnxGraphBuilder::Scope scope(g_, "self_attn");
  const layers::SelfAttention& sa = model_.block(index).self_attn;
  const layers::HybridAttentionCore* core = &rehyat_core(model_, index);
  const std::string key = layers::block_prefix(index) + ".self_attn";
  const int64_t H = s_.heads, d = s_.head_dim, To = core->options().overlap_frames, ft = s_.frame_tokens();
  const double scale = core->options().scale != 0.0 ? core->options().scale : 1.0 / std::sqrt(double(d));

  // q, k: RoPE(RMSNorm(W a)) per head; v: W a per head; all [B, H, N, d].
  auto heads_first = [&](const std::string& t) { return g_.transpose(t, {0, 2, 1, 3}); };
  const std::string q = heads_first(rope(g_.reshape(rms_norm(sa.norm_q, key + ".norm_q", linear(sa.q, key + ".q", a)),
                                                    {0, 0, H, d}), in));
  const std::string k = heads_first(rope(g_.reshape(rms_norm(sa.norm_k, key + ".norm_k", linear(sa.k, key + ".k", a)),
                                                    {0, 0, H, d}), in));
  const std::string v = heads_first(g_.reshape(linear(sa.v, key + ".v", a), {0, 0, H, d}));

  // The window: kept frames (To of them; the values of frames that do not exist zeroed,
  // so garbage in them cannot leak through 0·inf), then the chunk.
  std::string window_k = k, window_v = v;
  const WindowMasks* masks = To > 0 ? &window_masks(To, in) : nullptr;
  if (masks) {
    const std::string kept_k = heads_first(onnx_state_input(index, "kept_k"));  // [B, H, To*ft, d]
    const std::string kept_v = g_.op("Where", {masks->kept, heads_first(onnx_state_input(index, "kept_v")),
                                               g_.scalar_f32(0.0f)});
    window_k = g_.op("Concat", {kept_k, k}, {{"axis", int64_t(2)}});  // [B, H, To*ft + N, d]
    window_v = g_.op("Concat", {kept_v, v}, {{"axis", int64_t(2)}});
  }

  // Softmax part over the window with c = the row max: nS = Σ exp(s − c), aS = Σ exp(s − c) v.
  std::string scores = g_.matmul(g_.mul(q, g_.scalar_f32(float(scale))), g_.transpose(window_k, {0, 1, 3, 2}));
  if (masks)
    scores = g_.op("Where", {masks->window, scores, g_.scalar_f32(-std::numeric_limits<float>::infinity())});
  const std::string row_max = g_.reduce("ReduceMax", scores, {-1}, true);  // [B, H, N, 1]
  const std::string weights = g_.op("Exp", {g_.sub(scores, row_max)});
  const std::string n_softmax = g_.reduce("ReduceSum", weights, {-1}, true);
  const std::string a_softmax = g_.matmul(weights, window_v);  // [B, H, N, d]

  // Linear part from the state (ignored at frame 0): aL = φq S, nL = φq z.
  const std::string zero = g_.scalar_f32(0.0f);
  const std::string S = g_.op("Where", {in.first_chunk, zero, onnx_state_input(index, "S")});  // [B, H, Dp, d]
  const std::string z = g_.op("Where", {in.first_chunk, zero, onnx_state_input(index, "z")});  // [B, H, Dp]
  const std::string phi_q = feature_map(core->phi_q(), key + ".phi_q", q);                    // [B, H, N, Dp]
  const std::string a_linear = g_.matmul(phi_q, S);
  const std::string n_linear = g_.matmul(phi_q, g_.unsqueeze(z, {3}));
  const std::string y = g_.div(g_.add(a_softmax, a_linear), g_.add(n_softmax, n_linear));  // [B, H, N, d]
  const std::string attn = linear(sa.o, key + ".o", g_.reshape(heads_first(y), {0, 0, s_.dim}));

  // The next state: the first N window tokens leave the softmax window (those that exist
  // join S and z); the last To frames are kept.
  const std::string phi_k = feature_map(core->phi_k(), key + ".phi_k", window_k);  // [B, H, To*ft + N, Dp]
  std::string phi_absorbed = phi_k, v_absorbed = window_v;
  if (masks) {
    phi_absorbed = g_.op("Where", {masks->absorbed, g_.slice(phi_k, 2, 0, -To * ft), zero});  // [B, H, N, Dp]
    v_absorbed = g_.slice(window_v, 2, 0, -To * ft);
  }
  g_.op_named(onnx_state_output(index, "S"), "Add",
              {S, g_.matmul(g_.transpose(phi_absorbed, {0, 1, 3, 2}), v_absorbed)});
  g_.op_named(onnx_state_output(index, "z"), "Add", {z, g_.reduce("ReduceSum", phi_absorbed, {2}, false)});
  if (masks) {
    const int64_t last = std::numeric_limits<int64_t>::max();
    g_.op_named(onnx_state_output(index, "kept_k"), "Transpose", {g_.slice(window_k, 2, -To * ft, last)},
                {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
    g_.op_named(onnx_state_output(index, "kept_v"), "Transpose", {g_.slice(window_v, 2, -To * ft, last)},
                {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
  }
  return attn;
}

std::string StepGraphBuilder::cross_attention(int index, const std::string& x, const Shared& in) {
  OnnxGraphBuilder::Scope scope(g_, "cross_attn");
  const layers::CrossAttention& ca = model_.block(index).cross_attn;
  const std::string key = layers::block_prefix(index) + ".cross_attn";
  const int64_t H = s_.heads, d = s_.head_dim;
  const std::string q = g_.transpose(
      g_.reshape(rms_norm(ca.norm_q, key + ".norm_q", linear(ca.q, key + ".q", x)), {0, 0, H, d}), {0, 2, 1, 3});
  const std::string k_t = g_.transpose(
      g_.reshape(rms_norm(ca.norm_k, key + ".norm_k", linear(ca.k, key + ".k", in.context)), {0, 0, H, d}),
      {0, 2, 3, 1});  // [B, H, d, L]
  const std::string v = g_.transpose(g_.reshape(linear(ca.v, key + ".v", in.context), {0, 0, H, d}), {0, 2, 1, 3});
  const std::string scores = g_.matmul(g_.mul(q, g_.scalar_f32(float(1.0 / std::sqrt(double(d))))), k_t);
  const std::string y = g_.matmul(g_.op("Softmax", {scores}, {{"axis", int64_t(-1)}}), v);  // [B, H, N, d]
  return linear(ca.o, key + ".o", g_.reshape(g_.transpose(y, {0, 2, 1, 3}), {0, 0, s_.dim}));
}

std::string StepGraphBuilder::block(int index, const std::string& x_in, const Shared& in) {
  OnnxGraphBuilder::Scope scope(g_, layers::block_prefix(index));
  const layers::WanBlock& b = model_.block(index);
  const std::string key = layers::block_prefix(index);
  const std::vector<std::string> m =
      g_.split(g_.add(weight(key + ".modulation", b.modulation), in.e0), 1, {1, 1, 1, 1, 1, 1});  // 6 x [B, 1, D]
  std::string x = x_in;
  const std::string attn_in = modulate(layer_norm(b.norm1, key + ".norm1", x), m[0], m[1]);
  x = g_.add(x, g_.mul(self_attention(index, attn_in, in), m[2]));
  x = g_.add(x, cross_attention(index, layer_norm(b.norm3, key + ".norm3", x), in));
  const std::string ffn_in = modulate(layer_norm(b.norm2, key + ".norm2", x), m[3], m[4]);
  const std::string ffn = linear(b.ffn.fc2, key + ".ffn.2", gelu(linear(b.ffn.fc1, key + ".ffn.0", ffn_in)));
  return g_.add(x, g_.mul(ffn, m[5]));
}

// Head + unpatchify into the graph output "velocity".
void StepGraphBuilder::head(const std::string& x, const Shared& in) {
  OnnxGraphBuilder::Scope scope(g_, "head");
  const layers::Head& h = model_.head();
  const int64_t out_dim = model_.config().out_dim;
  const std::vector<std::string> shift_scale =
      g_.split(g_.add(weight("head.modulation", h.modulation), g_.unsqueeze(in.e, {1})), 1, {1, 1});  // [B, 1, D]
  const std::string y = linear(h.head, "head.head", modulate(layer_norm(h.norm, "head.norm", x), shift_scale[0],
                                                                      shift_scale[1]));  // [B, N, pt*ph*pw*out]
  const std::string grid = g_.reshape(y, {0, -1, s_.rows, s_.cols, s_.pt, s_.ph, s_.pw, out_dim});
  const std::string ordered = g_.transpose(grid, {0, 7, 1, 4, 2, 5, 3, 6});  // [B, out, f, pt, rows, ph, cols, pw]
  g_.op_named("velocity", "Reshape", {ordered, g_.ints({0, 0, -1, s_.height, s_.width})});
}

void StepGraphBuilder::build(const Dim& batch, const Dim& frames) {
  const layers::WanConfig& c = model_.config();
  const int64_t H = s_.heads, d = s_.head_dim;
  g_.input("latents", kFloat, {batch, c.in_dim, frames, s_.height, s_.width});
  g_.input("timestep", kFloat, {batch});
  g_.input("context", kFloat, {batch, s_.text_len_in, c.text_dim});
  g_.input("frame_offset", kInt64, {});
  for (int i = 0; i < model_.num_blocks(); ++i) {
    const layers::HybridAttentionCore* core = &rehyat_core(model_, i);
    const int64_t Dp = core->phi_k().options().features(), kept = core->options().overlap_frames * s_.frame_tokens();
    const std::vector<std::pair<std::string, std::vector<Dim>>> parts = {
        {"S", {batch, H, Dp, d}},
        {"z", {batch, H, Dp}},
        {"kept_k", {batch, kept, H, d}},
        {"kept_v", {batch, kept, H, d}}};
    for (const auto& [part, dims] : parts) {
      if (kept == 0 && part.rfind("kept", 0) == 0) continue;
      g_.input(onnx_state_input(i, part), kFloat, dims);
      g_.output(onnx_state_output(i, part), kFloat, dims);
    }
  }
  g_.output("velocity", kFloat, {batch, c.out_dim, frames, s_.height, s_.width});

  const Shared in = prepare("latents", "timestep", "context", "frame_offset");
  std::string x = in.x;
  for (int i = 0; i < model_.num_blocks(); ++i) x = block(i, x, in);
  head(x, in);
}

// --- writing ----------------------------------------------------------------------------------

std::vector<OnnxTensorSpec> specs(const google::protobuf::RepeatedPtrField<onnx::ValueInfoProto>& values) {
  std::vector<OnnxTensorSpec> out;
  for (const onnx::ValueInfoProto& v : values) {
    OnnxTensorSpec spec{v.name(), v.type().tensor_type().elem_type() == kInt64 ? "int64" : "float32", {}};
    for (const auto& dim : v.type().tensor_type().shape().dim())
      spec.dims.push_back(dim.has_dim_param() ? dim.dim_param() : std::to_string(dim.dim_value()));
    out.push_back(std::move(spec));
  }
  return out;
}

// Moves the parameters' bytes into `data_path` (page-aligned), leaving references. The
// graph's own constants stay inline: shape inputs must be readable when a runtime loads
// the model.
void externalize_weights(onnx::GraphProto& graph, const std::set<std::string>& parameters,
                         const std::string& data_path) {
  AtomicFileWriter data(data_path);
  const std::string location = std::filesystem::path(data_path).filename().string();
  int64_t offset = 0;
  const std::string padding(size_t(kDataAlignment), '\0');
  for (onnx::TensorProto& t : *graph.mutable_initializer()) {
    if (!parameters.count(t.name())) continue;
    const int64_t pad = (kDataAlignment - offset % kDataAlignment) % kDataAlignment;
    data.write(padding.data(), size_t(pad));
    offset += pad;
    const std::string& bytes = t.raw_data();
    data.write(bytes.data(), bytes.size());
    t.set_data_location(onnx::TensorProto_DataLocation_EXTERNAL);
    const std::pair<const char*, std::string> entries[] = {
        {"location", location}, {"offset", std::to_string(offset)}, {"length", std::to_string(bytes.size())}};
    for (const auto& [k, value] : entries) {
      onnx::StringStringEntryProto* e = t.add_external_data();
      e->set_key(k);
      e->set_value(value);
    }
    offset += int64_t(bytes.size());
    t.clear_raw_data();
  }
  data.commit();
}

}  // namespace

OnnxExportSummary export_onnx(const layers::WanModel& model, const OnnxExportOptions& options) {
  // recurrent_chunk_frames only reads the model (its signature is non-const for hybrid_core()).
  const int64_t chunk_frames = layers::recurrent_chunk_frames(const_cast<layers::WanModel&>(model));
  const layers::WanConfig& c = model.config();
  REHYAT_CHECK(!options.path.empty(), "ONNX export: no output path given");
  REHYAT_CHECK(options.batch >= 0, "ONNX export to '{}': batch {} must be >= 0 (0: symbolic)", options.path,
               options.batch);
  REHYAT_CHECK(options.height > 0 && options.width > 0 && options.height % c.patch_size[1] == 0 &&
                   options.width % c.patch_size[2] == 0,
               "ONNX export to '{}': the latent height {} and width {} must be positive multiples of the patch [{}]",
               options.path, options.height, options.width, fmt::join(c.patch_size, ", "));
  const int64_t chunk_latent_frames = chunk_frames * c.patch_size[0];
  REHYAT_CHECK(options.frames >= 0 && options.frames <= chunk_latent_frames && options.frames % c.patch_size[0] == 0,
               "ONNX export to '{}': frames {} must be 0 (symbolic) or a multiple of the temporal patch {} up to the "
               "chunk's {} latent frames",
               options.path, options.frames, c.patch_size[0], chunk_latent_frames);
  REHYAT_CHECK(options.opset >= kOldestSupportedOpset && options.opset <= newest_known_opset(),
               "ONNX export to '{}': opset {} is not supported (this build writes opsets {} to {}, the newest its ONNX "
               "library knows)",
               options.path, options.opset, kOldestSupportedOpset, newest_known_opset());
  const int64_t text_len = options.text_len > 0 ? options.text_len : c.text_len;
  REHYAT_CHECK(options.text_len >= 0 && text_len <= c.text_len,
               "ONNX export to '{}': text_len {} must be 1..{} (the model's text_len; 0: that)", options.path,
               options.text_len, c.text_len);

  StepSizes s;
  s.dim = c.dim;
  s.heads = c.num_heads;
  s.head_dim = c.head_dim();
  s.pt = c.patch_size[0];
  s.ph = c.patch_size[1];
  s.pw = c.patch_size[2];
  s.height = options.height;
  s.width = options.width;
  s.rows = options.height / s.ph;
  s.cols = options.width / s.pw;
  s.text_len_in = text_len;

  onnx::ModelProto proto;
  proto.set_ir_version(onnx::IR_VERSION);
  proto.set_producer_name("rehyat");
  proto.set_doc_string(fmt::format(
      "ReHyAt recurrent step function: one chunk of {} latent frames through the DiT with the per-block state "
      "(export/onnx_export.h)",
      chunk_latent_frames));
  onnx::OperatorSetIdProto* opset = proto.add_opset_import();
  opset->set_domain("");
  opset->set_version(options.opset);
  onnx::GraphProto& graph = *proto.mutable_graph();
  graph.set_name("rehyat_step");

  OnnxGraphBuilder g(graph, options.opset);
  StepGraphBuilder step(model, s, g);
  const Dim batch = options.batch > 0 ? Dim(options.batch) : Dim(std::string("batch"));
  const Dim frames = options.frames > 0 ? Dim(options.frames) : Dim(std::string("frames"));
  step.build(batch, frames);

  // Every parameter of the model is in the graph, once.
  std::vector<std::string> unused;
  for (const auto& [name, tensor] : model.named_parameters())
    if (!step.weight_keys().count(name)) unused.push_back(name);
  REHYAT_CHECK(unused.empty() && step.weight_keys().size() == model.named_parameters().size(),
               "ONNX export: the step graph does not use the parameters {} ({} of {} used)", fmt::join(unused, ", "),
               step.weight_keys().size(), model.named_parameters().size());

  try {
    onnx::checker::check_model(proto);
  } catch (const std::exception& e) {
    REHYAT_FAIL("ONNX export to '{}': the built graph fails onnx::checker: {}", options.path, e.what());
  }

  OnnxExportSummary summary;
  summary.model_path = options.path;
  summary.chunk_frames = chunk_frames;
  summary.chunk_latent_frames = chunk_latent_frames;
  for (int i = 0; i < model.num_blocks(); ++i)
    summary.overlap_frames.push_back(rehyat_core(model, i).options().overlap_frames);
  summary.inputs = specs(graph.input());
  summary.outputs = specs(graph.output());
  summary.nodes = graph.node_size();
  for (const onnx::TensorProto& t : graph.initializer()) summary.weight_bytes += int64_t(t.raw_data().size());

  const bool external = options.weights == OnnxWeightStorage::External ||
                        (options.weights == OnnxWeightStorage::Auto && summary.weight_bytes > kExternalAbove);
  if (external) {
    summary.data_path = options.path + ".data";
    externalize_weights(graph, step.weight_keys(), summary.data_path);
  }
  std::string bytes;
  REHYAT_CHECK(proto.SerializeToString(&bytes),
               "ONNX export to '{}': serializing the model failed ({} bytes of weights{})",
               options.path, summary.weight_bytes, external ? ", external" : "; try external weights");
  AtomicFileWriter file(options.path);
  file.write(bytes);
  file.commit();
  return summary;
}

}  // namespace rehyat::exporting
