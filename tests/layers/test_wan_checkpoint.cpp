// Checkpoints: round trips in Wan's and diffusers' namings (f32 exact, bf16 rounded),
// the exact diffusers key names, naming detection, sharded checkpoints, and mismatches
// (missing, extra, misshapen, non-float) reported together, naming file and tensors, with
// the model left untouched.
#include <gtest/gtest.h>

#include "core/safetensors.h"
#include "layer_test_util.h"
#include "layers/wan_checkpoint.h"
#include "layers/wan_model.h"
#include "temp_dir.h"

namespace rehyat::testing {
namespace {

using layers::CheckpointNaming;
using layers::WanConfig;
using layers::WanModel;

WanConfig tiny(int64_t layers = 2) {
  WanConfig c;
  c.dim = 12;
  c.ffn_dim = 20;
  c.freq_dim = 8;
  c.num_heads = 2;
  c.num_layers = layers;
  c.in_dim = 3;
  c.out_dim = 2;
  c.text_len = 4;
  c.text_dim = 6;
  return c;
}

void expect_same_parameters(const WanModel& a, const WanModel& b) {
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    ASSERT_EQ(pa[i].first, pb[i].first);
    EXPECT_EQ(pa[i].second.to_vector(), pb[i].second.to_vector()) << pa[i].first;
  }
}

TEST(WanCheckpoint, RoundTripInBothNamings) {
  TempDir dir;
  WanModel source(tiny(), Device::cpu(), DType::F32, 1);
  randomize_parameters(source.named_parameters(), 2);
  for (CheckpointNaming naming : {CheckpointNaming::Wan, CheckpointNaming::Diffusers}) {
    const std::string path = dir.file(std::string(layers::naming_name(naming)) + ".safetensors");
    layers::save_checkpoint(source, path, naming);
    const SafetensorsFile file = SafetensorsFile::open(path);
    EXPECT_EQ(layers::detect_naming(file.names()), naming);
    EXPECT_EQ(file.metadata().at("rehyat.naming"), layers::naming_name(naming));
    WanModel target(tiny(), Device::cpu(), DType::F32, 7);
    const layers::LoadResult r = layers::load_checkpoint(target, path);
    EXPECT_EQ(r.naming, naming);
    EXPECT_EQ(r.loaded.size(), source.named_parameters().size());
    EXPECT_TRUE(r.missing.empty());
    expect_same_parameters(source, target);
  }
}

TEST(WanCheckpoint, Bf16OnDiskLoadsAsRoundedValuesIntoF64Params) {
  TempDir dir;
  const std::string path = dir.file("bf16.safetensors");
  WanModel source(tiny(1), Device::cpu(), DType::F32, 1);
  randomize_parameters(source.named_parameters(), 3);
  layers::save_checkpoint(source, path, CheckpointNaming::Wan, DType::BF16);
  const SafetensorsFile file = SafetensorsFile::open(path);
  for (const auto& name : file.names()) EXPECT_EQ(file.info(name).dtype, DType::BF16) << name;
  WanModel target(tiny(1), Device::cpu(), DType::F64, 5);
  layers::load_checkpoint(target, path);
  const auto ps = source.named_parameters(), pt = target.named_parameters();
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(pt[i].second.dtype(), DType::F64);
    EXPECT_EQ(pt[i].second.to_vector(), ps[i].second.to(DType::BF16).to_vector()) << ps[i].first;
  }
}

