// Model and attention config as JSON in a checkpoint's header, read back strictly; the same
// description from YAML; and the comparison of the two.
#include "export/model_metadata.h"

#include <filesystem>
#include <set>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "core/check.h"
#include "layers/wan_checkpoint.h"
#include "train/run_config.h"

namespace rehyat::exporting {

namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;
using attention::AttentionConfig;
using layers::WanConfig;

// The fields of each config, in the order they are written, as member pointers so writing,
// reading and comparing share one list.
constexpr std::pair<const char*, int64_t WanConfig::*> kModelIntegers[] = {
    {"dim", &WanConfig::dim},           {"ffn_dim", &WanConfig::ffn_dim},   {"freq_dim", &WanConfig::freq_dim},
    {"num_heads", &WanConfig::num_heads}, {"num_layers", &WanConfig::num_layers}, {"in_dim", &WanConfig::in_dim},
    {"out_dim", &WanConfig::out_dim},   {"text_len", &WanConfig::text_len}, {"text_dim", &WanConfig::text_dim}};

// Integer settings of the attention op itself (compared as they are) ...
constexpr std::pair<const char*, int64_t AttentionConfig::*> kAttentionOpIntegers[] = {
    {"chunk_frames", &AttentionConfig::chunk_frames}, {"overlap_frames", &AttentionConfig::overlap_frames},
    {"degree", &AttentionConfig::degree}, {"rate", &AttentionConfig::rate}};
// ... and the rest (feature sizes with 0 meaning 2 * head_dim; the block count).
constexpr std::pair<const char*, int64_t AttentionConfig::*> kAttentionOtherIntegers[] = {
    {"feature_dim", &AttentionConfig::feature_dim}, {"hidden_dim", &AttentionConfig::hidden_dim},
    {"hybrid_block_count", &AttentionConfig::hybrid_block_count}};

constexpr std::pair<const char*, std::vector<int64_t> AttentionConfig::*> kAttentionLists[] = {
    {"hybrid_blocks", &AttentionConfig::hybrid_blocks}, {"block_ranking", &AttentionConfig::block_ranking}};

// Reads the fields of one JSON object, each error naming `where` (file and metadata key)
// and the field; fields not read by the end are reported as unknown.
class FieldReader {
 public:
  FieldReader(const std::string& text, std::string where) : where_(std::move(where)) {
    try {
      object_ = json::parse(text);
    } catch (const json::exception& e) {
      REHYAT_FAIL("{}: not valid JSON: {}", where_, e.what());
    }
    REHYAT_CHECK(object_.is_object(), "{}: expected a JSON object, got {}", where_, object_.type_name());
  }

  bool has(const char* field) const { return object_.contains(field); }

  int64_t integer(const char* field) {
    const json& v = get(field);
    REHYAT_CHECK(v.is_number_integer(), "{}: field '{}' must be an integer, got {}", where_, field, v.dump());
    return v.get<int64_t>();
  }
  double number(const char* field) {
    const json& v = get(field);
    REHYAT_CHECK(v.is_number(), "{}: field '{}' must be a number, got {}", where_, field, v.dump());
    return v.get<double>();
  }
  bool boolean(const char* field) {
    const json& v = get(field);
    REHYAT_CHECK(v.is_boolean(), "{}: field '{}' must be true or false, got {}", where_, field, v.dump());
    return v.get<bool>();
  }
  std::string string(const char* field) {
    const json& v = get(field);
    REHYAT_CHECK(v.is_string(), "{}: field '{}' must be a string, got {}", where_, field, v.dump());
    return v.get<std::string>();
  }
  std::vector<int64_t> integers(const char* field) {
    const json& v = get(field);
    REHYAT_CHECK(v.is_array(), "{}: field '{}' must be a list of integers, got {}", where_, field, v.dump());
    std::vector<int64_t> out;
    for (const json& item : v) {
      REHYAT_CHECK(item.is_number_integer(), "{}: field '{}' must be a list of integers, got {}", where_, field,
                   v.dump());
      out.push_back(item.get<int64_t>());
    }
    return out;
  }

