// Description, model and safetensors export of a checkpoint (see export_safetensors.h).
#include "export/export_safetensors.h"

#include <filesystem>

#include <fmt/format.h>

#include "core/check.h"
#include "layers/hybrid_core.h"

namespace rehyat::exporting {

ModelDescription resolve_description(const std::string& checkpoint, const std::string& config_path,
                                     const std::vector<std::string>& overrides) {
  std::optional<ModelDescription> stored = read_checkpoint_description(checkpoint);
  if (config_path.empty()) {
    REHYAT_CHECK(overrides.empty(), "config overrides ({}) need a config file to apply to",
                 fmt::join(overrides, ", "));
    REHYAT_CHECK(stored.has_value(),
                 "{}: the checkpoint does not say which model it holds (no '{}' / '{}' in its safetensors metadata, "
                 "as in a Wan2.1 release or a checkpoint written before rehyat recorded it): give the model with "
                 "--config, a model YAML (configs/models/*.yaml, optionally with an `attention:` section) or the "
                 "run config it was trained with",
                 checkpoint, kModelConfigKey, kAttentionConfigKey);
    return *stored;
  }
  ModelDescription given = load_model_description(config_path, overrides);
  if (!stored) return given;
  const std::vector<std::string> differences = description_differences(*stored, given);
  REHYAT_CHECK(differences.empty(),
               "{}: the checkpoint's metadata and the config {} describe different models (metadata vs config):\n  {}\n"
               "the checkpoint's own metadata suffices: leave out the config, or give the one it was made with",
               checkpoint, config_path, fmt::join(differences, "\n  "));
  return *stored;  // the more specific of the two (the blocks distillation chose)
}

layers::WanModel load_described_model(const std::string& checkpoint, const ModelDescription& description) {
  layers::WanModel model(description.model, Device::cpu(), DType::F32);
  const std::vector<int> converted = layers::apply_attention_config(model, description.attention);
  try {
    layers::load_checkpoint(model, checkpoint);
  } catch (const Error& e) {
    const std::string attention =
        converted.empty() ? std::string("softmax attention in every block")
                          : fmt::format("{} attention in blocks [{}]",
                                        attention::attention_kind_name(description.attention.kind),
                                        fmt::join(converted, ", "));
    REHYAT_FAIL("{}\n(the model, {} blocks with {}, is described by {})", e.what(), description.model.num_layers,
                attention, description.source);
  }
  return model;
}

ExportSummary export_safetensors(const layers::WanModel& model, const attention::AttentionConfig& attention,
                                 const std::string& out, layers::CheckpointNaming naming, DType dtype) {
  REHYAT_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
               "{}: export dtype must be f32, bf16 or f16, got {}", out, dtype_name(dtype));
  layers::save_checkpoint(model, out, naming, dtype, checkpoint_metadata(model.config(), attention));
  ExportSummary summary;
  summary.path = out;
  summary.tensors = int64_t(model.named_parameters().size());
  summary.parameters = model.parameter_count();
  summary.bytes = std::filesystem::file_size(out);
  return summary;
}

}  // namespace rehyat::exporting
