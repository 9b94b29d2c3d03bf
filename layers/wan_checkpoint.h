// Wan2.1 checkpoints in safetensors, in either naming:
//   - Wan's original keys (what Wan2.1's diffusion_pytorch_model.safetensors holds, and
//     what WanModel::named_parameters() uses): blocks.N.self_attn.q.weight, ...
//   - diffusers' WanTransformer3DModel keys (scripts/convert_wan_to_diffusers.py):
//     blocks.N.attn1.to_q.weight, blocks.N.ffn.net.0.proj.weight, scale_shift_table, ...
// The naming of a file is detected from its keys. Tensors on disk may be f32, bf16, f16
// (or f64); they are converted to the parameters' dtype and device on load. A mismatch
// is reported as one rehyat::Error naming the file and listing every problem: missing
// tensors, unexpected (extra) tensors, and tensors of the wrong shape or a non-float
// dtype.
//
// The mapping works on any parameter list (not only WanModel's), so models that add
// parameters (ReHyAt's blocks.N.self_attn.phi_q.*) load and save through the same code:
// keys below self_attn / cross_attn that have no diffusers counterpart map to
// attn1.* / attn2.* unchanged.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "layers/modules.h"

namespace rehyat::layers {

class WanModel;

enum class CheckpointNaming { Wan, Diffusers };
const char* naming_name(CheckpointNaming naming);  // "wan", "diffusers"
CheckpointNaming parse_naming(const std::string& name);  // "wan" / "diffusers"; throws otherwise

// Wan key -> diffusers key and back (throws naming the key if it has no mapping).
std::string wan_to_diffusers_name(const std::string& wan_name);
std::string diffusers_to_wan_name(const std::string& diffusers_name);
std::string name_in(CheckpointNaming naming, const std::string& wan_name);

// Diffusers when any key is diffusers-only (condition_embedder.*, proj_out.*,
// scale_shift_table, *.attn1.*, *.attn2.*, *.ffn.net.*), else Wan.
CheckpointNaming detect_naming(const std::vector<std::string>& keys);

struct LoadOptions {
  // Parameters absent from the file keep their values instead of failing (loading a
  // Wan teacher into a model with extra parameters); they are listed in the result.
  bool allow_missing = false;
};

struct LoadResult {
  CheckpointNaming naming = CheckpointNaming::Wan;
  std::vector<std::string> loaded;   // Wan names
  std::vector<std::string> missing;  // Wan names left as they were (allow_missing only)
};

// Copies every tensor of the file(s) (one checkpoint, possibly sharded) into the
// parameter of the same Wan name, converting dtype and device. Checks everything before
// copying anything: on error no parameter is modified.
LoadResult load_parameters(const NamedTensors& params, const std::vector<SafetensorsFile>& files,
                           const LoadOptions& options = {});
LoadResult load_parameters(const NamedTensors& params, const SafetensorsFile& file, const LoadOptions& options = {});

// The safetensors files of a checkpoint `path`: a .safetensors file; a sharded
// checkpoint's *.safetensors.index.json (its weight_map's files); or a directory (its
// diffusion_pytorch_model*.safetensors, as Wan's and diffusers' folders hold them).
std::vector<std::string> checkpoint_files(const std::string& path);
LoadResult load_checkpoint(WanModel& model, const std::string& path, const LoadOptions& options = {});

// Writes the parameters under `naming` in `dtype` on disk (atomic; metadata gets
// format=pt and rehyat.naming). dtype: F32, BF16, F16 or F64.
void save_parameters(const NamedTensors& params, const std::string& path, CheckpointNaming naming = CheckpointNaming::Wan,
                     DType dtype = DType::F32, const std::map<std::string, std::string>& metadata = {});
void save_checkpoint(const WanModel& model, const std::string& path, CheckpointNaming naming = CheckpointNaming::Wan,
                     DType dtype = DType::F32, const std::map<std::string, std::string>& metadata = {});

}  // namespace rehyat::layers