  // Throws naming every field that was present but never read.
  void reject_unknown() const {
    std::vector<std::string> unknown;
    for (const auto& [key, value] : object_.items())
      if (!read_.count(key)) unknown.push_back(fmt::format("'{}'", key));
    REHYAT_CHECK(unknown.empty(), "{}: unknown field{} {}", where_, unknown.size() == 1 ? "" : "s",
                 fmt::join(unknown, ", "));
  }

  const std::string& where() const { return where_; }

 private:
  const json& get(const char* field) {
    REHYAT_CHECK(object_.contains(field), "{}: missing field '{}'", where_, field);
    read_.insert(field);
    return object_.at(field);
  }

  std::string where_;
  json object_;
  std::set<std::string> read_;
};

// The problems of a config, one per line, as "key: message".
std::string problem_lines(const std::vector<std::pair<std::string, std::string>>& problems) {
  std::vector<std::string> lines;
  for (const auto& [key, message] : problems) lines.push_back(fmt::format("{}: {}", key, message));
  return fmt::format("{}", fmt::join(lines, "\n  "));
}

std::string where_in(const std::string& file, const char* key) { return fmt::format("{}: metadata '{}'", file, key); }

// A run config has a `run:` section (run.name is required there), in the file itself or in
// a file it includes.
bool has_run_section(const std::string& path, int depth = 0) {
  REHYAT_CHECK(depth < 16, "{}: `include:` nested more than 16 deep (a cycle?)", path);
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    REHYAT_FAIL("{}: not valid YAML: {}", path, e.what());
  }
  if (!root.IsMap()) return false;
  if (root["run"]) return true;
  const YAML::Node include = root["include"];
  if (!include) return false;
  std::vector<std::string> files;
  if (include.IsScalar()) files.push_back(include.as<std::string>());
  if (include.IsSequence())
    for (const YAML::Node& f : include) files.push_back(f.as<std::string>());
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  for (const std::string& f : files) {
    const std::string included = (dir / f).string();
    if (std::filesystem::exists(included) && has_run_section(included, depth + 1)) return true;
  }
  return false;
}

int64_t resolved_size(int64_t value, int64_t head_dim) { return value > 0 ? value : 2 * head_dim; }

}  // namespace

std::string model_config_json(const WanConfig& config) {
  ordered_json j;
  for (const auto& [name, field] : kModelIntegers) j[name] = config.*field;
  j["eps"] = config.eps;
  j["patch_size"] = config.patch_size;
  return j.dump();
}

std::string attention_config_json(const AttentionConfig& config, int64_t num_layers) {
  ordered_json j;
  j["kind"] = attention::attention_kind_name(config.kind);
  j["chunk_frames"] = config.chunk_frames;
  j["overlap_frames"] = config.overlap_frames;
  j["causal"] = config.causal;
  j["degree"] = config.degree;
  j["feature_dim"] = config.feature_dim;
  j["hidden_dim"] = config.hidden_dim;
  j["activation"] = attention::feature_activation_name(config.activation);
  j["rate"] = config.rate;
  j["hybrid_blocks"] = config.hybrid_blocks;
  j["hybrid_block_count"] = config.hybrid_block_count;
  j["block_ranking"] = config.block_ranking;
  j["converted_blocks"] = config.converted_blocks(num_layers);
  return j.dump();
}

WanConfig parse_model_config_json(const std::string& text, const std::string& where) {
  FieldReader in(text, where);
  WanConfig c;
  for (const auto& [name, field] : kModelIntegers) c.*field = in.integer(name);
  // Optional as in the `model:` section, with Wan's defaults.
  if (in.has("eps")) c.eps = in.number("eps");
  if (in.has("patch_size")) {
    const std::vector<int64_t> patch = in.integers("patch_size");
    REHYAT_CHECK(patch.size() == 3, "{}: field 'patch_size' must have 3 entries (t, h, w), got {}", where,
                 patch.size());
    for (size_t i = 0; i < 3; ++i) c.patch_size[i] = patch[i];
  }
  in.reject_unknown();
  const auto problems = c.problems();
  REHYAT_CHECK(problems.empty(), "{}: invalid model config:\n  {}", where, problem_lines(problems));
  return c;
}

