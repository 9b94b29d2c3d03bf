// Test-only tool for tests/tools/test_onnx_export.py: for a few tiny causal ReHyAt DiTs
// (onnx_test_model.h) it writes, under OUT_DIR/<case>/,
//   model.onnx (+ model.onnx.data)  export_onnx's step function
//   reference.safetensors           latents [B, in, F, H, W], timestep [B], context [B, L, text_dim],
//                                   velocity_recurrent (layers::recurrent_forward) and
//                                   velocity_parallel (WanModel::forward), f32;
//                                   metadata: chunk_latent_frames, overlap_frames (per block, comma-separated)
// so the Python test can run the ONNX model chunk by chunk in onnxruntime and compare.
// The cases cover To < Tc, To > Tc with a short last chunk, To = 0 with a temporal patch
// of 2 and static frames, degrees 1..3, every feature activation, opsets 13 and 17,
// embedded and external weights, static and symbolic batch, a context shorter than
// text_len.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "autograd/graph.h"
#include "core/safetensors.h"
#include "export/onnx_export.h"
#include "export/onnx_test_model.h"
#include "layers/recurrent_forward.h"

namespace rehyat {
namespace {

struct ReferenceCase {
  std::string name;
  std::array<int64_t, 3> patch;
  int64_t chunk_frames, overlap_frames, degree;
  attention::FeatureActivation activation;
  int64_t batch, frames, height, width, text_len;  // the video; text_len: context rows given
  exporting::OnnxExportOptions onnx;               // path, batch and sizes filled in below
};

void write_case(const std::string& out_dir, const ReferenceCase& rc) {
  attention::AttentionConfig attention =
      testing::causal_rehyat_attention(rc.chunk_frames, rc.overlap_frames, rc.degree);
  attention.activation = rc.activation;
  layers::WanModel model = testing::tiny_onnx_model(testing::tiny_onnx_config(rc.patch), attention);
  const layers::WanConfig& c = model.config();

  const std::string dir = out_dir + "/" + rc.name;
  std::filesystem::create_directories(dir);
  exporting::OnnxExportOptions options = rc.onnx;
  options.path = dir + "/model.onnx";
  options.height = rc.height;
  options.width = rc.width;
  options.text_len = rc.text_len;
  const exporting::OnnxExportSummary summary = exporting::export_onnx(model, options);

  const Tensor latents = Tensor::randn({rc.batch, c.in_dim, rc.frames, rc.height, rc.width}, 21);
  std::vector<double> times;
  for (int64_t b = 0; b < rc.batch; ++b) times.push_back(640.0 - 390.0 * double(b));
  const Tensor timestep = Tensor::from_vector(times, {rc.batch}, DType::F32);
  const Tensor context = Tensor::randn({rc.batch, rc.text_len, c.text_dim}, 22);
  const Tensor recurrent = layers::recurrent_forward(model, latents, timestep, context, DType::F32);
  Tensor parallel;
  {
    autograd::NoGradGuard no_grad;
    parallel = model.forward(latents, timestep, context, DType::F32);
  }
  std::vector<std::string> overlaps;
  for (int64_t o : summary.overlap_frames) overlaps.push_back(std::to_string(o));
  save_safetensors(dir + "/reference.safetensors",
                   {{"latents", latents}, {"timestep", timestep}, {"context", context},
                    {"velocity_recurrent", recurrent}, {"velocity_parallel", parallel}},
                   {{"chunk_latent_frames", std::to_string(summary.chunk_latent_frames)},
                    {"overlap_frames", fmt::format("{}", fmt::join(overlaps, ","))}});
  std::printf("%s: %s, %lld nodes, %lld weight bytes%s\n", rc.name.c_str(), options.path.c_str(),
              (long long)summary.nodes, (long long)summary.weight_bytes,
              summary.data_path.empty() ? "" : (", external " + summary.data_path).c_str());
}

}  // namespace
}  // namespace rehyat

int main(int argc, char** argv) {
  using namespace rehyat;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  auto onnx = [](int64_t batch, int64_t frames, int64_t opset, exporting::OnnxWeightStorage weights) {
    exporting::OnnxExportOptions o;
    o.batch = batch;
    o.frames = frames;
    o.opset = opset;
    o.weights = weights;
    return o;
  };
  using attention::FeatureActivation;
  using exporting::OnnxWeightStorage;
  const std::vector<ReferenceCase> cases = {
      // 3 chunks of 2 frames, one frame of overlap; batch 2 with different timesteps.
      {"tc2_to1", {1, 2, 2}, 2, 1, 2, FeatureActivation::Gelu, 2, 6, 4, 6, 5,
       onnx(2, 0, 17, OnnxWeightStorage::Embedded)},
      // Overlap longer than the chunk (kept frames before 0 for two chunks), 2 + 2 + 1 frames.
      {"tc2_to3_short", {1, 2, 2}, 2, 3, 3, FeatureActivation::Relu, 1, 5, 6, 4, 8,
       onnx(0, 0, 13, OnnxWeightStorage::External)},
      // No overlap, temporal patch 2 (chunks of 2 latent frames), fixed frames, degree 1.
      {"tc1_to0_pt2", {2, 2, 2}, 1, 0, 1, FeatureActivation::None, 1, 6, 4, 4, 8,
       onnx(1, 2, 17, OnnxWeightStorage::Auto)},
  };
  try {
    for (const ReferenceCase& rc : cases) write_case(argv[1], rc);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "onnx_reference: %s\n", e.what());
    return 1;
  }
  return 0;
}
