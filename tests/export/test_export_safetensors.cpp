// The model description in checkpoint metadata and the safetensors export: JSON round trips
// of every config field (non-default values), malformed metadata reported naming the file,
// key and field, description from metadata vs YAML (agreement, conflicts, a checkpoint
// without metadata), and a tiny random hybrid model exported in both namings and three
// dtypes, reloaded into a fresh model with equal (or correctly rounded) values.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "export/export_safetensors.h"
#include "export/model_metadata.h"
#include "layers/hybrid_core.h"
#include "layers/layer_test_util.h"
#include "layers/wan_checkpoint.h"
#include "layers/wan_model.h"
#include "temp_dir.h"

namespace rehyat::testing {
namespace {

using attention::AttentionConfig;
using attention::AttentionKind;
using attention::FeatureActivation;
using exporting::ModelDescription;
using layers::CheckpointNaming;
using layers::WanConfig;
using layers::WanModel;
using json = nlohmann::json;

// Every field away from its default.
WanConfig odd_model() {
  WanConfig c;
  c.dim = 36;
  c.ffn_dim = 50;
  c.freq_dim = 10;
  c.num_heads = 3;
  c.num_layers = 5;
  c.in_dim = 5;
  c.out_dim = 7;
  c.text_len = 9;
  c.text_dim = 11;
  c.eps = 3.25e-5;
  c.patch_size = {2, 1, 2};
  return c;
}

AttentionConfig odd_attention() {
  AttentionConfig a;
  a.kind = AttentionKind::UniformHybrid;
  a.chunk_frames = 4;
  a.overlap_frames = 2;
  a.causal = false;
  a.degree = 3;
  a.feature_dim = 27;
  a.hidden_dim = 17;
  a.activation = FeatureActivation::Relu;
  a.rate = 3;
  a.hybrid_block_count = 2;
  a.block_ranking = {4, 1, 0};
  return a;
}

void expect_same_model(const WanConfig& a, const WanConfig& b) {
  EXPECT_EQ(a.dim, b.dim);
  EXPECT_EQ(a.ffn_dim, b.ffn_dim);
  EXPECT_EQ(a.freq_dim, b.freq_dim);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.in_dim, b.in_dim);
  EXPECT_EQ(a.out_dim, b.out_dim);
  EXPECT_EQ(a.text_len, b.text_len);
  EXPECT_EQ(a.text_dim, b.text_dim);
  EXPECT_EQ(a.eps, b.eps);
  EXPECT_EQ(a.patch_size, b.patch_size);
}

void expect_same_attention(const AttentionConfig& a, const AttentionConfig& b) {
  EXPECT_EQ(a.kind, b.kind);
  EXPECT_EQ(a.chunk_frames, b.chunk_frames);
  EXPECT_EQ(a.overlap_frames, b.overlap_frames);
  EXPECT_EQ(a.causal, b.causal);
  EXPECT_EQ(a.degree, b.degree);
  EXPECT_EQ(a.feature_dim, b.feature_dim);
  EXPECT_EQ(a.hidden_dim, b.hidden_dim);
  EXPECT_EQ(a.activation, b.activation);
  EXPECT_EQ(a.rate, b.rate);
  EXPECT_EQ(a.hybrid_blocks, b.hybrid_blocks);
  EXPECT_EQ(a.hybrid_block_count, b.hybrid_block_count);
  EXPECT_EQ(a.block_ranking, b.block_ranking);
}

TEST(ModelMetadata, ModelConfigJsonRoundTripUsesWanKeyNames) {
  const WanConfig c = odd_model();
  const std::string text = exporting::model_config_json(c);
  const json j = json::parse(text);
  EXPECT_EQ(j.at("num_heads"), 3);
  EXPECT_EQ(j.at("ffn_dim"), 50);
  EXPECT_EQ(j.at("patch_size"), json::array({2, 1, 2}));
  EXPECT_EQ(j.size(), 11u);
  expect_same_model(exporting::parse_model_config_json(text, "here"), c);
}

TEST(ModelMetadata, AttentionConfigJsonRoundTripOfEveryField) {
  const WanConfig model = odd_model();
  AttentionConfig by_count = odd_attention();
  AttentionConfig by_list;
  by_list.kind = AttentionKind::Linear;
  by_list.chunk_frames = 7;
  by_list.overlap_frames = 0;
  by_list.degree = 1;
  by_list.activation = FeatureActivation::None;
  by_list.hybrid_blocks = {3, 1};
  for (const AttentionConfig& a : {by_count, by_list}) {
    const std::string text = exporting::attention_config_json(a, model.num_layers);
    const json j = json::parse(text);
    EXPECT_EQ(j.at("kind"), attention::attention_kind_name(a.kind));
    EXPECT_EQ(j.at("activation"), attention::feature_activation_name(a.activation));
    const std::vector<int> converted = a.converted_blocks(model.num_layers);
    EXPECT_EQ(j.at("converted_blocks").get<std::vector<int>>(), converted);
    expect_same_attention(exporting::parse_attention_config_json(text, model, "here"), a);
  }
  EXPECT_EQ(json::parse(exporting::attention_config_json(by_count, 5)).at("converted_blocks"), json::array({1, 4}));
  EXPECT_EQ(json::parse(exporting::attention_config_json(by_list, 5)).at("converted_blocks"), json::array({1, 3}));
}

TEST(ModelMetadata, CheckpointMetadataReadsBackFromAFile) {
  TempDir dir;
  const std::string path = dir.file("described.safetensors");
  save_safetensors(path, {{"x", Tensor::randn({3}, 1)}}, exporting::checkpoint_metadata(odd_model(), odd_attention()));
  const std::optional<ModelDescription> d = exporting::read_checkpoint_metadata(SafetensorsFile::open(path));
  ASSERT_TRUE(d.has_value());
  expect_same_model(d->model, odd_model());
  expect_same_attention(d->attention, odd_attention());
  expect_contains(d->source, {path});

  const std::string plain = dir.file("plain.safetensors");
  save_safetensors(plain, {{"x", Tensor::randn({3}, 1)}}, {{"format", "pt"}});
  EXPECT_FALSE(exporting::read_checkpoint_metadata(SafetensorsFile::open(plain)).has_value());
}

// Writes a file whose metadata is the valid description with `key` set to `value`
// (or removed when value is empty) and returns the error reading it gives.
std::string read_error(const TempDir& dir, const std::string& key, const std::string& value) {
  std::map<std::string, std::string> metadata = exporting::checkpoint_metadata(odd_model(), odd_attention());
  if (value.empty()) {
    metadata.erase(key);
  } else {
    metadata[key] = value;
  }
  const std::string path = dir.file("bad.safetensors");
  save_safetensors(path, {{"x", Tensor::randn({2}, 3)}}, metadata);
  return error_message([&] { exporting::read_checkpoint_metadata(SafetensorsFile::open(path)); });
}

// The valid JSON of a key with one field replaced (or erased with a null value).
std::string edited(const std::string& key, const std::string& field, const json& value) {
  json j = json::parse(exporting::checkpoint_metadata(odd_model(), odd_attention()).at(key));
  if (value.is_null()) {
    j.erase(field);
  } else {
    j[field] = value;
  }
  return j.dump();
}

TEST(ModelMetadata, MalformedMetadataNamesFileKeyAndField) {
  TempDir dir;
  const std::string file = dir.file("bad.safetensors");
  const std::string model_key = exporting::kModelConfigKey, attention_key = exporting::kAttentionConfigKey;
  expect_contains(read_error(dir, model_key, "{\"dim\": 36,"), {file, model_key, "not valid JSON"});
  expect_contains(read_error(dir, attention_key, "[1, 2]"), {file, attention_key, "JSON object"});
  expect_contains(read_error(dir, model_key, ""), {file, attention_key, model_key});
  expect_contains(read_error(dir, model_key, edited(model_key, "num_layers", nullptr)),
                  {file, model_key, "missing field 'num_layers'"});
  expect_contains(read_error(dir, model_key, edited(model_key, "dim", "36")), {file, model_key, "'dim'", "integer"});
  expect_contains(read_error(dir, model_key, edited(model_key, "dim", 35.5)), {file, model_key, "'dim'", "integer"});
  expect_contains(read_error(dir, model_key, edited(model_key, "patch_size", json::array({1, 2}))),
                  {file, model_key, "'patch_size'", "3 entries"});
  expect_contains(read_error(dir, model_key, edited(model_key, "num_heads", 5)), {file, model_key, "model.num_heads"});
  expect_contains(read_error(dir, model_key, edited(model_key, "dims", 36)), {file, model_key, "unknown field 'dims'"});
  expect_contains(read_error(dir, attention_key, edited(attention_key, "chunk_frames", "4")),
                  {file, attention_key, "'chunk_frames'", "integer"});
  expect_contains(read_error(dir, attention_key, edited(attention_key, "causal", 1)),
                  {file, attention_key, "'causal'", "true or false"});
  expect_contains(read_error(dir, attention_key, edited(attention_key, "kind", "hybrid")),
                  {file, attention_key, "'kind'", "hybrid"});
  expect_contains(read_error(dir, attention_key, edited(attention_key, "activation", "tanh")),
                  {file, attention_key, "'activation'", "tanh"});
  expect_contains(read_error(dir, attention_key, edited(attention_key, "degree", 4)),
                  {file, attention_key, "attention.degree"});
  expect_contains(read_error(dir, attention_key, edited(attention_key, "block_ranking", json::array({4, 9}))),
                  {file, attention_key, "attention.block_ranking", "block 9"});
  expect_contains(read_error(dir, attention_key, edited(attention_key, "hybrid_blocks", json::array({1, "2"}))),
                  {file, attention_key, "'hybrid_blocks'", "list of integers"});
  expect_contains(read_error(dir, attention_key, edited(attention_key, "converted_blocks", json::array({0, 1}))),
                  {file, attention_key, "'converted_blocks'", "[0, 1]", "[1, 4]"});
  expect_contains(read_error(dir, attention_key, edited(attention_key, "chunk", 3)),
                  {file, attention_key, "unknown field 'chunk'"});
}

TEST(ModelMetadata, AttentionFieldsDefaultLikeTheYamlSection) {
  const AttentionConfig a = exporting::parse_attention_config_json(R"({"kind": "rehyat", "chunk_frames": 2})",
                                                                   odd_model(), "here");
  EXPECT_EQ(a.kind, AttentionKind::Rehyat);
  EXPECT_EQ(a.chunk_frames, 2);
  const AttentionConfig defaults;
  EXPECT_EQ(a.overlap_frames, defaults.overlap_frames);
  EXPECT_EQ(a.degree, defaults.degree);
  EXPECT_EQ(a.causal, defaults.causal);
  EXPECT_TRUE(a.hybrid_blocks.empty());
}

// --- descriptions from metadata and YAML -----------------------------------------------------

WanConfig tiny_model() {
  WanConfig c;
  c.dim = 24;
  c.ffn_dim = 40;
  c.freq_dim = 8;
  c.num_heads = 2;  // head dim 12
  c.num_layers = 3;
  c.in_dim = 3;
  c.out_dim = 2;
  c.text_len = 5;
  c.text_dim = 6;
  return c;
}

AttentionConfig tiny_hybrid() {
  AttentionConfig a;
  a.kind = AttentionKind::Rehyat;
  a.chunk_frames = 2;
  a.overlap_frames = 1;
  a.hidden_dim = 16;
  a.feature_dim = 18;
  a.degree = 3;
  a.hybrid_blocks = {0, 2};
  a.block_ranking = {2, 0, 1};
  return a;
}

std::string model_yaml(const WanConfig& c) { return c.to_yaml(); }

// A random tiny hybrid model written as a checkpoint with (or without) its metadata.
WanModel write_hybrid_checkpoint(const std::string& path, bool with_metadata, uint64_t seed = 11) {
  WanModel model(tiny_model(), Device::cpu(), DType::F32, seed);
  layers::apply_attention_config(model, tiny_hybrid(), seed);
  randomize_parameters(model.named_parameters(), seed + 1);
  layers::save_checkpoint(model, path, CheckpointNaming::Wan, DType::F32,
                          with_metadata ? exporting::checkpoint_metadata(tiny_model(), tiny_hybrid())
                                        : std::map<std::string, std::string>{});
  return model;
}

TEST(ExportDescription, MetadataAloneOrAnAgreeingConfig) {
  TempDir dir;
  const std::string ckpt = dir.file("model.safetensors");
  write_hybrid_checkpoint(ckpt, true);
  const ModelDescription from_metadata = exporting::resolve_description(ckpt, "");
  expect_same_model(from_metadata.model, tiny_model());
  expect_same_attention(from_metadata.attention, tiny_hybrid());

  // A model file alone says nothing about attention: it agrees with any.
  const std::string model_only = dir.file("model.yaml");
  write_file(model_only, model_yaml(tiny_model()));
  expect_same_attention(exporting::resolve_description(ckpt, model_only).attention, tiny_hybrid());
  // The same attention given as a count without ranking (distillation chose the blocks).
  const std::string with_count = dir.file("count.yaml");
  write_file(with_count, model_yaml(tiny_model()) +
                             "attention:\n  kind: rehyat\n  chunk_frames: 2\n  hidden_dim: 16\n  feature_dim: 18\n"
                             "  degree: 3\n  hybrid_block_count: 2\n");
  expect_same_attention(exporting::resolve_description(ckpt, with_count).attention, tiny_hybrid());
}

TEST(ExportDescription, ConflictsListEveryDifferingKey) {
  TempDir dir;
  const std::string ckpt = dir.file("model.safetensors");
  write_hybrid_checkpoint(ckpt, true);
  WanConfig other = tiny_model();
  other.dim = 36;
  other.ffn_dim = 44;
  const std::string yaml = dir.file("other.yaml");
  write_file(yaml, model_yaml(other) + "attention:\n  kind: rehyat\n  chunk_frames: 3\n  hidden_dim: 16\n"
                                       "  feature_dim: 18\n  degree: 3\n  hybrid_blocks: [0, 1]\n");
  const std::string message = error_message([&] { exporting::resolve_description(ckpt, yaml); });
  expect_contains(message, {ckpt, yaml, "model.dim: 24", "36", "model.ffn_dim", "attention.chunk_frames",
                            "converted blocks: [0, 2]", "[0, 1]"});
  EXPECT_EQ(message.find("model.num_heads"), std::string::npos) << message;
  EXPECT_EQ(message.find("attention.degree"), std::string::npos) << message;

  // Softmax against the hybrid checkpoint: the kind says it all; overrides apply.
  const std::string same = dir.file("same.yaml");
  write_file(same, model_yaml(tiny_model()));
  expect_contains(error_message([&] { exporting::resolve_description(ckpt, same, {"attention.kind=softmax"}); }),
                  {"attention.kind: rehyat", "softmax"});
  // A count of blocks that is not the checkpoint's.
  expect_contains(
      error_message([&] {
        exporting::resolve_description(ckpt, same,
                                       {"attention.kind=rehyat", "attention.chunk_frames=2", "attention.hidden_dim=16",
                                        "attention.feature_dim=18", "attention.degree=3",
                                        "attention.hybrid_block_count=1"});
      }),
      {"attention.hybrid_block_count: 2 (blocks [0, 2])"});
}

TEST(ExportDescription, CheckpointWithoutMetadataNeedsAConfig) {
  TempDir dir;
  const std::string ckpt = dir.file("plain.safetensors");
  const WanModel source = write_hybrid_checkpoint(ckpt, false);
  expect_contains(error_message([&] { exporting::resolve_description(ckpt, ""); }),
                  {ckpt, "--config", exporting::kModelConfigKey});
  // A model YAML without attention: the softmax teacher, which lacks this file's φ tensors.
  const std::string teacher_yaml = dir.file("teacher.yaml");
  write_file(teacher_yaml, model_yaml(tiny_model()));
  const ModelDescription teacher = exporting::resolve_description(ckpt, teacher_yaml);
  EXPECT_EQ(teacher.attention.kind, AttentionKind::Softmax);
  expect_contains(error_message([&] { exporting::load_described_model(ckpt, teacher); }),
                  {ckpt, "unexpected tensor 'blocks.0.self_attn.phi_q.0.weight'", teacher_yaml, "softmax"});
  // With the attention it was made with, every value loads.
  const std::string hybrid_yaml = dir.file("hybrid.yaml");
  write_file(hybrid_yaml, model_yaml(tiny_model()) + tiny_hybrid().to_yaml());
  const WanModel loaded = exporting::load_described_model(ckpt, exporting::resolve_description(ckpt, hybrid_yaml));
  const auto a = source.named_parameters(), b = loaded.named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].second.to_vector(), b[i].second.to_vector()) << a[i].first;
}