TEST(WanCheckpoint, DiffusersKeyNamesMatchWanTransformer3DModel) {
  TempDir dir;
  const std::string path = dir.file("d.safetensors");
  const WanConfig c = tiny(1);
  WanModel model(c);
  layers::save_checkpoint(model, path, CheckpointNaming::Diffusers);
  const SafetensorsFile file = SafetensorsFile::open(path);
  const int64_t D = c.dim;
  // Names from diffusers' scripts/convert_wan_to_diffusers.py applied to Wan's keys.
  const std::map<std::string, Shape> expected = {
      {"patch_embedding.weight", {D, c.in_dim, 1, 2, 2}},
      {"patch_embedding.bias", {D}},
      {"condition_embedder.text_embedder.linear_1.weight", {D, c.text_dim}},
      {"condition_embedder.text_embedder.linear_1.bias", {D}},
      {"condition_embedder.text_embedder.linear_2.weight", {D, D}},
      {"condition_embedder.text_embedder.linear_2.bias", {D}},
      {"condition_embedder.time_embedder.linear_1.weight", {D, c.freq_dim}},
      {"condition_embedder.time_embedder.linear_1.bias", {D}},
      {"condition_embedder.time_embedder.linear_2.weight", {D, D}},
      {"condition_embedder.time_embedder.linear_2.bias", {D}},
      {"condition_embedder.time_proj.weight", {6 * D, D}},
      {"condition_embedder.time_proj.bias", {6 * D}},
      {"blocks.0.scale_shift_table", {1, 6, D}},
      {"blocks.0.attn1.to_q.weight", {D, D}},
      {"blocks.0.attn1.to_q.bias", {D}},
      {"blocks.0.attn1.to_k.weight", {D, D}},
      {"blocks.0.attn1.to_k.bias", {D}},
      {"blocks.0.attn1.to_v.weight", {D, D}},
      {"blocks.0.attn1.to_v.bias", {D}},
      {"blocks.0.attn1.to_out.0.weight", {D, D}},
      {"blocks.0.attn1.to_out.0.bias", {D}},
      {"blocks.0.attn1.norm_q.weight", {D}},
      {"blocks.0.attn1.norm_k.weight", {D}},
      {"blocks.0.norm2.weight", {D}},
      {"blocks.0.norm2.bias", {D}},
      {"blocks.0.attn2.to_q.weight", {D, D}},
      {"blocks.0.attn2.to_q.bias", {D}},
      {"blocks.0.attn2.to_k.weight", {D, D}},
      {"blocks.0.attn2.to_k.bias", {D}},
      {"blocks.0.attn2.to_v.weight", {D, D}},
      {"blocks.0.attn2.to_v.bias", {D}},
      {"blocks.0.attn2.to_out.0.weight", {D, D}},
      {"blocks.0.attn2.to_out.0.bias", {D}},
      {"blocks.0.attn2.norm_q.weight", {D}},
      {"blocks.0.attn2.norm_k.weight", {D}},
      {"blocks.0.ffn.net.0.proj.weight", {c.ffn_dim, D}},
      {"blocks.0.ffn.net.0.proj.bias", {c.ffn_dim}},
      {"blocks.0.ffn.net.2.weight", {D, c.ffn_dim}},
      {"blocks.0.ffn.net.2.bias", {D}},
      {"scale_shift_table", {1, 2, D}},
      {"proj_out.weight", {c.out_dim * 4, D}},
      {"proj_out.bias", {c.out_dim * 4}},
  };
  EXPECT_EQ(file.names().size(), expected.size());
  for (const auto& [name, shape] : expected) {
    ASSERT_TRUE(file.has(name)) << name;
    EXPECT_EQ(file.info(name).shape, shape) << name;
  }
}

TEST(WanCheckpoint, NameMapsInvertAndCarryExtraAttentionParameters) {
  WanModel model(tiny(3));
  for (const auto& [name, t] : model.named_parameters())
    EXPECT_EQ(layers::diffusers_to_wan_name(layers::wan_to_diffusers_name(name)), name);
  EXPECT_EQ(layers::wan_to_diffusers_name("blocks.12.self_attn.phi_q.0.weight"), "blocks.12.attn1.phi_q.0.weight");
  EXPECT_EQ(layers::diffusers_to_wan_name("blocks.12.attn1.phi_k.2.bias"), "blocks.12.self_attn.phi_k.2.bias");
  EXPECT_EQ(layers::wan_to_diffusers_name("blocks.3.norm3.weight"), "blocks.3.norm2.weight");
  EXPECT_EQ(layers::diffusers_to_wan_name("blocks.3.norm2.bias"), "blocks.3.norm3.bias");
  EXPECT_THROW(layers::wan_to_diffusers_name("blocks.1.unknown.weight"), Error);
  EXPECT_EQ(layers::parse_naming("diffusers"), CheckpointNaming::Diffusers);
  EXPECT_THROW(layers::parse_naming("comfy"), Error);
}

TEST(WanCheckpoint, ShardedCheckpointLoadsFromIndexAndDirectory) {
  TempDir dir;
  WanModel source(tiny(2), Device::cpu(), DType::F32, 1);
  randomize_parameters(source.named_parameters(), 4);
  const auto params = source.named_parameters();
  const size_t half = params.size() / 2;
  const layers::NamedTensors first(params.begin(), params.begin() + long(half)), second(params.begin() + long(half), params.end());
  layers::save_parameters(first, dir.file("diffusion_pytorch_model-00001-of-00002.safetensors"));
  layers::save_parameters(second, dir.file("diffusion_pytorch_model-00002-of-00002.safetensors"));
  std::string index = "{\"metadata\": {}, \"weight_map\": {";
  for (size_t i = 0; i < params.size(); ++i)
    index += fmt::format("{}\"{}\": \"diffusion_pytorch_model-0000{}-of-00002.safetensors\"", i ? ", " : "",
                         params[i].first, i < half ? 1 : 2);
  write_file(dir.file("diffusion_pytorch_model.safetensors.index.json"), index + "}}");
  for (const std::string& path : {dir.file("diffusion_pytorch_model.safetensors.index.json"), dir.path().string()}) {
    WanModel target(tiny(2), Device::cpu(), DType::F32, 9);
    layers::load_checkpoint(target, path);
    expect_same_parameters(source, target);
  }
  // One shard alone is missing the other half, and says so.
  WanModel target(tiny(2));
  expect_contains(error_message([&] {
                    layers::load_checkpoint(target, dir.file("diffusion_pytorch_model-00001-of-00002.safetensors"));
                  }),
                  {"missing tensor 'head.head.weight'", "00001-of-00002"});
}

