// Scalar math of the feature map's fused stages (attention/feature_map_kernels.h), one
// definition for the CPU loops and the CUDA kernels, in the accumulation type A (float for
// bf16 / f16 / f32 storage, double for f64). Conventions are core/ops/elementwise.h's:
// GELU in its tanh form, softplus linear above z = 20.
#pragma once

#include <cmath>

#include "attention/feature_map.h"
#include "core/philox.h"  // REHYAT_HD: __host__ __device__ under nvcc

namespace rehyat::attention::phi_math {

template <typename A>
REHYAT_HD A activation(FeatureActivation act, A u) {
  switch (act) {
    case FeatureActivation::Gelu: {
      const A c = A(0.7978845608028654);  // sqrt(2/pi)
      return A(0.5) * u * (A(1) + std::tanh(c * (u + A(0.044715) * u * u * u)));
    }
    case FeatureActivation::Relu: return u > A(0) ? u : A(0);
    case FeatureActivation::None: break;
  }
  return u;
}

// d act(u) / du.
template <typename A>
REHYAT_HD A activation_grad(FeatureActivation act, A u) {
  switch (act) {
    case FeatureActivation::Gelu: {
      const A c = A(0.7978845608028654);
      const A t = std::tanh(c * (u + A(0.044715) * u * u * u));
      return A(0.5) * (A(1) + t) + A(0.5) * u * (A(1) - t * t) * c * (A(1) + A(3) * A(0.044715) * u * u);
    }
    case FeatureActivation::Relu: return u > A(0) ? A(1) : A(0);
    case FeatureActivation::None: break;
  }
  return A(1);
}

template <typename A>
REHYAT_HD A softplus(A z) {
  return z > A(20) ? z : std::log1p(std::exp(z));
}

// φ = softplus(z)^power for the feature's part (power = part index + 1 ∈ {1, 2, 3}).
template <typename A>
REHYAT_HD A feature(A z, int power) {
  const A s = softplus(z);
  return power == 1 ? s : (power == 2 ? s * s : s * s * s);
}

// dφ/dz = power · softplus(z)^(power−1) · sigmoid(z) (1 above z = 20, like softplus).
template <typename A>
REHYAT_HD A feature_grad(A z, int power) {
  const A s = softplus(z);
  const A ds = z > A(20) ? A(1) : A(1) / (A(1) + std::exp(-z));
  return ds * (power == 1 ? A(1) : (power == 2 ? A(2) * s : A(3) * s * s));
}

}  // namespace rehyat::attention::phi_math
