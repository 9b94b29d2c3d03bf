// Checkpoint I/O in Wan's and diffusers' namings, with complete mismatch reports.
#include "layers/wan_checkpoint.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "autograd/graph.h"
#include "layers/wan_model.h"

namespace rehyat::layers {

const char* naming_name(CheckpointNaming naming) { return naming == CheckpointNaming::Wan ? "wan" : "diffusers"; }

CheckpointNaming parse_naming(const std::string& name) {
  if (name == "wan") return CheckpointNaming::Wan;
  if (name == "diffusers") return CheckpointNaming::Diffusers;
  REHYAT_FAIL("unknown checkpoint naming '{}' (expected 'wan' or 'diffusers')", name);
}

namespace {

struct Rule {
  const char* wan;
  const char* diffusers;
};

// Prefix rules (diffusers' TRANSFORMER_KEYS_RENAME_DICT) for keys outside the blocks.
constexpr Rule kTopRules[] = {
    {"patch_embedding.", "patch_embedding."},
    {"text_embedding.0.", "condition_embedder.text_embedder.linear_1."},
    {"text_embedding.2.", "condition_embedder.text_embedder.linear_2."},
    {"time_embedding.0.", "condition_embedder.time_embedder.linear_1."},
    {"time_embedding.2.", "condition_embedder.time_embedder.linear_2."},
    {"time_projection.1.", "condition_embedder.time_proj."},
    {"head.modulation", "scale_shift_table"},
    {"head.head.", "proj_out."},
};

// Prefix rules for the part after "blocks.N.". Wan's norm3 (the affine cross-attention
// norm) is diffusers' norm2. The bare self_attn./cross_attn. rules carry keys without a
// diffusers counterpart (ReHyAt's phi_q.*, phi_k.*) over unchanged.
constexpr Rule kBlockRules[] = {
    {"modulation", "scale_shift_table"},
    {"self_attn.q.", "attn1.to_q."},
    {"self_attn.k.", "attn1.to_k."},
    {"self_attn.v.", "attn1.to_v."},
    {"self_attn.o.", "attn1.to_out.0."},
    {"self_attn.norm_q.", "attn1.norm_q."},
    {"self_attn.norm_k.", "attn1.norm_k."},
    {"self_attn.", "attn1."},
    {"cross_attn.q.", "attn2.to_q."},
    {"cross_attn.k.", "attn2.to_k."},
    {"cross_attn.v.", "attn2.to_v."},
    {"cross_attn.o.", "attn2.to_out.0."},
    {"cross_attn.norm_q.", "attn2.norm_q."},
    {"cross_attn.norm_k.", "attn2.norm_k."},
    {"cross_attn.", "attn2."},
    {"norm3.", "norm2."},
    {"ffn.0.", "ffn.net.0.proj."},
    {"ffn.2.", "ffn.net.2."},
};

// "blocks.N." prefix length of `name` (0 when it is not a block key).
size_t block_prefix_length(const std::string& name) {
  const std::string head = "blocks.";
  if (name.rfind(head, 0) != 0) return 0;
  size_t i = head.size();
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) ++i;
  if (i == head.size() || i >= name.size() || name[i] != '.') return 0;
  return i + 1;
}

// Applies the longest matching rule (from -> to); throws when none matches.
template <size_t N>
std::string map_name(const std::string& name, const Rule (&rules)[N], bool to_diffusers, const std::string& full) {
  const Rule* best = nullptr;
  size_t best_len = 0;
  for (const Rule& r : rules) {
    const std::string from = to_diffusers ? r.wan : r.diffusers;
    if (name.rfind(from, 0) == 0 && from.size() > best_len) {
      best = &r;
      best_len = from.size();
    }
  }
  REHYAT_CHECK(best != nullptr, "tensor '{}' has no counterpart in the {} naming", full,
               to_diffusers ? "diffusers" : "wan");
  return std::string(to_diffusers ? best->diffusers : best->wan) + name.substr(best_len);
}

std::string convert(const std::string& name, bool to_diffusers) {
  const size_t block = block_prefix_length(name);
  if (block > 0) return name.substr(0, block) + map_name(name.substr(block), kBlockRules, to_diffusers, name);
  return map_name(name, kTopRules, to_diffusers, name);
}

}  // namespace

std::string wan_to_diffusers_name(const std::string& wan_name) { return convert(wan_name, true); }
std::string diffusers_to_wan_name(const std::string& diffusers_name) { return convert(diffusers_name, false); }

std::string name_in(CheckpointNaming naming, const std::string& wan_name) {
  return naming == CheckpointNaming::Wan ? wan_name : wan_to_diffusers_name(wan_name);
}

CheckpointNaming detect_naming(const std::vector<std::string>& keys) {
  for (const std::string& k : keys) {
    const size_t block = block_prefix_length(k);
    const std::string rest = block > 0 ? k.substr(block) : k;
    if (block == 0 && (rest.rfind("condition_embedder.", 0) == 0 || rest.rfind("proj_out.", 0) == 0 ||
                       rest == "scale_shift_table"))
      return CheckpointNaming::Diffusers;
    if (block > 0 && (rest.rfind("attn1.", 0) == 0 || rest.rfind("attn2.", 0) == 0 ||
                      rest.rfind("ffn.net.", 0) == 0 || rest == "scale_shift_table"))
      return CheckpointNaming::Diffusers;
  }
  return CheckpointNaming::Wan;
}

