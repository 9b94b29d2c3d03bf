// Data-parallel training over a dist::Communicator (SPEC §6, issue 7): every rank holds
// the whole model, computes the gradient of its share of the global batch, and the ranks
// average their gradients while backward still runs, so each rank then takes the same
// optimizer step (or, with a sharded optimizer, its part of it).
//
// Gradient buckets (PyTorch DDP's scheme). The parameters are packed, in reverse order
// (the order backward produces their gradients in), into flat f32 buckets of about
// `bucket_mb` MiB on the parameters' device. Each parameter's post-accumulate hook
// (autograd/graph.h) copies its finished gradient into its bucket slice and makes .grad
// that slice; when a bucket is complete its all-reduce (average) is launched on the
// communication stream while backward goes on with the earlier layers. Buckets launch in
// index order on every rank (NCCL needs the same collective order everywhere), so a
// bucket that fills early waits for the ones before it. finish_gradients() launches what
// is left (a parameter that got no gradient on this rank contributes zeros and is then
// stepped with the average like the others), and orders the compute stream after every
// all-reduce (no host synchronisation).
//
// Sharded optimizer state (ZeRO-1, `shard_optimizer`), as in PyTorch's
// ZeroRedundancyOptimizer: each parameter belongs to one rank (greedy by size, largest
// first, to the least-loaded rank), which alone keeps its AdamW moments and updates it;
// after the step every parameter is broadcast from its owner (one grouped launch). The
// moments take 2/world of their unsharded memory per rank.
//
// With one rank (or no communicator) nothing is hooked and every call is the plain AdamW.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/modules.h"
#include "train/dist_comm.h"
#include "train/optimizer.h"

namespace rehyat::train {

struct DataParallelOptions {
  double bucket_mb = 25;         // gradient bucket size, MiB
  bool shard_optimizer = false;  // ZeRO-1: each rank keeps the moments of its parameters only
};

class DataParallelTrainer {
 public:
  // params: the model's f32 leaves, identical in name and shape on every rank. comm may be
  // null (one process). The parameters are broadcast from rank 0 so every rank starts
  // from the same weights.
  DataParallelTrainer(dist::Communicator* comm, layers::NamedTensors params, AdamWOptions adam,
                      DataParallelOptions options);
  ~DataParallelTrainer();  // removes the hooks
  DataParallelTrainer(const DataParallelTrainer&) = delete;
  DataParallelTrainer& operator=(const DataParallelTrainer&) = delete;

  int rank() const;
  int world_size() const;

  // Clears the gradients and re-arms the buckets; call before every backward.
  void zero_grad();
  // After backward: every parameter's .grad is the average over the ranks.
  void finish_gradients();
  // The AdamW step (this rank's parameters when sharded, then their broadcast).
  void step(double lr);

  // The full optimizer state (AdamW::state() names) on every rank; a collective when
  // sharded (each moment is broadcast from its owner), so every rank must call it.
  std::map<std::string, Tensor> optimizer_state();
  // Loads a full saved state (from any world size); each rank keeps what it owns.
  void load_optimizer_state(const std::map<std::string, Tensor>& state);

  // The mean of `value` over the ranks (host value; a collective).
  double average(double value);

  int64_t bucket_count() const;
  // The rank that keeps the moments of `name` and updates it when sharded (0 otherwise,
  // when every rank updates every parameter).
  int owner(const std::string& name) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rehyat::train
