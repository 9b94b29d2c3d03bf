// Building blocks shared by the Wan2.1 DiT layers: the precision policy, named
// parameters, seeded initializers, and the Linear / LayerNorm / FFN modules.
//
// Precision policy (Wan2.1's autocast regions, wan/modules/model.py): parameters live in
// a param dtype (f32 by default); a forward names a compute dtype. Linear layers, GELU
// and attention run in the compute dtype (bf16 on CUDA when asked); the time embedding,
// modulation, LayerNorm, the RMSNorm of q/k, RoPE, the residual stream and its adds run
// in the "high" dtype: f32, or f64 when the compute dtype is f64 (finite-difference
// checks). Parameters are cast to the dtype of each use (a no-op when they already are).
//
// Modules hold their parameters as leaf tensors (requires_grad) and list them with
// collect(prefix, out) under Wan's key names; loaders copy into those same tensors.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace rehyat::layers {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

struct Precision {
  DType compute = DType::F32;  // linear layers, GELU, attention
  DType high = DType::F32;     // norms, modulation, RoPE, residual stream, time embedding
  // high = f64 for f64 compute, else f32.
  static Precision for_compute(DType compute);
};

// x in dtype `dtype` (differentiable cast; x itself when it already is).
inline Tensor cast(const Tensor& x, DType dtype) { return x.dtype() == dtype ? x : x.to(dtype); }

// Where parameters are created: device, dtype, and a base seed. Every parameter draws
// from its own Philox stream keyed by (seed, hash of its full name), so values do not
// depend on construction order.
struct ParamFactory {
  Device device = Device::cpu();
  DType dtype = DType::F32;
  uint64_t seed = 0;

  Tensor zeros(const Shape& shape) const;
  Tensor ones(const Shape& shape) const;
  Tensor normal(const std::string& name, const Shape& shape, double stddev) const;
  Tensor uniform(const std::string& name, const Shape& shape, double bound) const;  // U(-bound, bound)
  // Glorot/Xavier uniform on a [fan_out, fan_in...] weight (torch.nn.init.xavier_uniform_
  // of weight.flatten(1)).
  Tensor xavier_uniform(const std::string& name, const Shape& shape) const;
};

// FNV-1a 64-bit hash (parameter names to RNG streams).
uint64_t name_hash(const std::string& name);

// nn.Linear: y = x W^T + b with W [out, in], run in the dtype of the call.
struct Linear {
  Tensor weight;  // [out, in]
  Tensor bias;    // [out]

  Linear() = default;
  // Wan's init_weights: Xavier-uniform weight, zero bias.
  Linear(const ParamFactory& f, const std::string& name, int64_t in, int64_t out);
  Tensor forward(const Tensor& x, DType dtype) const;  // casts x and the parameters to dtype
  void collect(const std::string& prefix, NamedTensors& out) const;
};

// nn.LayerNorm(dim, eps) in the high dtype, optionally affine (weight [dim], bias [dim]).
struct LayerNorm {
  Tensor weight, bias;  // undefined without affine
  double eps = 1e-6;

  LayerNorm() = default;
  LayerNorm(const ParamFactory& f, int64_t dim, double eps, bool affine);
  Tensor forward(const Tensor& x, DType dtype) const;
  void collect(const std::string& prefix, NamedTensors& out) const;  // nothing without affine
};

// Wan's RMSNorm over the last dim (the full D, across heads) with a learned weight.
struct RMSNorm {
  Tensor weight;  // [dim]
  double eps = 1e-6;

  RMSNorm() = default;
  RMSNorm(const ParamFactory& f, int64_t dim, double eps);
  Tensor forward(const Tensor& x, DType dtype) const;
  void collect(const std::string& prefix, NamedTensors& out) const;
};

// Linear(dim, hidden) -> GELU(tanh) -> Linear(hidden, dim), all in the compute dtype
// (Wan's ffn and text_embedding; keys .0 and .2 as in nn.Sequential).
struct GeluMLP {
  Linear fc1, fc2;

  GeluMLP() = default;
  GeluMLP(const ParamFactory& f, const std::string& name, int64_t in, int64_t hidden, int64_t out);
  Tensor forward(const Tensor& x, DType compute) const;
  void collect(const std::string& prefix, NamedTensors& out) const;  // prefix.0.*, prefix.2.*
};

}  // namespace rehyat::layers