// Writes `model`'s tensors with edits: removes `drop`, adds `extra`, reshapes `reshape`.
std::string write_edited(const TempDir& dir, const WanModel& model, CheckpointNaming naming,
                         const std::vector<std::string>& drop, const layers::NamedTensors& extra,
                         const std::string& reshape, const std::string& file_name) {
  layers::NamedTensors out;
  for (const auto& [name, t] : model.named_parameters()) {
    const std::string key = layers::name_in(naming, name);
    if (std::find(drop.begin(), drop.end(), key) != drop.end()) continue;
    out.emplace_back(key, key == reshape ? Tensor::randn({t.numel() + 1}, 3) : t.detach());
  }
  for (const auto& e : extra) out.push_back(e);
  const std::string path = dir.file(file_name);
  save_safetensors(path, out);
  return path;
}

TEST(WanCheckpoint, MismatchesAreAllReportedWithFileAndTensorNames) {
  TempDir dir;
  WanModel source(tiny(2));
  randomize_parameters(source.named_parameters(), 5);

  const std::string wan_path = write_edited(dir, source, CheckpointNaming::Wan,
                                            {"blocks.1.self_attn.k.bias", "head.modulation"},
                                            {{"blocks.0.self_attn.extra.weight", Tensor::randn({2, 2}, 1)}},
                                            "blocks.0.ffn.2.weight", "wan-edited.safetensors");
  WanModel target(tiny(2), Device::cpu(), DType::F32, 3);
  const auto before = target.named_parameters()[0].second.to_vector();
  const std::string msg = error_message([&] { layers::load_checkpoint(target, wan_path); });
  expect_contains(msg, {wan_path, "4 problems", "missing tensor 'blocks.1.self_attn.k.bias'",
                        "missing tensor 'head.modulation' of shape [1, 2, 12]",
                        "unexpected tensor 'blocks.0.self_attn.extra.weight'",
                        "tensor 'blocks.0.ffn.2.weight' has shape [241], expected [12, 20]"});
  EXPECT_EQ(target.named_parameters()[0].second.to_vector(), before) << "a failed load must not modify the model";

  // allow_missing tolerates missing tensors only.
  const std::string only_missing =
      write_edited(dir, source, CheckpointNaming::Wan, {"head.modulation"}, {}, "", "missing-only.safetensors");
  const layers::LoadResult r = layers::load_checkpoint(target, only_missing, {.allow_missing = true});
  ASSERT_EQ(r.missing.size(), 1u);
  EXPECT_EQ(r.missing[0], "head.modulation");
  EXPECT_THROW(layers::load_checkpoint(target, wan_path, {.allow_missing = true}), Error);

  // Diffusers naming: problems are named as in the file, with the Wan name alongside.
  const std::string diff_path = write_edited(dir, source, CheckpointNaming::Diffusers, {"blocks.1.attn2.to_out.0.bias"},
                                             {}, "condition_embedder.time_proj.weight", "diffusers-edited.safetensors");
  expect_contains(error_message([&] { layers::load_checkpoint(target, diff_path); }),
                  {diff_path, "diffusers naming", "2 problems",
                   "missing tensor 'blocks.1.attn2.to_out.0.bias' (wan: 'blocks.1.cross_attn.o.bias')",
                   "tensor 'condition_embedder.time_proj.weight' (wan: 'time_projection.1.weight') has shape"});

  // Integer tensors are not weights.
  layers::NamedTensors ints;
  for (const auto& [name, t] : source.named_parameters())
    ints.emplace_back(name, name == "patch_embedding.bias" ? Tensor::zeros(t.shape(), DType::I32) : t.detach());
  const std::string int_path = dir.file("int.safetensors");
  save_safetensors(int_path, ints);
  expect_contains(error_message([&] { layers::load_checkpoint(target, int_path); }),
                  {int_path, "'patch_embedding.bias' has dtype I32"});
  expect_contains(error_message([&] { layers::load_checkpoint(target, dir.file("absent.safetensors")); }),
                  {"absent.safetensors"});
}

TEST(WanCheckpoint, LoadsOntoCudaParameters) {
  REHYAT_SKIP_WITHOUT_GPU("checkpoint load onto CUDA");
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  WanModel source(tiny(1), Device::cpu(), DType::F32, 1);
  randomize_parameters(source.named_parameters(), 6);
  layers::save_checkpoint(source, path, CheckpointNaming::Wan, DType::BF16);
  WanModel target(tiny(1), Device::cuda(0), DType::F32, 2);
  layers::load_checkpoint(target, path);
  const auto ps = source.named_parameters(), pt = target.named_parameters();
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_TRUE(pt[i].second.device().is_cuda());
    EXPECT_EQ(pt[i].second.to_vector(), ps[i].second.to(DType::BF16).to_vector()) << ps[i].first;
  }
}

}  // namespace
}  // namespace rehyat::testing
