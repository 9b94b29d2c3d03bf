// A training checkpoint: everything a stage needs to continue a run exactly where it
// stopped (SPEC §7: resume after a kill gives the same loss curve for the same seed).
//
// File format: one safetensors file (atomic: temp, fsync, rename; see core/safetensors.h)
// holding the model parameters under their own names (so the file also loads as plain
// weights) and the optimizer state under its names ("adam.*"), plus __metadata__:
//   format            "rehyat-train-state-1"
//   step, seed        decimal integers
//   data_epoch, data_index  the loader position, decimal integers
//   extra             JSON text (config etc.)
//   model_tensors     JSON array: the model's names in their NamedTensors order
//   checksum_algorithm "fnv1a-64"
//   checksums         JSON object: tensor name -> 16 hex digits of FNV-1a 64 over its bytes
// load_train_state verifies every checksum, so a flipped byte is caught and named.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "core/tensor.h"
#include "layers/modules.h"

namespace rehyat::train {

// Where the data loader resumes: the next sample within the epoch's order. Mirrors
// data::LoaderPosition (data/shapes_dataset.h), kept here so train/ does not depend on it.
struct DataPosition {
  int64_t epoch = 0;
  int64_t index = 0;
};

struct TrainState {
  int64_t step = 0;                            // steps done
  layers::NamedTensors model;                  // parameters (fp32), any device
  std::map<std::string, Tensor> optimizer;     // AdamW::state()
  DataPosition data;                           // where the loader resumes
  uint64_t seed = 0;
  nlohmann::json extra;                        // config etc.
};

// Atomic; tensors may be on any device. Throws naming the path (and tensor).
void save_train_state(const std::string& path, const TrainState& state);
// Verifies format, metadata and checksums; errors name the file (and key or tensor).
// Tensors come back on the CPU, viewing the mapped file.
TrainState load_train_state(const std::string& path);

}  // namespace rehyat::train