AttentionConfig parse_attention_config_json(const std::string& text, const WanConfig& model, const std::string& where) {
  FieldReader in(text, where);
  // Every field optional with the `attention:` section's default.
  AttentionConfig c;
  if (in.has("kind")) {
    const std::string kind = in.string("kind");
    try {
      c.kind = attention::parse_attention_kind(kind);
    } catch (const Error& e) {
      REHYAT_FAIL("{}: field 'kind': {}", where, e.what());
    }
  }
  if (in.has("causal")) c.causal = in.boolean("causal");
  if (in.has("activation")) {
    const std::string activation = in.string("activation");
    try {
      c.activation = attention::parse_feature_activation(activation);
    } catch (const Error& e) {
      REHYAT_FAIL("{}: field 'activation': {}", where, e.what());
    }
  }
  for (const auto& [name, field] : kAttentionOpIntegers)
    if (in.has(name)) c.*field = in.integer(name);
  for (const auto& [name, field] : kAttentionOtherIntegers)
    if (in.has(name)) c.*field = in.integer(name);
  for (const auto& [name, field] : kAttentionLists)
    if (in.has(name)) c.*field = in.integers(name);
  const bool lists_converted = in.has("converted_blocks");
  const std::vector<int64_t> converted = lists_converted ? in.integers("converted_blocks") : std::vector<int64_t>{};
  in.reject_unknown();
  const auto problems = c.problems(model.num_layers, model.head_dim());
  REHYAT_CHECK(problems.empty(), "{}: invalid attention config:\n  {}", where, problem_lines(problems));
  if (lists_converted) {
    const std::vector<int> resolved = c.converted_blocks(model.num_layers);
    REHYAT_CHECK(std::vector<int64_t>(resolved.begin(), resolved.end()) == converted,
                 "{}: field 'converted_blocks' [{}] disagrees with the blocks the other fields select [{}]", where,
                 fmt::join(converted, ", "), fmt::join(resolved, ", "));
  }
  return c;
}

std::map<std::string, std::string> checkpoint_metadata(const WanConfig& model, const AttentionConfig& attention) {
  return {{kModelConfigKey, model_config_json(model)},
          {kAttentionConfigKey, attention_config_json(attention, model.num_layers)}};
}

std::optional<ModelDescription> read_checkpoint_metadata(const SafetensorsFile& file) {
  const auto& metadata = file.metadata();
  const auto model_it = metadata.find(kModelConfigKey);
  const auto attention_it = metadata.find(kAttentionConfigKey);
  const bool has_model = model_it != metadata.end(), has_attention = attention_it != metadata.end();
  if (!has_model && !has_attention) return std::nullopt;
  REHYAT_CHECK(has_model && has_attention, "{}: metadata has '{}' but no '{}' (the two describe the model together)",
               file.path(), has_model ? kModelConfigKey : kAttentionConfigKey,
               has_model ? kAttentionConfigKey : kModelConfigKey);
  ModelDescription d;
  d.model = parse_model_config_json(model_it->second, where_in(file.path(), kModelConfigKey));
  d.attention = parse_attention_config_json(attention_it->second, d.model, where_in(file.path(), kAttentionConfigKey));
  d.source = fmt::format("{} (safetensors metadata)", file.path());
  return d;
}

std::optional<ModelDescription> read_checkpoint_description(const std::string& checkpoint) {
  std::optional<ModelDescription> found;
  for (const std::string& path : layers::checkpoint_files(checkpoint)) {
    std::optional<ModelDescription> d = read_checkpoint_metadata(SafetensorsFile::open(path));
    if (!d) continue;
    if (!found) {
      found = std::move(d);
      continue;
    }
    const std::vector<std::string> differences = description_differences(*found, *d);
    REHYAT_CHECK(differences.empty(), "{}: shards describe different models ({} vs {}):\n  {}", checkpoint,
                 found->source, d->source, fmt::join(differences, "\n  "));
  }
  return found;
}

