// Training checkpoints (format in train_state.h).
#include "train/train_state.h"

#include <set>
#include <type_traits>

#include "core/check.h"
#include "core/safetensors.h"

namespace rehyat::train {
namespace {

constexpr const char* kFormat = "rehyat-train-state-1";
constexpr const char* kChecksumAlgorithm = "fnv1a-64";

uint64_t fnv1a64(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t hash = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < bytes; ++i) {
    hash ^= p[i];
    hash *= 0x100000001b3ull;
  }
  return hash;
}

std::string checksum_hex(const Tensor& host) { return fmt::format("{:016x}", fnv1a64(host.data_ptr(), host.nbytes())); }

const std::string& metadata_value(const std::string& path, const std::map<std::string, std::string>& metadata,
                                  const std::string& key) {
  auto it = metadata.find(key);
  REHYAT_CHECK(it != metadata.end(), "{}: not a training state: __metadata__ has no '{}'", path, key);
  return it->second;
}

template <typename Int>
Int metadata_integer(const std::string& path, const std::map<std::string, std::string>& metadata,
                     const std::string& key) {
  const std::string& text = metadata_value(path, metadata, key);
  size_t used = 0;
  Int value{};
  try {
    if constexpr (std::is_signed_v<Int>)
      value = Int(std::stoll(text, &used));
    else
      value = Int(std::stoull(text, &used));
  } catch (const std::exception&) {
    used = 0;
  }
  REHYAT_CHECK(used == text.size() && used > 0, "{}: __metadata__ '{}' must be an integer, got '{}'", path, key,
               text);
  return value;
}

nlohmann::json metadata_json(const std::string& path, const std::map<std::string, std::string>& metadata,
                             const std::string& key) {
  try {
    return nlohmann::json::parse(metadata_value(path, metadata, key));
  } catch (const nlohmann::json::exception& e) {
    REHYAT_FAIL("{}: __metadata__ '{}' is not valid JSON: {}", path, key, e.what());
  }
}

}  // namespace

void save_train_state(const std::string& path, const TrainState& state) {
  std::vector<std::pair<std::string, Tensor>> tensors;  // on the CPU, contiguous
  nlohmann::json model_names = nlohmann::json::array(), checksums = nlohmann::json::object();
  std::set<std::string> model_set;
  auto add = [&](const std::string& name, const Tensor& t) {
    REHYAT_CHECK(t.defined(), "cannot save training state '{}': tensor '{}' is undefined", path, name);
    Tensor host = t.detach().to(Device::cpu()).contiguous();
    checksums[name] = checksum_hex(host);
    tensors.emplace_back(name, std::move(host));
  };
  for (const auto& [name, t] : state.model) {
    model_set.insert(name);
    model_names.push_back(name);
    add(name, t);
  }
  for (const auto& [name, t] : state.optimizer) {
    REHYAT_CHECK(!model_set.count(name), "cannot save training state '{}': '{}' names both a parameter and an optimizer state",
                 path, name);
    add(name, t);
  }
  const std::map<std::string, std::string> metadata{
      {"format", kFormat},
      {"step", std::to_string(state.step)},
      {"seed", std::to_string(state.seed)},
      {"data_epoch", std::to_string(state.data.epoch)},
      {"data_index", std::to_string(state.data.index)},
      {"extra", state.extra.dump()},
      {"model_tensors", model_names.dump()},
      {"checksum_algorithm", kChecksumAlgorithm},
      {"checksums", checksums.dump()},
  };
  save_safetensors(path, tensors, metadata);
}

TrainState load_train_state(const std::string& path) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  const auto& metadata = file.metadata();
  const std::string& format = metadata_value(path, metadata, "format");
  REHYAT_CHECK(format == kFormat, "{}: training state format '{}' is not '{}'", path, format, kFormat);
  const std::string& algorithm = metadata_value(path, metadata, "checksum_algorithm");
  REHYAT_CHECK(algorithm == kChecksumAlgorithm, "{}: checksum algorithm '{}' is not '{}'", path, algorithm,
               kChecksumAlgorithm);

  TrainState state;
  state.step = metadata_integer<int64_t>(path, metadata, "step");
  state.seed = metadata_integer<uint64_t>(path, metadata, "seed");
  state.data.epoch = metadata_integer<int64_t>(path, metadata, "data_epoch");
  state.data.index = metadata_integer<int64_t>(path, metadata, "data_index");
  state.extra = metadata_json(path, metadata, "extra");

  const nlohmann::json checksums = metadata_json(path, metadata, "checksums");
  REHYAT_CHECK(checksums.is_object() && checksums.size() == file.names().size(),
               "{}: __metadata__ 'checksums' must hold one entry per tensor ({} tensors)", path, file.names().size());
  std::map<std::string, Tensor> tensors;
  for (const std::string& name : file.names()) {
    REHYAT_CHECK(checksums.contains(name) && checksums[name].is_string(), "{}: tensor '{}' has no checksum", path,
                 name);
    Tensor t = file.get(name);
    const std::string stored = checksums[name].get<std::string>(), computed = checksum_hex(t);
    REHYAT_CHECK(stored == computed, "{}: tensor '{}' is corrupt: checksum {} does not match the stored {}", path,
                 name, computed, stored);
    tensors.emplace(name, std::move(t));
  }

  const nlohmann::json model_names = metadata_json(path, metadata, "model_tensors");
  REHYAT_CHECK(model_names.is_array(), "{}: __metadata__ 'model_tensors' must be a JSON array", path);
  for (const nlohmann::json& entry : model_names) {
    REHYAT_CHECK(entry.is_string(), "{}: __metadata__ 'model_tensors' holds a non-string {}", path, entry.dump());
    const std::string name = entry.get<std::string>();
    auto it = tensors.find(name);
    REHYAT_CHECK(it != tensors.end(), "{}: model tensor '{}' is listed but not stored", path, name);
    state.model.emplace_back(name, it->second);
    tensors.erase(it);
  }
  state.optimizer = std::move(tensors);
  return state;
}

}  // namespace rehyat::train
