// The ReHyAt feature map: the fused autograd op (two batched products around the fused maps
// of attention/feature_map_kernels.h), its composite reference, and its initialization.
#include "attention/feature_map.h"

#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "attention/feature_map_kernels.h"
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/check.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"

namespace rehyat::attention {

const char* feature_activation_name(FeatureActivation activation) {
  switch (activation) {
    case FeatureActivation::Gelu: return "gelu";
    case FeatureActivation::Relu: return "relu";
    case FeatureActivation::None: return "none";
  }
  return "?";
}

FeatureActivation parse_feature_activation(const std::string& name) {
  if (name == "gelu") return FeatureActivation::Gelu;
  if (name == "relu") return FeatureActivation::Relu;
  if (name == "none") return FeatureActivation::None;
  REHYAT_FAIL("unknown feature-map activation '{}' (expected gelu, relu or none)", name);
}

int64_t FeatureMapOptions::parameter_count() const {
  const int64_t d = head_dim, h = hidden(), dp = features();
  return heads * (h * d + h + dp * h + dp);
}

void FeatureMapOptions::validate(const std::string& where) const {
  REHYAT_CHECK(heads > 0 && head_dim > 0, "{}: heads ({}) and head_dim ({}) must be positive", where, heads, head_dim);
  REHYAT_CHECK(hidden_dim >= 0 && feature_dim >= 0, "{}: hidden_dim ({}) and feature_dim ({}) must be >= 0 (0: 2 * head_dim)",
               where, hidden_dim, feature_dim);
  REHYAT_CHECK(degree >= 1 && degree <= 3, "{}: degree must be 1, 2 or 3, got {}", where, degree);
  REHYAT_CHECK(features() % degree == 0, "{}: feature_dim {} is not divisible by degree {}", where, features(), degree);
}

namespace {

// Leaf parameter with the factory's dtype and device from host values (f64, row-major).
Tensor parameter_from(const layers::ParamFactory& f, const std::vector<double>& values, const Shape& shape) {
  Tensor t = Tensor::from_vector(values, shape, f.dtype, f.device);
  t.set_requires_grad(true);
  return t;
}

// max(x, 0) from primitives (no relu op): the maximum over a stacked zero; its gradient
// goes to x where x > 0.
Tensor relu(const Tensor& x) {
  const Tensor zero = Tensor::zeros(x.shape(), x.dtype(), x.device());
  return max(concat({x.unsqueeze(-1), zero.unsqueeze(-1)}, -1), -1);
}

}  // namespace

FeatureMap::FeatureMap(const layers::ParamFactory& factory, const std::string& name, const FeatureMapOptions& options,
                       const std::string& feature_stream)
    : options_(options) {
  options.validate(name);
  const int64_t H = options.heads, d = options.head_dim, h = options.hidden(), dp = options.features();
  const int64_t P = options.degree, part = dp / P;
  const int64_t pairs = h / 2;  // hidden units j and pairs + j carry +x_c and -x_c, c = j mod d
  // act(z) - act(-z) = z for GELU-tanh and ReLU; without an activation the pair sums to 2z.
  const double pair_gain = options.activation == FeatureActivation::None ? 2.0 : 1.0;
  const double root4_d = std::pow(double(d), 0.25);
  const double beta = 0.5 * std::log(double(dp)) + 0.5 * std::sqrt(double(d));

  // Draw on the CPU in f64 so the values do not depend on the device or param dtype.
  layers::ParamFactory host = factory;
  host.device = Device::cpu();
  host.dtype = DType::F64;
  const std::vector<double> omega = host.normal((feature_stream.empty() ? name : feature_stream) + ".omega", {H, dp, d}, 1.0).to_vector();  // [H, Dp, d]
  const std::vector<double> spare = host.uniform(name + ".0.weight", {H, d}, 0.1 / std::sqrt(double(d))).to_vector();

  std::vector<int64_t> copies(size_t(d), 0);  // pairs reading each coordinate
  for (int64_t j = 0; j < pairs; ++j) ++copies[size_t(j % d)];

  std::vector<double> w1(size_t(H * h * d), 0.0), b1(size_t(H * h), 0.0);
  std::vector<double> w2(size_t(H * dp * h), 0.0), b2(size_t(H * dp), 0.0);
  for (int64_t head = 0; head < H; ++head) {
    double* W1 = &w1[size_t(head * h * d)];  // [h, d]
    double* W2 = &w2[size_t(head * dp * h)];  // [Dp, h]
    for (int64_t j = 0; j < pairs; ++j) {
      const int64_t c = j % d;
      W1[j * d + c] = 1.0;
      W1[(pairs + j) * d + c] = -1.0;
    }
    if (h % 2 == 1)  // the odd unit: small random input row, zero output column
      for (int64_t c = 0; c < d; ++c) W1[(h - 1) * d + c] = spare[size_t(head * d + c)];
    for (int64_t f = 0; f < dp; ++f) {
      const double power = double(f / part + 1);  // part i (1-based) is raised to the power i
      const double* w = &omega[size_t((head * dp + f) * d)];
      for (int64_t j = 0; j < pairs; ++j) {
        const int64_t c = j % d;
        const double value = w[c] / (root4_d * power * pair_gain * double(copies[size_t(c)]));
        W2[f * h + j] = value;
        W2[f * h + pairs + j] = -value;
      }
      b2[size_t(head * dp + f)] = -beta / power;
    }
  }
  weight1 = parameter_from(factory, w1, {H, h, d});
  bias1 = parameter_from(factory, b1, {H, h});
  weight2 = parameter_from(factory, w2, {H, dp, h});
  bias2 = parameter_from(factory, b2, {H, dp});
}

Tensor FeatureMap::split_powers(const Tensor& psi, int64_t degree) {
  REHYAT_CHECK(degree >= 1 && degree <= 3 && psi.dim() >= 1 && psi.size(-1) % degree == 0,
               "feature map: cannot split {} into {} equal parts of the last dim", psi.str(), degree);
  if (degree == 1) return psi;
  const int64_t part = psi.size(-1) / degree;
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < degree; ++i) {
    Tensor p = psi.slice(-1, i * part, (i + 1) * part);
    parts.push_back(i == 0 ? p : pow(p, double(i + 1)));
  }
  return concat(parts, -1);
}

