// AdamW (Loshchilov & Hutter, decoupled weight decay) with PyTorch's update order and
// bias correction, the learning-rate schedule of the training stages, gradient clipping
// and the NaN/Inf check of SPEC §7.
//
// The optimizer updates fp32 master parameters in place from their .grad (autograd
// leaves) and keeps fp32 moments m, v on each parameter's device, created (zero) at
// construction. One step of one parameter is a fused elementwise update: a plain CPU
// loop (optimizer.cpp) and a CUDA kernel (optimizer.cu) doing the same correctly
// rounded float operations in the same order, so both devices give bit-identical
// parameters. The per-step scalars are computed once in double on the host.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/modules.h"

namespace rehyat::train {

using layers::NamedTensors;

struct AdamWOptions {
  double lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

// Scalars of step t (1-based) of the elementwise update, rounded once to float:
//   p <- p * decay
//   m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2
//   p <- p - step_size * m / (sqrt(v) * inv_sqrt_bias2 + eps)
struct AdamWCoefficients {
  float decay;            // 1 - lr * weight_decay
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float step_size;        // lr / (1 - beta1^t)
  float inv_sqrt_bias2;   // 1 / sqrt(1 - beta2^t)
  float eps;
};
AdamWCoefficients adamw_coefficients(const AdamWOptions& options, double lr, int64_t step);

// One update of param, m, v (contiguous f32, same shape and device) from grad (f32, same
// shape, any strides; made contiguous if needed) on their device.
void adamw_update(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, const AdamWCoefficients& c);

class AdamW {
 public:
  // params: contiguous f32 leaves (requires_grad), names unique; `options.lr` is the
  // default for step() callers that have no schedule.
  AdamW(NamedTensors params, AdamWOptions options);

  // Steps every parameter that has a gradient at learning rate `lr`; parameters without
  // a gradient are left alone (their moments too). The step counter t is shared.
  void step(double lr);
  void step() { step(options_.lr); }
  void zero_grad();

  // "adam.m.<name>" [param shape] f32, "adam.v.<name>" likewise, "adam.step" i64 [1]:
  // the live state tensors (not copies), on the parameters' devices.
  NamedTensors state() const;
  // Copies a saved state (any device) into the moments; throws naming the missing or
  // mismatched entry. Entries not of this optimizer are an error too.
  void load_state(const std::map<std::string, Tensor>& state);

  int64_t steps_taken() const { return step_; }
  const AdamWOptions& options() const { return options_; }

 private:
  struct Slot {
    std::string name;
    Tensor param;  // [...] f32, updated in place
    Tensor m;      // [...] f32 first moment
    Tensor v;      // [...] f32 second moment
  };
  std::vector<Slot> slots_;
  AdamWOptions options_;
  int64_t step_ = 0;
};

// Linear warm-up to base_lr over warmup_steps (step 0 at base_lr / warmup_steps, step
// warmup_steps - 1 at base_lr), then cosine decay from base_lr at step warmup_steps to
// min_lr_ratio * base_lr at step total_steps (and after).
struct LrSchedule {
  double base_lr;
  int64_t warmup_steps;
  int64_t total_steps;
  double min_lr_ratio = 0.1;
  double at(int64_t step) const;
};

// Global L2 norm of the gradients of `params` (those without a gradient are skipped),
// accumulated in f64. When it exceeds max_norm every gradient is scaled in place by
// max_norm / (norm + 1e-6) (PyTorch's clip_grad_norm_). Returns the norm before
// clipping; a NaN or Inf norm is returned without touching the gradients so that the
// caller can report it (check_finite).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// Throws rehyat::Error "step N: <what> is NaN" (or "is Inf") unless value is finite.
void check_finite(const std::string& what, double value, int64_t step);

#ifdef REHYAT_CUDA
namespace cuda {
// CUDA adapter of adamw_update (optimizer.cu); same contract, already validated.
void adamw_update(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, const AdamWCoefficients& c);
}  // namespace cuda
#endif

}  // namespace rehyat::train