LoadResult load_parameters(const NamedTensors& params, const std::vector<SafetensorsFile>& files,
                           const LoadOptions& options) {
  REHYAT_CHECK(!files.empty(), "load_parameters: no checkpoint files given");
  std::vector<std::string> paths, all_names;
  for (const SafetensorsFile& f : files) {
    paths.push_back(f.path());
    all_names.insert(all_names.end(), f.names().begin(), f.names().end());
  }
  const std::string where = fmt::format("{}", fmt::join(paths, ", "));
  LoadResult result;
  result.naming = detect_naming(all_names);
  const CheckpointNaming naming = result.naming;

  std::vector<std::string> problems;
  std::map<std::string, const SafetensorsFile*> owner;  // file-side name -> shard holding it
  for (const SafetensorsFile& f : files)
    for (const std::string& name : f.names())
      if (!owner.emplace(name, &f).second)
        problems.push_back(fmt::format("tensor '{}' appears in both {} and {}", name, owner[name]->path(), f.path()));

  std::set<std::string> expected;                               // file-side names
  std::vector<std::pair<Tensor, const SafetensorsFile*>> plan;  // parameter, shard
  std::vector<std::string> plan_names;
  for (const auto& [wan_name, param] : params) {
    const std::string file_name = name_in(naming, wan_name);
    const std::string shown = file_name == wan_name ? fmt::format("'{}'", file_name)
                                                    : fmt::format("'{}' (wan: '{}')", file_name, wan_name);
    expected.insert(file_name);
    auto it = owner.find(file_name);
    if (it == owner.end()) {
      if (options.allow_missing) {
        result.missing.push_back(wan_name);
      } else {
        problems.push_back(fmt::format("missing tensor {} of shape {}", shown, shape_str(param.shape())));
      }
      continue;
    }
    const SafetensorsTensorInfo& info = it->second->info(file_name);
    if (info.shape != param.shape()) {
      problems.push_back(fmt::format("tensor {} has shape {}, expected {}", shown, shape_str(info.shape),
                                     shape_str(param.shape())));
      continue;
    }
    if (!is_floating(info.dtype)) {
      problems.push_back(fmt::format("tensor {} has dtype {}, expected a float type (F32, BF16, F16, F64)", shown,
                                     safetensors_dtype_name(info.dtype)));
      continue;
    }
    plan.emplace_back(param, it->second);
    plan_names.push_back(file_name);
    result.loaded.push_back(wan_name);
  }
  for (const auto& [name, file] : owner)
    if (!expected.count(name))
      problems.push_back(fmt::format("unexpected tensor '{}' of shape {} (the model has no such parameter)", name,
                                     shape_str(file->info(name).shape)));
  if (!problems.empty())
    REHYAT_FAIL("{}: checkpoint ({} naming) does not match the model, {} problem{}:\n  {}", where,
                naming_name(naming), problems.size(), problems.size() == 1 ? "" : "s", fmt::join(problems, "\n  "));

  autograd::NoGradGuard no_grad;
  for (size_t i = 0; i < plan.size(); ++i) plan[i].first.copy_(plan[i].second->get(plan_names[i]));
  return result;
}

LoadResult load_parameters(const NamedTensors& params, const SafetensorsFile& file, const LoadOptions& options) {
  return load_parameters(params, std::vector<SafetensorsFile>{file}, options);
}

std::vector<std::string> checkpoint_files(const std::string& path) {
  namespace fs = std::filesystem;
  REHYAT_CHECK(fs::exists(path), "checkpoint '{}' does not exist", path);
  std::vector<std::string> files;
  if (fs::is_directory(path)) {
    for (const auto& entry : fs::directory_iterator(path)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("diffusion_pytorch_model", 0) == 0 && entry.path().extension() == ".safetensors")
        files.push_back(entry.path().string());
    }
    std::sort(files.begin(), files.end());
    REHYAT_CHECK(!files.empty(), "{}: no diffusion_pytorch_model*.safetensors in this directory", path);
    return files;
  }
  const std::string suffix = ".index.json";
  if (path.size() > suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0) {
    std::ifstream in(path);
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      REHYAT_FAIL("{}: not a valid safetensors index (JSON): {}", path, e.what());
    }
    REHYAT_CHECK(index.contains("weight_map") && index["weight_map"].is_object(), "{}: index has no weight_map object",
                 path);
    std::set<std::string> shards;
    for (const auto& [name, shard] : index["weight_map"].items()) {
      REHYAT_CHECK(shard.is_string(), "{}: weight_map entry '{}' is not a file name", path, name);
      shards.insert(shard.get<std::string>());
    }
    const fs::path dir = fs::path(path).parent_path();
    for (const std::string& shard : shards) files.push_back((dir / shard).string());
    return files;
  }
  return {path};
}

LoadResult load_checkpoint(WanModel& model, const std::string& path, const LoadOptions& options) {
  std::vector<SafetensorsFile> files;
  for (const std::string& file : checkpoint_files(path)) files.push_back(SafetensorsFile::open(file));
  return load_parameters(model.named_parameters(), files, options);
}

void save_parameters(const NamedTensors& params, const std::string& path, CheckpointNaming naming, DType dtype,
                     const std::map<std::string, std::string>& metadata) {
  REHYAT_CHECK(is_floating(dtype), "{}: checkpoint dtype must be floating, got {}", path, dtype_name(dtype));
  autograd::NoGradGuard no_grad;
  NamedTensors out;
  out.reserve(params.size());
  for (const auto& [wan_name, param] : params) out.emplace_back(name_in(naming, wan_name), param.detach().to(dtype));
  std::map<std::string, std::string> meta = metadata;
  meta.emplace("format", "pt");
  meta.emplace("rehyat.naming", naming_name(naming));
  save_safetensors(path, out, meta);
}

void save_checkpoint(const WanModel& model, const std::string& path, CheckpointNaming naming, DType dtype,
                     const std::map<std::string, std::string>& metadata) {
  save_parameters(model.named_parameters(), path, naming, dtype, metadata);
}

}  // namespace rehyat::layers
