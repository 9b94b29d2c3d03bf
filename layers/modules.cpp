// Precision policy, seeded parameter factory and the basic modules.
#include "layers/modules.h"

#include <cmath>

#include "autograd/ops.h"

namespace rehyat::layers {

Precision Precision::for_compute(DType compute) {
  REHYAT_CHECK(is_floating(compute), "compute dtype must be floating, got {}", dtype_name(compute));
  return Precision{compute, compute == DType::F64 ? DType::F64 : DType::F32};
}

uint64_t name_hash(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

namespace {
Tensor leaf(Tensor t) {
  t.set_requires_grad(true);
  return t;
}
uint64_t stream_seed(uint64_t seed, const std::string& name) { return seed ^ name_hash(name); }
}  // namespace

Tensor ParamFactory::zeros(const Shape& shape) const { return leaf(Tensor::zeros(shape, dtype, device)); }
Tensor ParamFactory::ones(const Shape& shape) const { return leaf(Tensor::full(shape, 1.0, dtype, device)); }

Tensor ParamFactory::normal(const std::string& name, const Shape& shape, double stddev) const {
  return leaf(Tensor::randn(shape, stream_seed(seed, name), 0, dtype, device, 0.0, stddev));
}

Tensor ParamFactory::uniform(const std::string& name, const Shape& shape, double bound) const {
  return leaf(Tensor::rand(shape, stream_seed(seed, name), 0, dtype, device, -bound, bound));
}

Tensor ParamFactory::xavier_uniform(const std::string& name, const Shape& shape) const {
  REHYAT_CHECK(shape.size() >= 2, "xavier_uniform: {} needs a [out, in...] shape, got {}", name, shape_str(shape));
  const int64_t fan_out = shape[0], fan_in = shape_numel(shape) / shape[0];
  return uniform(name, shape, std::sqrt(6.0 / double(fan_in + fan_out)));
}

// --- Linear ------------------------------------------------------------------------------

Linear::Linear(const ParamFactory& f, const std::string& name, int64_t in, int64_t out)
    : weight(f.xavier_uniform(name + ".weight", {out, in})), bias(f.zeros({out})) {}

Tensor Linear::forward(const Tensor& x, DType dtype) const {
  return linear(cast(x, dtype), cast(weight, dtype), cast(bias, dtype));
}

void Linear::collect(const std::string& prefix, NamedTensors& out) const {
  out.emplace_back(prefix + ".weight", weight);
  out.emplace_back(prefix + ".bias", bias);
}

// --- LayerNorm / RMSNorm ---------------------------------------------------------------

LayerNorm::LayerNorm(const ParamFactory& f, int64_t dim, double eps_, bool affine) : eps(eps_) {
  if (affine) {
    weight = f.ones({dim});
    bias = f.zeros({dim});
  }
}

Tensor LayerNorm::forward(const Tensor& x, DType dtype) const {
  Tensor w = weight.defined() ? cast(weight, dtype) : Tensor();
  Tensor b = bias.defined() ? cast(bias, dtype) : Tensor();
  return layer_norm(cast(x, dtype), w, b, eps);
}

void LayerNorm::collect(const std::string& prefix, NamedTensors& out) const {
  if (!weight.defined()) return;
  out.emplace_back(prefix + ".weight", weight);
  out.emplace_back(prefix + ".bias", bias);
}

RMSNorm::RMSNorm(const ParamFactory& f, int64_t dim, double eps_) : weight(f.ones({dim})), eps(eps_) {}

Tensor RMSNorm::forward(const Tensor& x, DType dtype) const {
  return rms_norm(cast(x, dtype), cast(weight, dtype), eps);
}

void RMSNorm::collect(const std::string& prefix, NamedTensors& out) const {
  out.emplace_back(prefix + ".weight", weight);
}

// --- GELU MLP ----------------------------------------------------------------------------

GeluMLP::GeluMLP(const ParamFactory& f, const std::string& name, int64_t in, int64_t hidden, int64_t out)
    : fc1(f, name + ".0", in, hidden), fc2(f, name + ".2", hidden, out) {}

Tensor GeluMLP::forward(const Tensor& x, DType compute) const {
  return fc2.forward(gelu(fc1.forward(x, compute)), compute);
}

void GeluMLP::collect(const std::string& prefix, NamedTensors& out) const {
  fc1.collect(prefix + ".0", out);
  fc2.collect(prefix + ".2", out);
}

}  // namespace rehyat::layers
