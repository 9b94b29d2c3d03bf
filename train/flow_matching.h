// Flow matching in Wan's convention (SPEC §4): x_sigma = (1 - sigma) x0 + sigma eps with
// sigma = 1 pure noise, the model predicts the velocity v = eps - x0 at timestep
// t = 1000 sigma, and training draws sigma = shift s / (1 + (shift - 1) s) with s uniform
// in (0, 1].
//
// A batch's randomness is a pure function of (seed, step): both draws use the Philox key
// derived from (seed, step) (philox::block(seed, step), words 0 and 1), s at counters
// [0, B) and eps at counters from 2^40 on, so a resumed run draws the same sigmas and
// noise, and CPU and CUDA give the same values. Each formula is a chain of single
// rounded elementwise ops, identical on both devices.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace rehyat::train {

struct FlowMatchingOptions {
  double shift = 5.0;
};

// shift s / (1 + (shift - 1) s), elementwise; s any floating tensor (not differentiated).
Tensor shifted_sigma(const Tensor& s, double shift);

struct FlowMatchingBatch {
  Tensor noisy;     // [B, C, T, H, W] x0's dtype and device: (1 - sigma) x0 + sigma eps
  Tensor target;    // [B, C, T, H, W] likewise: eps - x0
  Tensor timestep;  // [B] f32: 1000 sigma
  Tensor sigma;     // [B] f32 in (0, 1]
};

// Which samples of the step's global batch x0 holds: sample j is global sample
// first + j * stride. A data-parallel rank r of `world` holds first = r, stride = world
// (data::DataLoader's sharding), so the ranks together draw exactly the one-process batch.
struct SampleSlice {
  int64_t first = 0;
  int64_t stride = 1;
};

// x0 [B, ...] floating, any device. Global sample i draws s at counter i and eps at
// counters 2^40 + i * (elements per sample) of the step's key.
FlowMatchingBatch make_flow_matching_batch(const Tensor& x0, uint64_t seed, int64_t step,
                                           const FlowMatchingOptions& options, SampleSlice slice = {});

// mean((predicted - target)^2) as a differentiable 0-d tensor, f32 (f64 when predicted is
// f64); bf16/f16 predictions are cast to f32 first.
Tensor flow_matching_loss(const Tensor& predicted, const Tensor& target);

}  // namespace rehyat::train
