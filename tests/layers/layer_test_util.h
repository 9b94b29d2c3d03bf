// Shared helpers of the layer tests: random parameters at scales that keep activations
// O(1), tolerance comparisons, f64 finite-difference gradient checks on a sample of
// elements, and the GPU skip.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "autograd/graph.h"
#include "core/device.h"
#include "core/tensor.h"
#include "layers/modules.h"

namespace rehyat::testing {

#define REHYAT_SKIP_WITHOUT_GPU(what)                                              \
  do {                                                                             \
    if (!::rehyat::cuda_available()) GTEST_SKIP() << "no CUDA device: " << (what) << " not run"; \
  } while (0)

// Overwrites every parameter with seeded random values (the same on every device and
// dtype): modulations 0.3·N(0,1), norm weights 1 + 0.2·N, biases 0.1·N, other weights
// N(0,1)/sqrt(fan_in). Never zeros, so the head and every gradient path are live.
inline void randomize_parameters(const layers::NamedTensors& params, uint64_t seed) {
  autograd::NoGradGuard no_grad;
  for (const auto& [name, p] : params) {
    const uint64_t s = seed ^ layers::name_hash(name);
    Tensor values;
    const bool is_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (name.find("modulation") != std::string::npos) {
      values = Tensor::randn(p.shape(), s, 0, DType::F64, Device::cpu(), 0.0, 0.3);
    } else if (name.find(".norm") != std::string::npos && !is_bias) {
      values = Tensor::randn(p.shape(), s, 0, DType::F64, Device::cpu(), 1.0, 0.2);
    } else if (is_bias || p.dim() == 1) {
      values = Tensor::randn(p.shape(), s, 0, DType::F64, Device::cpu(), 0.0, 0.1);
    } else {
      const double fan_in = double(p.numel() / p.size(0));
      values = Tensor::randn(p.shape(), s, 0, DType::F64, Device::cpu(), 0.0, 1.0 / std::sqrt(fan_in));
    }
    Tensor dst = p;
    dst.copy_(values);
  }
}

// max |got - want| / max |want| (both read back as f64).
inline double max_rel_error(const Tensor& got, const Tensor& want) {
  const std::vector<double> g = got.to_vector(), w = want.to_vector();
  EXPECT_EQ(g.size(), w.size());
  double err = 0, scale = 0;
  for (size_t i = 0; i < std::min(g.size(), w.size()); ++i) {
    if (!std::isfinite(g[i])) return INFINITY;
    err = std::max(err, std::abs(g[i] - w[i]));
    scale = std::max(scale, std::abs(w[i]));
  }
  return err / std::max(scale, 1e-30);
}

inline void expect_close(const std::string& what, const Tensor& got, const Tensor& want, double tol) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const double err = max_rel_error(got, want);
  EXPECT_LE(err, tol) << what << ": max error " << err << " of the reference's max magnitude (allowed " << tol << ")";
}

// sum(out * w) as a host double.
inline double weighted_sum(const Tensor& out, const std::vector<double>& w) {
  const std::vector<double> v = out.to_vector();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * w[i];
  return s;
}

// f64 finite-difference check of d(sum(f() * W))/d(tensor) for every tensor in
// `wrt` (leaves, f64, CPU, requires_grad), on up to `samples` random elements of each.
// f reads the tensors' current values; the check perturbs them in place.
inline void gradcheck(const std::string& what, const std::function<Tensor()>& f,
                      const std::vector<std::pair<std::string, Tensor>>& wrt, int samples = 6,
                      double tol = 1e-6, uint64_t seed = 7) {
  Tensor out = f();
  ASSERT_EQ(out.dtype(), DType::F64) << what;
  const std::vector<double> w = Tensor::randn(out.shape(), seed, 0, DType::F64).to_vector();
  for (const auto& [name, t] : wrt) {
    Tensor m = t;
    m.zero_grad();
  }
  out.backward(Tensor::from_vector(w, out.shape(), DType::F64));
  std::mt19937 rng{static_cast<uint32_t>(seed)};
  const double h = 1e-6;
  for (const auto& [name, t] : wrt) {
    const Tensor grad = t.grad();
    ASSERT_TRUE(grad.defined()) << what << ": no gradient reached " << name;
    const std::vector<double> analytic = grad.to_vector();
    double* data = t.data<double>();  // leaves are contiguous f64 on the CPU
    ASSERT_TRUE(t.is_contiguous());
    for (int s = 0; s < std::min<int64_t>(samples, t.numel()); ++s) {
      const size_t e = size_t(std::uniform_int_distribution<int64_t>(0, t.numel() - 1)(rng));
      const double saved = data[e];
      double plus, minus;
      {
        autograd::NoGradGuard no_grad;
        data[e] = saved + h;
        plus = weighted_sum(f(), w);
        data[e] = saved - h;
        minus = weighted_sum(f(), w);
        data[e] = saved;
      }
      const double numeric = (plus - minus) / (2 * h);
      EXPECT_NEAR(analytic[e], numeric, tol * std::max(1.0, std::abs(numeric)) + 1e-7)
          << what << ": d/d " << name << "[" << e << "]";
    }
  }
}

inline Tensor random_input(const Shape& shape, uint64_t seed, DType dtype = DType::F64, Device device = Device::cpu(),
                           bool requires_grad = true) {
  Tensor t = Tensor::randn(shape, seed, 0, DType::F64).to(dtype).to(device);
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

}  // namespace rehyat::testing