namespace {

// The tensors the backward of one feature-map call needs (detached).
struct FeatureMapSaved {
  Tensor xh;      // [H, R, d] the input per head (a view of x in the product dtype)
  Tensor a1, g;   // [H, R, h] first product, act(a1 + b1)
  Tensor a2;      // [H, R, Dp] second product, in the high dtype
  Tensor w1, w2;  // [H, h, d], [H, Dp, h] in the product dtype
  Tensor b1, b2;  // [H, h], [H, Dp] in the high dtype
};

// Parameter `p` in dtype `dtype` (detached; the tensor itself when it already is).
Tensor as_dtype(const Tensor& p, DType dtype) { return p.dtype() == dtype ? p.detach() : p.detach().to(dtype); }

// Gradient `grad` in dtype `dtype` (the input's).
Tensor grad_as(const Tensor& grad, DType dtype) { return grad.dtype() == dtype ? grad : grad.to(dtype); }

// The gradients of one feature-map call (inputs x, W1, b1, W2, b2) from dφ [B, N, H, Dp];
// undefined where the node needs none.
std::vector<Tensor> feature_map_backward(const FeatureMapSaved& s, const FeatureMapOptions& o, int64_t B, int64_t N,
                                         const Tensor& grad, const Node& node) {
  const int64_t H = o.heads, d = o.head_dim, h = o.hidden(), dp = o.features(), R = B * N;
  const DType product = s.a1.dtype(), high = s.b1.dtype();
  const Device device = s.a1.device();
  std::vector<Tensor> grads(5);
  // grads[i] = a @ b in the high dtype (weight gradients: fp32 out of bf16 products).
  auto weight_grad = [&](size_t i, const Tensor& a, const Tensor& b, const Shape& shape) {
    Tensor w = Tensor::empty(shape, high, device);
    rehyat::kernels::matmul(w, a, b);
    grads[i] = grad_as(w, node.input_dtypes[i]);
  };
  Tensor dz = Tensor::empty({H, R, dp}, product, device), db2 = Tensor::empty({H, dp}, high, device);
  kernels::phi_features_backward(dz, db2, grad_as(grad, high).contiguous(), s.a2, s.b2, o.degree);
  if (node.needs_grad(3)) weight_grad(3, dz.transpose(1, 2), s.g, {H, dp, h});
  if (node.needs_grad(4)) grads[4] = grad_as(db2, node.input_dtypes[4]);
  if (!node.needs_grad(0) && !node.needs_grad(1) && !node.needs_grad(2)) return grads;
  Tensor du = Tensor::empty({H, R, h}, product, device), db1 = Tensor::empty({H, h}, high, device);
  rehyat::kernels::matmul(du, dz, s.w2);
  kernels::phi_hidden_backward(du, db1, du, s.a1, s.b1, o.activation);  // in place: du = dg * act'
  if (node.needs_grad(1)) weight_grad(1, du.transpose(1, 2), s.xh, {H, h, d});
  if (node.needs_grad(2)) grads[2] = grad_as(db1, node.input_dtypes[2]);
  if (node.needs_grad(0)) {
    Tensor dxh = Tensor::empty({H, R, d}, product, device);
    rehyat::kernels::matmul(dxh, du, s.w1);
    grads[0] = Tensor::empty({B, N, H, d}, node.input_dtypes[0], device);
    rehyat::kernels::copy(grads[0], dxh.view({H, B, N, d}).permute({1, 2, 0, 3}));
  }
  return grads;
}

}  // namespace

