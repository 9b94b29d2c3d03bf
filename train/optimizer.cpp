// AdamW, the learning-rate schedule, gradient clipping and the finite check (see
// optimizer.h). The CPU update below is the reference of the CUDA kernel in
// optimizer.cu: same float operations, same order, no fused multiply-add.
#include "train/optimizer.h"

#include <cmath>
#include <numbers>
#include <set>

#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/check.h"
#include "core/ops/elementwise.h"

namespace rehyat::train {

AdamWCoefficients adamw_coefficients(const AdamWOptions& o, double lr, int64_t step) {
  REHYAT_CHECK(step >= 1, "AdamW: step {} (steps count from 1)", step);
  const double bias1 = 1.0 - std::pow(o.beta1, double(step));
  const double bias2 = 1.0 - std::pow(o.beta2, double(step));
  return AdamWCoefficients{float(1.0 - lr * o.weight_decay),
                           float(o.beta1),
                           float(1.0 - o.beta1),
                           float(o.beta2),
                           float(1.0 - o.beta2),
                           float(lr / bias1),
                           float(1.0 / std::sqrt(bias2)),
                           float(o.eps)};
}

namespace {

void check_update_operand(const char* role, const Tensor& t, const Tensor& param) {
  REHYAT_CHECK(t.defined() && t.dtype() == DType::F32 && t.shape() == param.shape() && t.device() == param.device(),
               "adamw_update: {} {} does not match parameter {}", role, t.defined() ? t.str() : "undefined",
               param.str());
}

void adamw_update_cpu(float* param, float* m, float* v, const float* grad, int64_t n, const AdamWCoefficients& c) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i];
    const float p = param[i] * c.decay;
    const float mi = c.beta1 * m[i] + c.one_minus_beta1 * g;
    const float vi = c.beta2 * v[i] + c.one_minus_beta2 * (g * g);
    const float denom = std::sqrt(vi) * c.inv_sqrt_bias2 + c.eps;
    m[i] = mi;
    v[i] = vi;
    param[i] = p - c.step_size * (mi / denom);
  }
}

}  // namespace

void adamw_update(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, const AdamWCoefficients& c) {
  REHYAT_CHECK(param.defined() && param.dtype() == DType::F32 && param.is_contiguous(),
               "adamw_update: parameter {} must be a contiguous f32 tensor", param.defined() ? param.str() : "undefined");
  check_update_operand("first moment", m, param);
  check_update_operand("second moment", v, param);
  check_update_operand("gradient", grad, param);
  REHYAT_CHECK(m.is_contiguous() && v.is_contiguous(), "adamw_update: moments must be contiguous");
  const Tensor g = grad.contiguous();
#ifdef REHYAT_CUDA
  if (param.device().is_cuda()) {
    cuda::adamw_update(param, m, v, g, c);
    return;
  }
#else
  REHYAT_CHECK(param.device().is_cpu(), "adamw_update: {} is on {} but rehyat was built without CUDA", param.str(),
               param.device().str());
#endif
  adamw_update_cpu(param.data<float>(), m.data<float>(), v.data<float>(), g.data<float>(), param.numel(), c);
}

AdamW::AdamW(NamedTensors params, AdamWOptions options) : options_(options) {
  REHYAT_CHECK(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1 && options.eps > 0,
               "AdamW: betas must lie in [0, 1) and eps be positive (beta1 {}, beta2 {}, eps {})", options.beta1,
               options.beta2, options.eps);
  std::set<std::string> seen;
  for (auto& [name, param] : params) {
    REHYAT_CHECK(seen.insert(name).second, "AdamW: parameter '{}' is listed twice", name);
    REHYAT_CHECK(param.defined() && param.dtype() == DType::F32 && param.is_contiguous(),
                 "AdamW: parameter '{}' must be a contiguous f32 tensor (fp32 masters), got {}", name,
                 param.defined() ? param.str() : "undefined");
    REHYAT_CHECK(param.requires_grad(), "AdamW: parameter '{}' does not require grad", name);
    slots_.push_back(Slot{name, param, Tensor::zeros(param.shape(), DType::F32, param.device()),
                          Tensor::zeros(param.shape(), DType::F32, param.device())});
  }
}

