// Euler and UniPC on the flow ODE, and the model wrapper with classifier-free guidance.
// The UniPC coefficients are scalars computed in double on the host; the tensor work per
// step is a few scaled additions of the state x and the x0 predictions.
#include "train/sampler.h"

#include <algorithm>
#include <cmath>
#include <deque>

#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/check.h"
#include "layers/recurrent_forward.h"

namespace rehyat::train {

std::vector<double> sampling_sigmas(int64_t steps, double shift) {
  REHYAT_CHECK(steps >= 1, "sampler: steps must be >= 1 (got {})", steps);
  REHYAT_CHECK(std::isfinite(shift) && shift > 0, "sampler: shift must be > 0 (got {})", shift);
  std::vector<double> sigmas(size_t(steps + 1));
  for (int64_t i = 0; i <= steps; ++i) {
    const double s = 1.0 - double(i) / double(steps);
    sigmas[size_t(i)] = shift * s / (1.0 + (shift - 1.0) * s);
  }
  sigmas.front() = 1.0;  // exact ends, whatever the rounding of the shift formula
  sigmas.back() = 0.0;
  return sigmas;
}

namespace {

// Half-log-SNR of the flow path (α = 1 − σ): −∞ at σ = 1, +∞ at σ = 0.
double half_log_snr(double sigma) { return std::log1p(-sigma) - std::log(sigma); }

// One x0 prediction m = x − σ·v kept for the multistep updates.
struct Prediction {
  Tensor x0;  // like x
  double lambda;
};

// UniPC-bh2 with data prediction for σ_0 = 1 > σ_1 > ... > σ_N = 0. Notation as in the
// paper / diffusers: from s (σ_s, sample x) to t (σ_t), h = λ_t − λ_s, B(h) = expm1(−h);
// the order-1 base is x_t' = (σ_t/σ_s)·x − α_t·B(h)·m_s, where
// α_t·B(h) = α_s·σ_t/σ_s − α_t stays finite at σ_s = 1 and at σ_t = 0.
class UniPC {
 public:
  explicit UniPC(std::vector<double> sigmas) : sigmas_(std::move(sigmas)) {}
  int64_t steps() const { return int64_t(sigmas_.size()) - 1; }

  // Step i: x is the sample at σ_i (the predictor's output), v the velocity there.
  // Returns the sample at σ_{i+1}.
  Tensor step(int64_t i, Tensor x, const Tensor& v) {
    const double sigma = sigmas_[size_t(i)];
    const Prediction current{x - v * sigma, half_log_snr(sigma)};
    if (i > 0) x = correct(i, current);
    history_.push_back(current);
    if (history_.size() > 2) history_.pop_front();
    // Warm-up (order 1 at step 0) and lower_order_final (order 1 into σ = 0).
    const int order = int(std::min<int64_t>({2, steps() - i, i + 1}));
    last_sample_ = x;
    last_order_ = order;
    return predict(i, x, order);
  }

 private:
  // α_t·B(h) for the step s -> t.
  static double alpha_b(double sigma_s, double sigma_t) { return (1 - sigma_s) * sigma_t / sigma_s - (1 - sigma_t); }

  // UniP-p from σ_i to σ_{i+1}; history_ = [m_{i−1},] m_i.
  Tensor predict(int64_t i, const Tensor& x, int order) const {
    const double s = sigmas_[size_t(i)], t = sigmas_[size_t(i) + 1];
    const Prediction& m0 = history_.back();
    const double ab = alpha_b(s, t);
    Tensor out = x * (t / s) - m0.x0 * ab;
    const Prediction& m1 = history_.front();
    // D1 = (m_{i−1} − m_i) / r1, weight ρ = 1/2 (bh2's simplified order-2 predictor); at
    // λ_{i−1} = −∞, r1 = −∞ and the term's limit is 0.
    if (order == 2 && std::isfinite(m1.lambda)) {
      const double h = half_log_snr(t) - m0.lambda;
      const double r1 = (m1.lambda - m0.lambda) / h;
      out = out - (m1.x0 - m0.x0) * (ab * 0.5 / r1);
    }
    return out;
  }

  // UniC-p for the step σ_{i−1} -> σ_i that produced x_i, with the new prediction m_t at
  // x_i; history_ = [m_{i−2},] m_{i−1}; p = the order of that predictor step.
  // The predicted x_i itself is not needed: the corrector redoes the step from x_{i−1}.
  Tensor correct(int64_t i, const Prediction& m_t) const {
    const double s = sigmas_[size_t(i) - 1], t = sigmas_[size_t(i)];
    const Prediction& m0 = history_.back();
    const double ab = alpha_b(s, t);
    const Tensor base = last_sample_ * (t / s) - m0.x0 * ab;
    const Tensor d1_t = m_t.x0 - m0.x0;
    if (last_order_ == 1) return base - d1_t * (ab * 0.5);
    // Order 2: ρ solves [1 1; r1 1] ρ = b with b_k from the φ functions of hh = −h (h is
    // finite: σ_{i−1} < 1 and σ_i > 0 whenever the predictor had order 2).
    const Prediction& m1 = history_.front();
    const double h = m_t.lambda - m0.lambda, hh = -h;
    const double h_phi_1 = std::expm1(hh);  // = B(h) for bh2
    const double g1 = h_phi_1 / hh - 1.0;
    const double g2 = g1 / hh - 0.5;
    const double b1 = g1 / h_phi_1, b2 = 2.0 * g2 / h_phi_1;
    // m_{i−2} at σ = 1 (λ = −∞, r1 = −∞): ρ0 -> 0, ρ1 -> b1, and the D1 term vanishes.
    if (!std::isfinite(m1.lambda)) return base - d1_t * (ab * b1);
    const double r1 = (m1.lambda - m0.lambda) / h;
    const double rho0 = (b2 - b1) / (r1 - 1.0), rho1 = b1 - rho0;
    return base - (m1.x0 - m0.x0) * (ab * rho0 / r1) - d1_t * (ab * rho1);
  }