ModelDescription load_model_description(const std::string& yaml_path, const std::vector<std::string>& overrides) {
  REHYAT_CHECK(std::filesystem::is_regular_file(yaml_path), "config '{}' does not exist", yaml_path);
  ConfigSchema schema;
  if (has_run_section(yaml_path)) {
    train::declare_run_config(schema);  // includes model: and attention:
  } else {
    layers::declare_model_config(schema);
    attention::declare_attention_config(schema);
  }
  const Config config = load_config(yaml_path, schema, overrides);
  ModelDescription d;
  d.model = layers::from_config(config);
  d.attention = attention::attention_config_from(config, d.model);
  d.attention_given = false;
  for (const ConfigField& field : schema.fields())
    if (field.key.rfind("attention.", 0) == 0 && config.origin(field.key) != "default") d.attention_given = true;
  d.source = yaml_path;
  return d;
}

std::vector<std::string> description_differences(const ModelDescription& stored, const ModelDescription& given) {
  std::vector<std::string> out;
  auto differ = [&](const std::string& key, const auto& in_stored, const auto& in_given) {
    out.push_back(fmt::format("{}: {} vs {}", key, in_stored, in_given));
  };
  const WanConfig &a = stored.model, &b = given.model;
  for (const auto& [name, field] : kModelIntegers)
    if (a.*field != b.*field) differ(fmt::format("model.{}", name), a.*field, b.*field);
  if (a.eps != b.eps) differ("model.eps", a.eps, b.eps);
  if (a.patch_size != b.patch_size)
    differ("model.patch_size", fmt::format("[{}]", fmt::join(a.patch_size, ", ")),
           fmt::format("[{}]", fmt::join(b.patch_size, ", ")));
  if (!given.attention_given) return out;

  const AttentionConfig &x = stored.attention, &y = given.attention;
  using attention::AttentionKind;
  if (x.kind != y.kind)
    differ("attention.kind", attention::attention_kind_name(x.kind), attention::attention_kind_name(y.kind));
  // A softmax model has no other attention settings; against a hybrid one the kind says it.
  if (x.kind == AttentionKind::Softmax || y.kind == AttentionKind::Softmax) return out;
  for (const auto& [name, field] : kAttentionOpIntegers)
    if (x.*field != y.*field) differ(fmt::format("attention.{}", name), x.*field, y.*field);
  if (x.causal != y.causal) differ("attention.causal", x.causal, y.causal);
  if (x.activation != y.activation)
    differ("attention.activation", attention::feature_activation_name(x.activation),
           attention::feature_activation_name(y.activation));
  // Feature sizes compare as the model builds them (0: 2 * head_dim).
  const int64_t head_dim = a.head_dim();
  if (resolved_size(x.feature_dim, head_dim) != resolved_size(y.feature_dim, head_dim))
    differ("attention.feature_dim", resolved_size(x.feature_dim, head_dim), resolved_size(y.feature_dim, head_dim));
  if (resolved_size(x.hidden_dim, head_dim) != resolved_size(y.hidden_dim, head_dim))
    differ("attention.hidden_dim", resolved_size(x.hidden_dim, head_dim), resolved_size(y.hidden_dim, head_dim));
  const std::vector<int> x_blocks = x.converted_blocks(a.num_layers), y_blocks = y.converted_blocks(b.num_layers);
  const bool count_only = y.hybrid_blocks.empty() && y.hybrid_block_count > 0 && y.block_ranking.empty();
  if (count_only) {
    if (int64_t(x_blocks.size()) != y.hybrid_block_count)
      differ("attention.hybrid_block_count",
             fmt::format("{} (blocks [{}])", x_blocks.size(), fmt::join(x_blocks, ", ")), y.hybrid_block_count);
  } else if (x_blocks != y_blocks) {
    differ("converted blocks", fmt::format("[{}]", fmt::join(x_blocks, ", ")),
           fmt::format("[{}]", fmt::join(y_blocks, ", ")));
  }
  return out;
}

}  // namespace rehyat::exporting