void AdamW::step(double lr) {
  ++step_;
  const AdamWCoefficients c = adamw_coefficients(options_, lr, step_);
  autograd::NoGradGuard no_grad;
  for (Slot& s : slots_) {
    const Tensor grad = s.param.grad();
    if (!grad.defined()) continue;
    REHYAT_CHECK(grad.dtype() == DType::F32, "AdamW: gradient of '{}' is {} (expected f32)", s.name, grad.str());
    adamw_update(s.param, s.m, s.v, grad, c);
  }
}

void AdamW::zero_grad() {
  for (Slot& s : slots_) s.param.zero_grad();
}

NamedTensors AdamW::state() const {
  NamedTensors out;
  out.reserve(2 * slots_.size() + 1);
  for (const Slot& s : slots_) {
    out.emplace_back("adam.m." + s.name, s.m);
    out.emplace_back("adam.v." + s.name, s.v);
  }
  out.emplace_back("adam.step", Tensor::from_vector({double(step_)}, {1}, DType::I64));
  return out;
}

void AdamW::load_state(const std::map<std::string, Tensor>& state) {
  auto find = [&](const std::string& key, const Shape& shape) -> const Tensor& {
    auto it = state.find(key);
    REHYAT_CHECK(it != state.end(), "AdamW state: missing '{}'", key);
    REHYAT_CHECK(it->second.shape() == shape, "AdamW state: '{}' is {} but should have shape {}", key,
                 it->second.str(), shape_str(shape));
    return it->second;
  };
  std::set<std::string> expected{"adam.step"};
  for (const Slot& s : slots_) {
    expected.insert("adam.m." + s.name);
    expected.insert("adam.v." + s.name);
  }
  for (const auto& entry : state)
    REHYAT_CHECK(expected.count(entry.first), "AdamW state: '{}' is not a state of this optimizer's parameters",
                 entry.first);
  const Tensor& step = find("adam.step", {1});
  REHYAT_CHECK(step.dtype() == DType::I64, "AdamW state: 'adam.step' is {} (expected i64)", step.str());
  const int64_t steps = int64_t(step.item());
  REHYAT_CHECK(steps >= 0, "AdamW state: 'adam.step' is {}", steps);
  autograd::NoGradGuard no_grad;
  for (Slot& s : slots_) {
    s.m.copy_(find("adam.m." + s.name, s.param.shape()));
    s.v.copy_(find("adam.v." + s.name, s.param.shape()));
  }
  step_ = steps;
}

double LrSchedule::at(int64_t step) const {
  if (step < warmup_steps) return base_lr * double(step + 1) / double(warmup_steps);
  const double min_lr = min_lr_ratio * base_lr;
  const int64_t decay_steps = total_steps - warmup_steps;
  if (decay_steps <= 0 || step >= total_steps) return min_lr;
  const double progress = double(step - warmup_steps) / double(decay_steps);
  return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  REHYAT_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be positive, got {}", max_norm);
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> grads;
  double sum_sq = 0.0;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    sum_sq += sum(square(g.to(DType::F64))).item();
    grads.push_back(g);
  }
  const double norm = std::sqrt(sum_sq);
  if (!std::isfinite(norm) || norm <= max_norm) return norm;
  const double scale = max_norm / (norm + 1e-6);
  for (Tensor& g : grads) kernels::unary(kernels::UnaryOp::Affine, g, g, scale, 0.0);
  return norm;
}

void check_finite(const std::string& what, double value, int64_t step) {
  if (std::isnan(value)) REHYAT_FAIL("step {}: {} is NaN", step, what);
  if (std::isinf(value)) REHYAT_FAIL("step {}: {} is {}Inf", step, what, value < 0 ? "-" : "+");
}

}  // namespace rehyat::train