  std::vector<double> sigmas_;
  std::deque<Prediction> history_;  // the last two x0 predictions, oldest first
  Tensor last_sample_;              // x_{i−1}: the sample the last predictor started from
  int last_order_ = 1;
};

}  // namespace

Tensor sample_flow(const VelocityFn& velocity, const Tensor& noise, const SamplerOptions& options,
                   const StepCallback& on_step) {
  REHYAT_CHECK(options.solver == "euler" || options.solver == "unipc",
               "sampler: unknown solver '{}' (euler or unipc)", options.solver);
  REHYAT_CHECK(noise.defined() && is_floating(noise.dtype()), "sampler: noise must be a float tensor");
  const std::vector<double> sigmas = sampling_sigmas(options.steps, options.shift);
  autograd::NoGradGuard no_grad;
  auto velocity_at = [&](const Tensor& x, double sigma) {
    const Tensor v = velocity(x, sigma);
    REHYAT_CHECK(v.shape() == x.shape(), "sampler: velocity {} does not match the state {}", v.str(), x.str());
    return v.to(x.device()).to(x.dtype());
  };
  Tensor x = noise;
  UniPC unipc(sigmas);
  for (int64_t i = 0; i < options.steps; ++i) {
    const double sigma = sigmas[size_t(i)], next = sigmas[size_t(i) + 1];
    const Tensor v = velocity_at(x, sigma);
    x = options.solver == "euler" ? x + v * (next - sigma) : unipc.step(i, x, v);
    if (on_step) on_step(i);
  }
  return x;
}

Tensor sample_video(layers::WanModel& model, const Tensor& noise, const Tensor& context, const Tensor& null_context,
                    const SamplerOptions& options, const StepCallback& on_step) {
  REHYAT_CHECK(noise.defined() && noise.dim() == 5, "sample_video: noise must be [B, C, T, H, W] (got {})",
               noise.defined() ? noise.str() : "undefined");
  const int64_t batch = noise.size(0);
  REHYAT_CHECK(context.defined() && context.dim() == 3 && context.size(0) == batch,
               "sample_video: context must be [{}, L, text_dim] (got {})", batch,
               context.defined() ? context.str() : "undefined");
  REHYAT_CHECK(std::isfinite(options.guidance), "sample_video: guidance must be finite (got {})", options.guidance);
  const bool guided = options.guidance != 1.0;
  if (options.recurrent) layers::recurrent_chunk_frames(model);  // fails before any work

  autograd::NoGradGuard no_grad;
  const Device device = model.device();
  const DType state_dtype = options.compute == DType::F64 ? DType::F64 : DType::F32;
  // The model's context: [B, L, D], or [cond; uncond] = [2B, L, D] for guidance.
  Tensor model_context = context.to(device);
  if (guided) {
    REHYAT_CHECK(null_context.defined() && null_context.dim() == 3 &&
                     (null_context.size(0) == batch || null_context.size(0) == 1) &&
                     null_context.size(1) == context.size(1) && null_context.size(2) == context.size(2),
                 "sample_video: guidance {} needs null_context [{} or 1, {}, {}] (got {})", options.guidance, batch,
                 context.size(1), context.size(2), null_context.defined() ? null_context.str() : "undefined");
    const Tensor uncond =
        null_context.to(device).to(model_context.dtype()).expand({batch, context.size(1), context.size(2)});
    model_context = concat({model_context, uncond}, 0);
  }
  const int64_t model_batch = model_context.size(0);

  auto velocity = [&](const Tensor& x, double sigma) {
    const Tensor latents = guided ? concat({x, x}, 0) : x;
    const Tensor timestep = Tensor::full({model_batch}, 1000.0 * sigma, DType::F32, device);
    const Tensor v = options.recurrent
                         ? layers::recurrent_forward(model, latents, timestep, model_context, options.compute)
                         : model.forward(latents, timestep, model_context, options.compute);
    if (!guided) return v;
    const Tensor v_cond = v.slice(0, 0, batch), v_uncond = v.slice(0, batch, model_batch);
    return v_uncond + (v_cond - v_uncond) * options.guidance;
  };
  return sample_flow(velocity, noise.to(device).to(state_dtype), options, on_step);
}

}  // namespace rehyat::train
