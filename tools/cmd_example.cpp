// `rehyat example OUT`: writes a small, deterministic checkpoint holding every dtype we
// support, so a new user can run `rehyat example` then `rehyat inspect` before having
// any real weights, and so interop tests have a file from our writer.
//
// An existing OUT is replaced only when it is itself an earlier `rehyat example` output
// (so the quick-start can be re-run) or with --force: never a file a user made.
#include <filesystem>

#include <fmt/format.h>

#include "core/safetensors.h"
#include "tools/commands.h"

namespace rehyat::tools {

namespace {

constexpr const char* kGenerator = "rehyat example";

struct ExampleOptions {
  std::string path;
  uint64_t seed = 0;
  bool force = false;
};

bool is_example_output(const std::string& path) {
  try {
    SafetensorsFile file = SafetensorsFile::open(path);
    const auto& metadata = file.metadata();
    auto it = metadata.find("generator");
    return it != metadata.end() && it->second == kGenerator;
  } catch (const Error&) {
    return false;
  }
}

// A toy layer's worth of tensors: one per dtype, plus a scalar. Every random tensor
// draws from its own Philox offset so no two share values.
std::vector<std::pair<std::string, Tensor>> example_tensors(uint64_t seed) {
  uint64_t offset = 0;
  auto random = [&](const Shape& shape, DType dtype) {
    Tensor values = Tensor::randn(shape, seed, offset, DType::F32).to(dtype);
    offset += uint64_t(shape_numel(shape));
    return values;
  };
  return {
      {"embed.weight", random({8, 4}, DType::F32)},
      {"blocks.0.attn.qkv.weight", random({12, 4}, DType::BF16)},
      {"blocks.0.attn.qkv.bias", random({12}, DType::F16)},
      {"blocks.0.norm.weight", random({4}, DType::F64)},
      {"head.scale", random({}, DType::F32)},
      {"rope.positions", Tensor::arange(6, DType::I64)},
      {"tokens.ids", Tensor::from_vector({101, 7592, 2088, 102, 0, 0}, {2, 3}, DType::I32)},
  };
}

void write_example(const ExampleOptions& options) {
  if (std::filesystem::exists(options.path) && !options.force && !is_example_output(options.path))
    REHYAT_FAIL("{} already exists and is not an earlier `rehyat example` output; pass --force to replace it",
                options.path);
  auto tensors = example_tensors(options.seed);
  save_safetensors(options.path, tensors,
                   {{"generator", kGenerator}, {"rehyat_version", REHYAT_VERSION}, {"seed", std::to_string(options.seed)}});
  fmt::print("wrote {}: {} tensors ({} bytes)\n", options.path, tensors.size(),
             std::filesystem::file_size(options.path));
}

}  // namespace

void add_example_command(CLI::App& app) {
  auto options = std::make_shared<ExampleOptions>();
  CLI::App* command = app.add_subcommand("example", "Write a small example safetensors checkpoint (every dtype)");
  command->add_option("OUT", options->path, "output .safetensors file")->required();
  command->add_option("--seed", options->seed, "random seed")->capture_default_str();
  command->add_flag("--force", options->force, "replace OUT even if it is not an earlier example output");
  command->callback([options] { write_example(*options); });
}

}  // namespace rehyat::tools