TEST(ExportDescription, HybridDescriptionOnATeacherCheckpointNamesTheMissingFeatureMaps) {
  TempDir dir;
  WanModel teacher(tiny_model(), Device::cpu(), DType::F32, 3);
  const std::string ckpt = dir.file("teacher.safetensors");
  layers::save_checkpoint(teacher, ckpt, CheckpointNaming::Wan, DType::F32,
                          exporting::checkpoint_metadata(tiny_model(), tiny_hybrid()));
  const ModelDescription d = exporting::resolve_description(ckpt, "");
  expect_contains(error_message([&] { exporting::load_described_model(ckpt, d); }),
                  {ckpt, "missing tensor 'blocks.2.self_attn.phi_k.2.bias'", "rehyat attention in blocks [0, 2]",
                   "safetensors metadata"});
}

// --- the export itself -------------------------------------------------------------------------

TEST(ExportSafetensors, HybridModelRoundTripsExactlyInBothNamings) {
  TempDir dir;
  const std::string ckpt = dir.file("model.safetensors");
  const WanModel source = write_hybrid_checkpoint(ckpt, true);
  const ModelDescription d = exporting::resolve_description(ckpt, "");
  const WanModel model = exporting::load_described_model(ckpt, d);
  for (CheckpointNaming naming : {CheckpointNaming::Wan, CheckpointNaming::Diffusers}) {
    const std::string out = dir.file(std::string("export-") + layers::naming_name(naming) + ".safetensors");
    const exporting::ExportSummary summary = exporting::export_safetensors(model, d.attention, out, naming, DType::F32);
    EXPECT_EQ(summary.tensors, int64_t(source.named_parameters().size()));
    EXPECT_EQ(summary.parameters, source.parameter_count());
    EXPECT_EQ(summary.bytes, std::filesystem::file_size(out));
    EXPECT_GT(summary.bytes, uint64_t(summary.parameters) * 4);

    const SafetensorsFile file = SafetensorsFile::open(out);
    EXPECT_EQ(file.metadata().at("format"), "pt");
    EXPECT_EQ(file.metadata().at("rehyat.naming"), layers::naming_name(naming));
    EXPECT_EQ(layers::detect_naming(file.names()), naming);
    const bool wan = naming == CheckpointNaming::Wan;
    for (const char* key : {"blocks.0.self_attn.phi_q.0.weight", "blocks.2.self_attn.phi_k.2.bias",
                            "blocks.0.self_attn.q.weight", "head.modulation"})
      EXPECT_EQ(file.has(key), wan) << key;
    for (const char* key : {"blocks.0.attn1.phi_q.0.weight", "blocks.2.attn1.phi_k.2.bias",
                            "blocks.0.attn1.to_q.weight", "scale_shift_table"})
      EXPECT_EQ(file.has(key), !wan) << key;
    EXPECT_FALSE(file.has(wan ? "blocks.1.self_attn.phi_q.0.weight" : "blocks.1.attn1.phi_q.0.weight"));

    // The export is a complete checkpoint: its own metadata rebuilds the model.
    const ModelDescription again = exporting::resolve_description(out, "");
    expect_same_model(again.model, tiny_model());
    expect_same_attention(again.attention, tiny_hybrid());
    const WanModel fresh = exporting::load_described_model(out, again);
    const auto a = source.named_parameters(), b = fresh.named_parameters();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(a[i].first, b[i].first);
      EXPECT_EQ(a[i].second.to_vector(), b[i].second.to_vector()) << a[i].first;
    }
  }
}

