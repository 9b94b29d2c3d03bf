// Sampling videos from a flow-matching DiT (SPEC §4 "Sampling").
//
// Convention (Wan): x_σ = (1−σ)·x0 + σ·ε, σ = 1 is pure noise, the model predicts
// v = ε − x0 at timestep 1000·σ, so the probability-flow ODE is dx/dσ = v, integrated from
// σ = 1 down to σ = 0 over Wan's shifted schedule (sampling_sigmas).
//
// Solvers:
//   euler  x ← x + (σ_next − σ)·v.
//   unipc  UniPC (Zhao et al. 2023) as Wan2.1's FlowUniPCMultistepScheduler: order 2, B(h)
//          = expm1(h) ("bh2"), data prediction x0 = x − σ·v, one model call per step, the
//          UniC corrector applied to every sample the model has seen, first and last steps
//          of order 1 (warm-up, lower_order_final). Its order-1 predictor is exactly the
//          Euler step. The half-log-SNR λ = log((1−σ)/σ) is −∞ at σ = 1 (Wan starts just
//          below 1); the terms that involve a history point there take their limit as
//          σ_0 -> 1 (the D1 term vanishes), so the result is Wan's/diffusers' scheduler
//          in that limit. The coefficients are written so that σ = 1 and σ = 0 stay finite.
//
// The solvers are written against a velocity function (sample_flow) so they can be tested
// without a model; sample_video wraps a WanModel in one: classifier-free guidance
// v = v_u + g·(v_c − v_u) from ONE forward of the batch [cond; uncond] when g ≠ 1 (only the
// conditional forward when g = 1), in parallel mode (WanModel::forward) or recurrent mode
// (layers::recurrent_forward, causal ReHyAt models), without an autograd graph.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/wan_model.h"

namespace rehyat::train {

struct SamplerOptions {
  std::string solver = "euler";  // "euler" or "unipc"
  int64_t steps = 20;            // model evaluations
  double shift = 5.0;            // schedule shift (> 0; 1 = unshifted)
  double guidance = 1.0;         // CFG scale g (1: conditional only)
  bool recurrent = false;        // layers::recurrent_forward instead of WanModel::forward
  DType compute = DType::F32;    // the model's compute dtype
};

// steps + 1 values from 1 down to 0: s = linspace(1, 0, steps + 1), σ = shift·s / (1 + (shift−1)·s).
std::vector<double> sampling_sigmas(int64_t steps, double shift);

// The velocity v(x, σ) of the flow ODE: x [B, ...] -> v of x's shape.
using VelocityFn = std::function<Tensor(const Tensor& x, double sigma)>;
// Called after each solver step with its 0-based index (0 .. steps−1).
using StepCallback = std::function<void(int64_t step)>;

// Integrates dx/dσ = velocity(x, σ) from x = noise at σ = 1 to σ = 0 with options.solver,
// options.steps and options.shift (guidance, recurrent and compute are not used here).
// The state x stays in noise's device and float dtype (velocities are converted to it).
// Returns x at σ = 0.
Tensor sample_flow(const VelocityFn& velocity, const Tensor& noise, const SamplerOptions& options,
                   const StepCallback& on_step = {});

// noise [B, C, T, H, W] (C = the model's in_dim), context [B, L, text_dim], null_context
// [B or 1, L, text_dim] (the unconditional context; may be undefined when guidance == 1,
// it is then never used). Returns x0 [B, C, T, H, W] on the model's device, f32 (f64 when
// options.compute is f64: the state is kept in the model's high dtype).
Tensor sample_video(layers::WanModel& model, const Tensor& noise, const Tensor& context, const Tensor& null_context,
                    const SamplerOptions& options, const StepCallback& on_step = {});

}  // namespace rehyat::train
