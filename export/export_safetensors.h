// `rehyat export --format safetensors`: a checkpoint rewritten for other runtimes (PyTorch,
// diffusers) as one safetensors file that says what model it holds.
//
// Steps, each its own function so the ONNX exporter and tests share them:
//   1. resolve_description(): the model and attention config from the checkpoint's metadata
//      (export/model_metadata.h) or, for a checkpoint without it (a Wan2.1 release), from a
//      YAML; with both, they must agree (a disagreement is an error listing every key).
//   2. load_described_model(): the WanModel built from it, its converted blocks given their
//      hybrid cores, every parameter loaded from the checkpoint; a missing, unexpected or
//      misshapen tensor fails listing all of them (layers/wan_checkpoint.h).
//   3. export_safetensors(): Wan key names (or diffusers' WanTransformer3DModel names) plus
//      the feature maps blocks.N.self_attn.phi_{q,k}.{0,2}.{weight,bias} (diffusers:
//      blocks.N.attn1.phi_*), in f32, bf16 or f16, atomically; __metadata__ holds
//      format=pt, rehyat.naming and the model and attention config JSON, so the exported
//      file is itself a complete rehyat checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "export/model_metadata.h"
#include "layers/wan_checkpoint.h"
#include "layers/wan_model.h"

namespace rehyat::exporting {

// config_path empty: the checkpoint's metadata, which must then exist. overrides
// (key=value) apply to config_path's YAML.
ModelDescription resolve_description(const std::string& checkpoint, const std::string& config_path,
                                     const std::vector<std::string>& overrides = {});

// A CPU WanModel (f32 parameters) as `description` says, loaded from `checkpoint` (a file,
// shard index or folder, either naming), with every tensor checked.
layers::WanModel load_described_model(const std::string& checkpoint, const ModelDescription& description);

struct ExportSummary {
  std::string path;
  int64_t tensors = 0;     // named tensors written
  int64_t parameters = 0;  // their elements
  uint64_t bytes = 0;      // size of the file
};

// Writes `model` to `out` (replacing it atomically if it exists: the caller decides whether
// it may). dtype: F32, BF16 or F16.
ExportSummary export_safetensors(const layers::WanModel& model, const attention::AttentionConfig& attention,
                                 const std::string& out, layers::CheckpointNaming naming, DType dtype);

}  // namespace rehyat::exporting