TEST(ExportSafetensors, HalfPrecisionExportsHoldTheRoundedValues) {
  TempDir dir;
  const std::string ckpt = dir.file("model.safetensors");
  const WanModel source = write_hybrid_checkpoint(ckpt, true, 21);
  const ModelDescription d = exporting::resolve_description(ckpt, "");
  const WanModel model = exporting::load_described_model(ckpt, d);
  for (DType dtype : {DType::BF16, DType::F16}) {
    const std::string out = dir.file(std::string("export-") + dtype_name(dtype) + ".safetensors");
    const exporting::ExportSummary summary =
        exporting::export_safetensors(model, d.attention, out, CheckpointNaming::Diffusers, dtype);
    EXPECT_LT(summary.bytes, uint64_t(summary.parameters) * 2 + 65536);
    const SafetensorsFile file = SafetensorsFile::open(out);
    for (const std::string& name : file.names()) EXPECT_EQ(file.info(name).dtype, dtype) << name;
    const WanModel fresh = exporting::load_described_model(out, exporting::resolve_description(out, ""));
    const auto a = source.named_parameters(), b = fresh.named_parameters();
    ASSERT_EQ(a.size(), b.size());
    size_t changed = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      const std::vector<double> rounded = a[i].second.to(dtype).to_vector(), original = a[i].second.to_vector();
      EXPECT_EQ(b[i].second.to_vector(), rounded) << a[i].first;
      changed += rounded != original;
    }
    EXPECT_GT(changed, a.size() / 2) << "rounding to " << dtype_name(dtype) << " should change most tensors";
  }
  expect_contains(error_message([&] {
                    exporting::export_safetensors(model, d.attention, dir.file("x.safetensors"),
                                                  CheckpointNaming::Wan, DType::I32);
                  }),
                  {"x.safetensors", "f32, bf16 or f16"});
}

}  // namespace
}  // namespace rehyat::testing
