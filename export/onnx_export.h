// ONNX export of a causal ReHyAt DiT as its recurrent STEP FUNCTION (SPEC §3 "Recurrent
// (RNN) inference"): one call of the ONNX model runs one chunk of Tc latent frames through
// the whole DiT, taking the recurrent state left by the previous chunk and returning the
// next one, exactly as layers/recurrent_forward.h does inside rehyat. A runtime
// (onnxruntime, on-device engines) denoises a video by calling it chunk after chunk at
// every denoising step, with memory independent of the video length.
//
// Only in builds with REHYAT_ONNX defined (the ONNX and protobuf C++ libraries found;
// export/onnx.cmake).
//
// The model. Every block must hold a causal ReHyAt core with one chunk_frames (the
// condition of layers::recurrent_chunk_frames; otherwise the error names the blocks).
// Weights (whatever the model's param dtype) are f32 initializers under their checkpoint
// keys and layouts
// ("blocks.0.self_attn.q.weight" [out, in]; transposes in the graph are constant and
// folded by runtimes). Graph ops are standard ONNX (MatMul, Softmax, ReduceMax, Exp,
// Softplus, Tanh, Cos/Sin, Where, Reshape, Transpose, ...); default opset 17, IR of the
// linked ONNX library (8 for ONNX 1.12). The sinusoidal time embedding and the RoPE angles
// are computed in f64 inside the graph (Cos/Sin on doubles, as rehyat computes them), the
// rest in f32.
//
// Inputs (B = options.batch, or the symbolic "batch"; F = options.frames, or the symbolic
// "frames"; H, W = options.height, width; L = options.text_len):
//   latents       f32 [B, in_dim, F, H, W]   this chunk's noisy latents
//   timestep      f32 [B]                    t = 1000·σ
//   context       f32 [B, L, text_dim]       text embeddings (zero-padded in the graph to
//                                            the model's text_len when L is shorter)
//   frame_offset  i64 []                     global index of the chunk's first latent frame
//                                            (0, Tc·pt, 2·Tc·pt, ...): RoPE positions and
//                                            which kept frames exist
//   per block i (every block), the state (see attention/recurrent.h):
//   blocks.i.S       f32 [B, heads, Dp, head_dim]    Σ φk(k) vᵀ over the linear key frames
//   blocks.i.z       f32 [B, heads, Dp]              Σ φk(k)
//   blocks.i.kept_k  f32 [B, To·h·w, heads, head_dim]  keys of the last To DiT frames
//   blocks.i.kept_v  f32 [B, To·h·w, heads, head_dim]  values of the last To DiT frames
//     (h·w = tokens per frame after patching, (H/ph)·(W/pw); kept_k/kept_v exist only for
//     blocks with overlap_frames To > 0; k is post-RMSNorm, post-RoPE, as attention sees it)
// Outputs:
//   velocity      f32 [B, out_dim, F, H, W]
//   new_blocks.i.S, new_blocks.i.z, new_blocks.i.kept_k, new_blocks.i.kept_v: the state
//   for the next chunk (same shapes), to feed back as blocks.i.* on the next call.
// The state holds no φk of the kept frames (rehyat's engine does): the graph recomputes
// φk from kept_k, the same function of the same keys.
//
// The first chunk (frame_offset 0) starts from an empty state: pass zeros. Kept frames
// before frame 0 do not exist, and the graph masks them from the frame offset: kept frame
// j (of To) is global DiT frame offset/pt − To + j and takes part in the softmax (and is
// later absorbed into S, z) only when that index is >= 0; its kept_v is zeroed before use.
// At frame_offset 0 the incoming S and z are ignored as well, so whatever values a caller
// passes to the first chunk (NaN included) do not matter. Each denoising step is a new
// pass over the video from frame_offset 0 (the state depends on the latents and the
// timestep).
// Each call also recomputes the time and text embeddings and the cross-attention keys of
// the context: the step is self-contained, at a cost small next to the blocks' work.
//
// Chunk length. Every chunk but the last has F = Tc·pt latent frames; a video whose frame
// count is not a multiple of that ends in a shorter chunk (a multiple of pt), which must
// be the last of the pass (its new state is not valid for a further chunk, as in
// attention/recurrent.h). With frames = 0 (the default) the frames axis is symbolic and
// one model takes both lengths; a runtime that wants static shapes exports one model with
// frames = Tc·pt and a second with the short chunk's length (the state layout does not
// depend on it). More than Tc·pt frames in one call would be a different model (Tc is
// baked into which frames share a softmax) and must not be passed.
//
// Files. The model goes to options.path, replaced atomically (the caller decides about
// overwriting). The parameters are embedded in the .onnx file, or written to
// "<path>.data" beside it (ONNX external data, each tensor 4096-byte aligned; onnxruntime
// finds the file in the model's folder, so keep the two together) — by default when the
// weights exceed 1 GiB, since a protobuf file cannot hold more than 2 GiB (Wan2.1-1.3B is
// over 5 GB in f32). The graph's small constants always stay in the .onnx file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layers/wan_model.h"

namespace rehyat::exporting {

enum class OnnxWeightStorage { Auto, Embedded, External };  // Auto: External above 1 GiB

struct OnnxExportOptions {
  std::string path;               // the .onnx file
  int64_t batch = 1;              // B; 0: a symbolic "batch" axis
  int64_t height = 0, width = 0;  // the chunk latents' H and W (latent pixels, multiples of the patch)
  int64_t text_len = 0;           // L, rows of the context input: 1..the model's text_len; 0: the model's
  int64_t frames = 0;             // F, latent frames per call (a multiple of pt, <= Tc·pt); 0: symbolic "frames"
  int64_t opset = 17;             // 13 .. the newest the linked ONNX library knows
  OnnxWeightStorage weights = OnnxWeightStorage::Auto;
};

// A graph input or output: dims as text, a number or a symbolic name ("batch", "frames").
struct OnnxTensorSpec {
  std::string name;
  std::string dtype;  // "float32", "int64"
  std::vector<std::string> dims;
};

struct OnnxExportSummary {
  std::string model_path;
  std::string data_path;  // "<path>.data", or empty when the weights are embedded
  int64_t chunk_frames = 0;         // Tc, DiT frames per chunk
  int64_t chunk_latent_frames = 0;  // Tc·pt
  std::vector<int64_t> overlap_frames;  // To of each block
  std::vector<OnnxTensorSpec> inputs, outputs;
  int64_t weight_bytes = 0;  // f32 initializers, parameters and constants
  int64_t nodes = 0;
};

// State tensor names of block `block`: part "S", "z", "kept_k" or "kept_v".
std::string onnx_state_input(int block, const std::string& part);   // "blocks.3.S"
std::string onnx_state_output(int block, const std::string& part);  // "new_blocks.3.S"

// Builds, checks (onnx::checker) and writes the step model. Throws rehyat::Error naming
// the blocks that are not causal ReHyAt, a bad option, or the file that cannot be written.
OnnxExportSummary export_onnx(const layers::WanModel& model, const OnnxExportOptions& options);

}  // namespace rehyat::exporting