Tensor FeatureMap::forward(const Tensor& x) const {
  const int64_t H = options_.heads, d = options_.head_dim, h = options_.hidden(), dp = options_.features();
  check_input(x);
  const int64_t B = x.size(0), N = x.size(1), R = B * N;
  const DType high = x.dtype() == DType::F64 ? DType::F64 : DType::F32;
  // The products run in the compute dtype of a bf16 / f16 model on CUDA (tensor cores, fp32
  // sums), else in the high dtype; the maps around them always compute in fp32 / fp64.
  const bool low = x.dtype() == DType::BF16 || x.dtype() == DType::F16;
  const DType product = low && x.device().is_cuda() ? x.dtype() : high;
  const Device device = x.device();

  FeatureMapSaved s;
  // [B, N, H, d] -> [H, B*N, d]: a strided view (row stride H*d) when x allows it.
  s.xh = as_dtype(x, product).permute({2, 0, 1, 3}).reshape({H, R, d});
  s.w1 = as_dtype(weight1, product);
  s.w2 = as_dtype(weight2, product);
  s.b1 = as_dtype(bias1, high);
  s.b2 = as_dtype(bias2, high);
  s.a1 = Tensor::empty({H, R, h}, product, device);
  rehyat::kernels::matmul(s.a1, s.xh, s.w1.transpose(1, 2));
  s.g = Tensor::empty({H, R, h}, product, device);
  kernels::phi_hidden_forward(s.g, s.a1, s.b1, options_.activation);
  s.a2 = Tensor::empty({H, R, dp}, high, device);  // the softplus input stays wide (feature_map_kernels.h)
  rehyat::kernels::matmul(s.a2, s.g, s.w2.transpose(1, 2));
  Tensor phi = Tensor::empty({B, N, H, dp}, high, device);
  kernels::phi_features_forward(phi, s.a2, s.b2, options_.degree);

  if (autograd::should_record({&x, &weight1, &bias1, &weight2, &bias2})) {
    autograd::record("feature_map", phi, {x, weight1, bias1, weight2, bias2},
                     [s, o = options_, B, N](const Tensor& grad, const Node& node) {
                       return feature_map_backward(s, o, B, N, grad, node);
                     });
  }
  return phi;
}

Tensor FeatureMap::forward_composite(const Tensor& x) const {
  const int64_t H = options_.heads, d = options_.head_dim;
  check_input(x);
  const DType high = x.dtype() == DType::F64 ? DType::F64 : DType::F32;
  const int64_t B = x.size(0), N = x.size(1);
  // Heads become the batch of two matmuls: [H, B*N, d] @ [H, d, h] @ [H, h, Dp].
  const Tensor xh = layers::cast(x, high).permute({2, 0, 1, 3}).reshape({H, B * N, d});
  Tensor hidden = matmul(xh, layers::cast(weight1, high).transpose(1, 2)) +
                  layers::cast(bias1, high).unsqueeze(1);  // [H, B*N, h]
  switch (options_.activation) {
    case FeatureActivation::Gelu: hidden = gelu(hidden); break;
    case FeatureActivation::Relu: hidden = relu(hidden); break;
    case FeatureActivation::None: break;
  }
  const Tensor pre = matmul(hidden, layers::cast(weight2, high).transpose(1, 2)) +
                     layers::cast(bias2, high).unsqueeze(1);  // [H, B*N, Dp]
  const Tensor phi = split_powers(softplus(pre), options_.degree);  // [H, B*N, Dp]
  return phi.reshape({H, B, N, phi.size(-1)}).permute({1, 2, 0, 3}).contiguous();  // [B, N, H, Dp]
}

void FeatureMap::check_input(const Tensor& x) const {
  const int64_t H = options_.heads, d = options_.head_dim;
  REHYAT_CHECK(weight1.defined(), "feature map: not initialized");
  REHYAT_CHECK(x.dim() == 4 && x.size(2) == H && x.size(3) == d, "feature map: input {} is not [B, N, H={}, d={}]",
               x.str(), H, d);
  REHYAT_CHECK(is_floating(x.dtype()), "feature map: input {} is not a float tensor", x.str());
}

void FeatureMap::collect(const std::string& prefix, layers::NamedTensors& out) const {
  out.emplace_back(prefix + ".0.weight", weight1);
  out.emplace_back(prefix + ".0.bias", bias1);
  out.emplace_back(prefix + ".2.weight", weight2);
  out.emplace_back(prefix + ".2.bias", bias2);
}

}  // namespace rehyat::attention
