// ReHyAt feature maps, the `attention:` config and the hybrid core in a WanModel: shapes,
// the per-head MLP against a plain loop, the powers, the softmax-kernel init, the parameter
// count at Wan-1.3B, f64 finite-difference gradients, CPU vs CUDA, config parsing and
// errors, block selection, named parameters, the Tc >= T reduction to the teacher, and
// checkpoints with φ.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "attention/attention_config.h"
#include "attention/feature_map.h"
#include "attention/feature_map_kernels.h"
#include "autograd/ops.h"
#include "layer_test_util.h"
#include "layers/hybrid_core.h"
#include "layers/wan_checkpoint.h"
#include "layers/wan_model.h"
#include "temp_dir.h"

namespace rehyat::testing {
namespace {

using attention::AttentionConfig;
using attention::AttentionKind;
using attention::FeatureActivation;
using attention::FeatureMap;
using attention::FeatureMapOptions;
using layers::WanConfig;
using layers::WanModel;

FeatureMapOptions small_options(int64_t degree = 2, FeatureActivation act = FeatureActivation::Gelu) {
  FeatureMapOptions o;
  o.heads = 3;
  o.head_dim = 8;
  o.degree = degree;
  o.activation = act;
  if (degree == 3) o.feature_dim = 18;
  return o;
}

layers::ParamFactory factory(DType dtype = DType::F64, Device device = Device::cpu(), uint64_t seed = 1) {
  return layers::ParamFactory{device, dtype, seed};
}

// Replaces the structured init by generic random values (every path live).
void randomize(const FeatureMap& map, uint64_t seed) {
  layers::NamedTensors params;
  map.collect("phi", params);
  randomize_parameters(params, seed);
}

// φ by plain loops over the host values: x [B, N, H, d] -> [B, N, H, Dp].
std::vector<double> reference_phi(const FeatureMap& map, const Tensor& x) {
  const FeatureMapOptions& o = map.options();
  const int64_t H = o.heads, d = o.head_dim, h = o.hidden(), dp = o.features(), part = dp / o.degree;
  const std::vector<double> xv = x.to_vector(), w1 = map.weight1.to_vector(), b1 = map.bias1.to_vector(),
                            w2 = map.weight2.to_vector(), b2 = map.bias2.to_vector();
  const int64_t rows = x.numel() / (H * d);
  std::vector<double> out(size_t(rows * H * dp));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t head = 0; head < H; ++head) {
      const double* xi = &xv[size_t((r * H + head) * d)];
      std::vector<double> hidden(static_cast<size_t>(h));
      for (int64_t j = 0; j < h; ++j) {
        double z = b1[size_t(head * h + j)];
        for (int64_t c = 0; c < d; ++c) z += w1[size_t((head * h + j) * d + c)] * xi[c];
        switch (o.activation) {
          case FeatureActivation::Gelu:
            z = 0.5 * z * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)));
            break;
          case FeatureActivation::Relu: z = std::max(z, 0.0); break;
          case FeatureActivation::None: break;
        }
        hidden[size_t(j)] = z;
      }
      for (int64_t f = 0; f < dp; ++f) {
        double z = b2[size_t(head * dp + f)];
        for (int64_t j = 0; j < h; ++j) z += w2[size_t((head * dp + f) * h + j)] * hidden[size_t(j)];
        const double s = std::log1p(std::exp(z));
        out[size_t((r * H + head) * dp + f)] = std::pow(s, double(f / part + 1));
      }
    }
  return out;
}

TEST(FeatureMap, ShapesDtypesAndParameterShapes) {
  for (int64_t degree : {1, 2, 3}) {
    const FeatureMapOptions o = small_options(degree);
    FeatureMap map(factory(DType::F32), "blocks.0.self_attn.phi_q", o);
    EXPECT_EQ(map.weight1.shape(), (Shape{3, 16, 8}));
    EXPECT_EQ(map.bias1.shape(), (Shape{3, 16}));
    EXPECT_EQ(map.weight2.shape(), (Shape{3, o.features(), 16}));
    EXPECT_EQ(map.bias2.shape(), (Shape{3, o.features()}));
    const Tensor phi = map.forward(random_input({2, 5, 3, 8}, 3, DType::F32, Device::cpu(), false));
    EXPECT_EQ(phi.shape(), (Shape{2, 5, 3, o.features()}));
    EXPECT_EQ(phi.dtype(), DType::F32);
    EXPECT_TRUE(phi.is_contiguous());
    for (double v : phi.to_vector()) ASSERT_TRUE(std::isfinite(v) && v >= 0);
  }
  FeatureMap map(factory(DType::F64), "phi", small_options());
  EXPECT_EQ(map.forward(random_input({1, 2, 3, 8}, 3)).dtype(), DType::F64);
  layers::NamedTensors named;
  map.collect("blocks.2.self_attn.phi_k", named);
  ASSERT_EQ(named.size(), 4u);
  EXPECT_EQ(named[0].first, "blocks.2.self_attn.phi_k.0.weight");
  EXPECT_EQ(named[3].first, "blocks.2.self_attn.phi_k.2.bias");
  EXPECT_THROW(map.forward(random_input({1, 2, 4, 8}, 3)), Error);  // wrong head count
}

TEST(FeatureMap, MatchesPlainLoopWithPowersOfParts) {
  for (auto act : {FeatureActivation::Gelu, FeatureActivation::Relu, FeatureActivation::None})
    for (int64_t degree : {1, 2, 3}) {
      FeatureMap map(factory(), "phi", small_options(degree, act));
      randomize(map, 5 + uint64_t(degree));
      const Tensor x = random_input({2, 3, 3, 8}, 4, DType::F64, Device::cpu(), false);
      const Tensor phi = map.forward(x);
      const Tensor want = Tensor::from_vector(reference_phi(map, x), phi.shape(), DType::F64);
      expect_close(fmt::format("{} P={}", attention::feature_activation_name(act), degree), phi, want, 1e-12);
    }
  // split_powers on known values: part i is raised to the power i.
  const Tensor psi = Tensor::from_vector({2, 3, 2, 3, 2, 3}, {1, 6}, DType::F64);
  EXPECT_EQ(FeatureMap::split_powers(psi, 3).to_vector(), (std::vector<double>{2, 3, 4, 9, 8, 27}));
  EXPECT_EQ(FeatureMap::split_powers(psi, 2).to_vector(), (std::vector<double>{2, 3, 2, 9, 4, 9}));
  EXPECT_EQ(FeatureMap::split_powers(psi, 1).to_vector(), psi.to_vector());
  EXPECT_THROW(FeatureMap::split_powers(Tensor::zeros({1, 5}, DType::F64), 2), Error);
}

TEST(FeatureMap, InitApproximatesTheSoftmaxKernel) {
  // Heads of RMS-normed vectors (|x|^2 = d): φq·φk ≈ exp(q·k/√d).
  FeatureMapOptions o;
  o.heads = 1;
  o.head_dim = 64;
  o.feature_dim = 512;  // more random features: a tighter estimate
  o.hidden_dim = 128;
  FeatureMap phi_q(factory(), "phi_q", o, "phi"), phi_k(factory(), "phi_k", o, "phi");
  const int64_t n = 64, d = 64;
  auto normed = [&](uint64_t seed) {
    Tensor x = Tensor::randn({1, n, 1, d}, seed, 0, DType::F64);
    return x * rsqrt(mean(square(x), -1, true));
  };
  // Keys correlated with the queries, so q·k/√d spans a useful range.
  const Tensor q = normed(11);
  const Tensor k = normed(12);
  const Tensor kc = (q * 0.8 + k * 0.6);
  const Tensor kn = kc * rsqrt(mean(square(kc), -1, true));
  const std::vector<double> pq = phi_q.forward(q).to_vector(), pk = phi_k.forward(kn).to_vector();
  const std::vector<double> qv = q.to_vector(), kv = kn.to_vector();
  const int64_t dp = o.features();
  double sum_err = 0, sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
  int count = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double kernel = 0, logit = 0;
      for (int64_t f = 0; f < dp; ++f) kernel += pq[size_t(i * dp + f)] * pk[size_t(j * dp + f)];
      for (int64_t c = 0; c < d; ++c) logit += qv[size_t(i * d + c)] * kv[size_t(j * d + c)];
      logit /= std::sqrt(double(d));
      const double y = std::log(kernel);
      sum_err += y - logit;
      sx += logit, sy += y, sxx += logit * logit, syy += y * y, sxy += logit * y;
      ++count;
    }
  const double corr = (sxy - sx * sy / count) / std::sqrt((sxx - sx * sx / count) * (syy - sy * sy / count));
  // A random-feature estimate is noisy (its variance grows with |q + k|): it tracks the
  // kernel, it does not reproduce it.
  EXPECT_GT(corr, 0.5) << "log φq·φk should track q·k/√d";
  EXPECT_LT(std::abs(sum_err / count), 3.0) << "mean log φq·φk − q·k/√d";
  // The hidden layer is an exact ± split at init: every activation gives the same φ.
  FeatureMap relu(factory(), "phi_q", [&] { auto r = o; r.activation = FeatureActivation::Relu; return r; }(), "phi");
  FeatureMap none(factory(), "phi_q", [&] { auto r = o; r.activation = FeatureActivation::None; return r; }(), "phi");
  expect_close("relu init == gelu init", relu.forward(q), phi_q.forward(q), 1e-12);
  expect_close("none init == gelu init", none.forward(q), phi_q.forward(q), 1e-12);
  // Seeded by stream name: φq and φk share their features; another stream differs.
  EXPECT_EQ(phi_k.weight2.to_vector(), phi_q.weight2.to_vector());
  EXPECT_NE(FeatureMap(factory(), "phi_q", o).weight2.to_vector(), phi_q.weight2.to_vector());
}

TEST(FeatureMap, ParameterCountAtWan13B) {
  const WanConfig wan = WanConfig::wan_1_3b();
  AttentionConfig defaults;
  defaults.kind = AttentionKind::Rehyat;
  const FeatureMapOptions o = defaults.feature_map(wan.num_heads, wan.head_dim());
  EXPECT_EQ(o.hidden(), 256);
  EXPECT_EQ(o.features(), 256);
  // 12 heads x (256*128 + 256 + 256*256 + 256) per map, two maps per block: ≈ 2.4M (SPEC §3).
  EXPECT_EQ(o.parameter_count(), 1185792);
  layers::HybridAttentionCore core(factory(DType::F32), "blocks.0.self_attn", o, defaults.hybrid_options());
  layers::NamedTensors params;
  core.collect("blocks.0.self_attn", params);
  int64_t total = 0;
  for (const auto& [name, t] : params) total += t.numel();
  EXPECT_EQ(total, 2371584);
  EXPECT_NEAR(double(total), 2.4e6, 0.05e6);
}

TEST(FeatureMap, GradientsMatchFiniteDifferencesInF64) {
  for (auto act : {FeatureActivation::Gelu, FeatureActivation::Relu, FeatureActivation::None})
    for (int64_t degree : {1, 2, 3}) {
      FeatureMapOptions o = small_options(degree, act);
      o.hidden_dim = 7;  // odd: the spare unit too
      FeatureMap map(factory(), "phi", o);
      randomize(map, 20 + uint64_t(degree));
      const Tensor x = random_input({2, 3, 3, 8}, 9);
      gradcheck(fmt::format("feature map {} P={}", attention::feature_activation_name(act), degree),
                [&] { return map.forward(x); },
                {{"x", x}, {"0.weight", map.weight1}, {"0.bias", map.bias1}, {"2.weight", map.weight2},
                 {"2.bias", map.bias2}},
                8, 1e-6);
    }
  // The structured init is differentiable too (no dead units).
  FeatureMap init(factory(), "phi", small_options());
  const Tensor x = random_input({1, 4, 3, 8}, 10);
  gradcheck("feature map at init", [&] { return init.forward(x); },
            {{"x", x}, {"0.weight", init.weight1}, {"2.weight", init.weight2}, {"2.bias", init.bias2}}, 8, 1e-6);
}

TEST(FeatureMap, CudaMatchesCpu) {
  REHYAT_SKIP_WITHOUT_GPU("feature map CPU vs CUDA");
  for (auto act : {FeatureActivation::Gelu, FeatureActivation::Relu})
    for (int64_t degree : {1, 2, 3}) {
      const FeatureMapOptions o = small_options(degree, act);
      FeatureMap cpu(factory(DType::F32), "phi", o), gpu(factory(DType::F32, Device::cuda(0)), "phi", o);
      EXPECT_EQ(cpu.weight2.to_vector(), gpu.weight2.to_vector()) << "seeded init is device-independent";
      randomize(cpu, 30);
      randomize(gpu, 30);
      const Tensor x_cpu = random_input({2, 33, 3, 8}, 31, DType::F32);
      const Tensor x_gpu = random_input({2, 33, 3, 8}, 31, DType::F32, Device::cuda(0));
      const Tensor phi_cpu = cpu.forward(x_cpu), phi_gpu = gpu.forward(x_gpu);
      const std::string what = fmt::format("{} P={}", attention::feature_activation_name(act), degree);
      expect_close(what + " φ", phi_gpu.to(Device::cpu()), phi_cpu, 1e-5);
      const Tensor w = Tensor::randn(phi_cpu.shape(), 32, 0, DType::F32);
      phi_cpu.backward(w);
      phi_gpu.backward(w.to(Device::cuda(0)));
      expect_close(what + " dx", x_gpu.grad().to(Device::cpu()), x_cpu.grad(), 1e-4);
      expect_close(what + " dW1", gpu.weight1.grad().to(Device::cpu()), cpu.weight1.grad(), 1e-4);
      expect_close(what + " db1", gpu.bias1.grad().to(Device::cpu()), cpu.bias1.grad(), 1e-4);
      expect_close(what + " dW2", gpu.weight2.grad().to(Device::cpu()), cpu.weight2.grad(), 1e-4);
      expect_close(what + " db2", gpu.bias2.grad().to(Device::cpu()), cpu.bias2.grad(), 1e-4);
    }
}

// The fused op (forward) against the composite of autograd primitives (forward_composite):
// values and all five gradients, f64 and f32 on the CPU, every activation and degree, and
// an input that is a strided view (a slice of wider rows, as q is of a fused projection).
TEST(FeatureMap, FusedOpMatchesTheComposite) {
  for (DType dtype : {DType::F64, DType::F32})
    for (auto act : {FeatureActivation::Gelu, FeatureActivation::Relu, FeatureActivation::None})
      for (int64_t degree : {1, 2, 3}) {
        FeatureMapOptions o = small_options(degree, act);
        o.hidden_dim = 11;
        FeatureMap map(factory(dtype), "phi", o);
        randomize(map, 40 + uint64_t(degree));
        const Tensor wide = random_input({2, 5, 3, 12}, 41, dtype, Device::cpu(), false);
        const std::string what = fmt::format("{} {} P={}", dtype_name(dtype), attention::feature_activation_name(act),
                                             degree);
        std::vector<Tensor> grads[2];
        Tensor phi[2];
        for (int path = 0; path < 2; ++path) {
          Tensor x = wide.slice(3, 2, 10).detach();  // [2, 5, 3, 8], row stride 12
          x.set_requires_grad(true);
          ASSERT_FALSE(x.is_contiguous());
          layers::NamedTensors params;
          map.collect("phi", params);
          for (auto& [name, p] : params) {
            Tensor t = p;
            t.zero_grad();
          }
          phi[path] = path == 0 ? map.forward(x) : map.forward_composite(x);
          phi[path].backward(Tensor::randn(phi[path].shape(), 42, 0, phi[path].dtype()));
          grads[path] = {x.grad(), map.weight1.grad(), map.bias1.grad(), map.weight2.grad(), map.bias2.grad()};
        }
        const double tol = dtype == DType::F64 ? 1e-12 : 2e-6;
        expect_close(what + " φ", phi[0], phi[1], tol);
        const char* names[] = {"dx", "dW1", "db1", "dW2", "db2"};
        for (int i = 0; i < 5; ++i) {
          ASSERT_TRUE(grads[0][size_t(i)].defined()) << what << " " << names[i];
          EXPECT_EQ(grads[0][size_t(i)].dtype(), dtype) << what << " " << names[i];
          expect_close(what + " " + names[i], grads[0][size_t(i)], grads[1][size_t(i)], 10 * tol);
        }
      }
}

// Only the gradients asked for: frozen parameters (distilling nothing, training x's
// producer) or an input that needs none (distillation: only φ trains) give the same
// gradients as the composite for what does need one; an empty input gives an empty φ.
TEST(FeatureMap, FusedOpGradientsForFrozenParametersOrInput) {
  FeatureMap map(factory(), "phi", small_options(2));
  randomize(map, 70);
  const Tensor x0 = random_input({2, 3, 3, 8}, 71, DType::F64, Device::cpu(), false);
  layers::NamedTensors params;
  map.collect("phi", params);
  auto set_trainable = [&](bool on) {
    for (auto& [name, p] : params) {
      Tensor t = p;
      t.zero_grad();
      t.set_requires_grad(on);
    }
  };
  const Tensor w = Tensor::randn({2, 3, 3, 16}, 72, 0, DType::F64);
  // x needs a gradient, the parameters are frozen.
  set_trainable(false);
  Tensor grads[2];
  for (int path = 0; path < 2; ++path) {
    Tensor x = x0.clone();
    x.set_requires_grad(true);
    (path == 0 ? map.forward(x) : map.forward_composite(x)).backward(w);
    grads[path] = x.grad();
    EXPECT_FALSE(map.weight1.grad().defined());
  }
  expect_close("dx, parameters frozen", grads[0], grads[1], 1e-12);
  // The parameters train, x needs no gradient.
  set_trainable(true);
  std::vector<double> dw[2];
  for (int path = 0; path < 2; ++path) {
    for (auto& [name, p] : params) {
      Tensor t = p;
      t.zero_grad();
    }
    (path == 0 ? map.forward(x0) : map.forward_composite(x0)).backward(w);
    for (const Tensor* t : {&map.weight1, &map.bias1, &map.weight2, &map.bias2})
      for (double v : t->grad().to_vector()) dw[path].push_back(v);
  }
  ASSERT_EQ(dw[0].size(), dw[1].size());
  for (size_t i = 0; i < dw[0].size(); ++i) EXPECT_NEAR(dw[0][i], dw[1][i], 1e-12 * (1 + std::abs(dw[1][i]))) << i;
  // No rows: zero parameter gradients.
  set_trainable(true);
  Tensor empty = random_input({1, 0, 3, 8}, 73, DType::F64, Device::cpu(), true);
  const Tensor phi = map.forward(empty);
  EXPECT_EQ(phi.shape(), (Shape{1, 0, 3, 16}));
  phi.backward(Tensor::zeros({1, 0, 3, 16}, DType::F64));
  for (const Tensor* t : {&map.weight1, &map.bias1, &map.weight2, &map.bias2}) {
    ASSERT_TRUE(t->grad().defined());
    for (double v : t->grad().to_vector()) ASSERT_EQ(v, 0.0);
  }
}

// The fused maps (attention/feature_map_kernels.h) on CUDA against their CPU loops, for
// every product dtype, with rows that are not a multiple of the kernels' row block and more
// columns than one thread block covers; the backward maps in place, as the op runs them.
TEST(FeatureMap, FusedMapsCudaMatchCpu) {
  REHYAT_SKIP_WITHOUT_GPU("feature map kernels CPU vs CUDA");
  namespace fk = attention::kernels;
  const int64_t H = 3, R = 130, C = 300;
  const Device gpu = Device::cuda(0);
  for (DType product : {DType::BF16, DType::F16, DType::F32, DType::F64}) {
    const DType high = product == DType::F64 ? DType::F64 : DType::F32;
    const double tol = product == DType::F64 ? 1e-12 : (product == DType::F32 ? 1e-5 : 1e-2);
    const Tensor a = Tensor::randn({H, R, C}, 51, 0, DType::F64, Device::cpu(), 0.0, 2.0).to(product);
    const Tensor up = Tensor::randn({H, R, C}, 52, 0, DType::F64).to(product);
    const Tensor dphi = Tensor::randn({2, R / 2, H, C}, 53, 0, DType::F64).to(high);
    const Tensor bias = Tensor::randn({H, C}, 54, 0, DType::F64, Device::cpu(), 0.0, 0.5).to(high);
    for (auto act : {FeatureActivation::Gelu, FeatureActivation::Relu, FeatureActivation::None}) {
      const std::string what = fmt::format("{} {}", dtype_name(product), attention::feature_activation_name(act));
      Tensor g[2], du[2], db[2];
      for (int dev = 0; dev < 2; ++dev) {
        const Device device = dev == 0 ? Device::cpu() : gpu;
        const Tensor ad = a.to(device), bd = bias.to(device);
        g[dev] = Tensor::empty({H, R, C}, product, device);
        fk::phi_hidden_forward(g[dev], ad, bd, act);
        du[dev] = up.to(device).clone();
        db[dev] = Tensor::empty({H, C}, high, device);
        fk::phi_hidden_backward(du[dev], db[dev], du[dev], ad, bd, act);
      }
      expect_close(what + " g", g[1].to(Device::cpu()), g[0], tol);
      expect_close(what + " du", du[1].to(Device::cpu()), du[0], tol);
      expect_close(what + " db1", db[1].to(Device::cpu()), db[0], product == DType::F64 ? 1e-12 : 1e-5);
    }
    for (int64_t degree : {1, 2, 3}) {
      const std::string what = fmt::format("{} P={}", dtype_name(product), degree);
      Tensor phi[2], dz[2], db[2];
      for (int dev = 0; dev < 2; ++dev) {
        const Device device = dev == 0 ? Device::cpu() : gpu;
        const Tensor ad = a.to(high).to(device), bd = bias.to(device);  // a2 comes in the high dtype
        phi[dev] = Tensor::empty({2, R / 2, H, C}, high, device);
        fk::phi_features_forward(phi[dev], ad, bd, degree);
        dz[dev] = Tensor::empty({H, R, C}, product, device);
        db[dev] = Tensor::empty({H, C}, high, device);
        fk::phi_features_backward(dz[dev], db[dev], dphi.to(device), ad, bd, degree);
      }
      expect_close(what + " φ", phi[1].to(Device::cpu()), phi[0], product == DType::F64 ? 1e-12 : 1e-5);
      expect_close(what + " dz", dz[1].to(Device::cpu()), dz[0], tol);
      expect_close(what + " db2", db[1].to(Device::cpu()), db[0], product == DType::F64 ? 1e-12 : 1e-5);
    }
  }
  // The router names the tensor at fault.
  Tensor bad = Tensor::empty({H, R, C + 1}, DType::F32, gpu);
  const Tensor a = Tensor::empty({H, R, C}, DType::F32, gpu), b = Tensor::empty({H, C}, DType::F32, gpu);
  try {
    fk::phi_hidden_forward(bad, a, b, FeatureActivation::Gelu);
    ADD_FAILURE() << "a mismatched output was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("g "), std::string::npos) << e.what();
  }
}

// A bf16 model on CUDA runs φ's products in bf16 (fp32 sums): φ and every gradient track the
// exact f32 map of the same (bf16-rounded) input within bf16 rounding, and the parameter
// gradients come out in the parameters' f32.
TEST(FeatureMap, CudaBf16ProductsTrackTheF32Map) {
  REHYAT_SKIP_WITHOUT_GPU("bf16 feature map on CUDA");
  const FeatureMapOptions o = small_options(2);
  FeatureMap cpu(factory(DType::F32), "phi", o), gpu(factory(DType::F32, Device::cuda(0)), "phi", o);
  randomize(cpu, 60);
  randomize(gpu, 60);
  const Tensor x_bf16 = random_input({2, 70, 3, 8}, 61, DType::BF16, Device::cpu(), false);
  Tensor x_cpu = x_bf16.to(DType::F32), x_gpu = x_bf16.to(Device::cuda(0));
  x_cpu.set_requires_grad(true);
  x_gpu.set_requires_grad(true);
  const Tensor phi_cpu = cpu.forward(x_cpu), phi_gpu = gpu.forward(x_gpu);
  EXPECT_EQ(phi_gpu.dtype(), DType::F32);
  expect_close("bf16 φ", phi_gpu.to(Device::cpu()), phi_cpu, 3e-2);
  EXPECT_GT(max_rel_error(phi_gpu.to(Device::cpu()), phi_cpu), 1e-6) << "the products did not run in bf16";
  const Tensor w = Tensor::randn(phi_cpu.shape(), 62, 0, DType::F32);
  phi_cpu.backward(w);
  phi_gpu.backward(w.to(Device::cuda(0)));
  EXPECT_EQ(x_gpu.grad().dtype(), DType::BF16);
  EXPECT_EQ(gpu.weight1.grad().dtype(), DType::F32);
  expect_close("bf16 dx", x_gpu.grad().to(Device::cpu()), x_cpu.grad(), 2e-2);
  expect_close("bf16 dW1", gpu.weight1.grad().to(Device::cpu()), cpu.weight1.grad(), 2e-2);
  expect_close("bf16 db1", gpu.bias1.grad().to(Device::cpu()), cpu.bias1.grad(), 2e-2);
  expect_close("bf16 dW2", gpu.weight2.grad().to(Device::cpu()), cpu.weight2.grad(), 2e-2);
  expect_close("bf16 db2", gpu.bias2.grad().to(Device::cpu()), cpu.bias2.grad(), 2e-2);
}

// --- config ------------------------------------------------------------------------------

const char* kToyModel =
    "model:\n  dim: 32\n  ffn_dim: 48\n  freq_dim: 16\n  num_heads: 2\n  num_layers: 4\n"
    "  in_dim: 3\n  out_dim: 2\n  text_len: 5\n  text_dim: 6\n";

AttentionConfig load_attention(const std::string& path, const std::vector<std::string>& overrides = {}) {
  ConfigSchema schema;
  layers::declare_model_config(schema);
  attention::declare_attention_config(schema);
  const Config config = load_config(path, schema, overrides);
  return attention::attention_config_from(config, layers::from_config(config));
}

TEST(AttentionConfig, DefaultsParsingAndOverrides) {
  TempDir dir;
  const std::string plain = dir.file("plain.yaml"), hybrid = dir.file("hybrid.yaml");
  write_file(plain, kToyModel);
  const AttentionConfig d = load_attention(plain);
  EXPECT_EQ(d.kind, AttentionKind::Softmax);  // a plain model file runs the teacher
  EXPECT_EQ(d.chunk_frames, 3);
  EXPECT_EQ(d.overlap_frames, 1);
  EXPECT_TRUE(d.causal);
  EXPECT_EQ(d.degree, 2);
  EXPECT_EQ(d.feature_dim, 0);
  EXPECT_EQ(d.hidden_dim, 0);
  EXPECT_EQ(d.activation, FeatureActivation::Gelu);
  EXPECT_TRUE(d.converted_blocks(4).empty());
  EXPECT_EQ(d.feature_map(2, 16).features(), 32);

  write_file(hybrid, std::string(kToyModel) +
                         "attention:\n  kind: rehyat\n  chunk_frames: 2\n  overlap_frames: 3\n  causal: false\n"
                         "  degree: 3\n  feature_dim: 24\n  hidden_dim: 20\n  activation: relu\n  rate: 4\n"
                         "  hybrid_blocks: [3, 1]\n");
  const AttentionConfig c = load_attention(hybrid);
  EXPECT_EQ(c.kind, AttentionKind::Rehyat);
  EXPECT_EQ(c.chunk_frames, 2);
  EXPECT_EQ(c.overlap_frames, 3);
  EXPECT_FALSE(c.causal);
  EXPECT_EQ(c.degree, 3);
  EXPECT_EQ(c.activation, FeatureActivation::Relu);
  EXPECT_EQ(c.converted_blocks(4), (std::vector<int>{1, 3}));
  const attention::HybridOptions h = c.hybrid_options();
  EXPECT_EQ(h.kind, AttentionKind::Rehyat);
  EXPECT_EQ(h.chunk_frames, 2);
  EXPECT_EQ(h.overlap_frames, 3);
  EXPECT_FALSE(h.causal);
  EXPECT_EQ(h.rate, 4);
  const FeatureMapOptions f = c.feature_map(2, 16);
  EXPECT_EQ(f.hidden(), 20);
  EXPECT_EQ(f.features(), 24);

  const AttentionConfig o = load_attention(plain, {"attention.kind=uniform_hybrid", "attention.chunk_frames=5",
                                                   "attention.hybrid_block_count=2"});
  EXPECT_EQ(o.kind, AttentionKind::UniformHybrid);
  EXPECT_EQ(o.chunk_frames, 5);
  EXPECT_EQ(o.converted_blocks(4), (std::vector<int>{0, 1}));
  // to_yaml reads back to the same config.
  write_file(dir.file("back.yaml"), std::string(kToyModel) + c.to_yaml());
  EXPECT_EQ(load_attention(dir.file("back.yaml")).to_yaml(), c.to_yaml());
}

TEST(AttentionConfig, ShippedExampleLoads) {
  const AttentionConfig c = load_attention(std::string(REHYAT_SOURCE_DIR) + "/configs/models/toy-rehyat.yaml");
  EXPECT_EQ(c.kind, AttentionKind::Rehyat);
  EXPECT_EQ(c.converted_blocks(2), (std::vector<int>{0, 1}));
}

TEST(AttentionConfig, ConvertedBlocksRule) {
  AttentionConfig c;
  c.kind = AttentionKind::Rehyat;
  EXPECT_EQ(c.converted_blocks(3), (std::vector<int>{0, 1, 2}));  // neither: every block
  c.hybrid_block_count = 2;
  EXPECT_EQ(c.converted_blocks(5), (std::vector<int>{0, 1}));  // count, no ranking: the first N
  c.block_ranking = {4, 2, 0, 1, 3};
  EXPECT_EQ(c.converted_blocks(5), (std::vector<int>{2, 4}));  // count: the N best ranked
  c.hybrid_block_count = 0;
  c.hybrid_blocks = {3};
  EXPECT_EQ(c.converted_blocks(5), (std::vector<int>{3}));
  c.kind = AttentionKind::Softmax;
  EXPECT_TRUE(c.converted_blocks(5).empty());
}

TEST(AttentionConfig, BadValuesNameFileKeyAndLine) {
  TempDir dir;
  const std::string path = dir.file("bad.yaml");
  const std::string model(kToyModel);  // 10 lines; attention: is line 11
  write_file(path, model + "attention:\n  kind: rehyat\n  degree: 4\n  chunk_frames: 0\n  hybrid_blocks: [1, 7, 1]\n");
  expect_contains(error_message([&] { load_attention(path); }),
                  {"bad.yaml:13", "attention.degree", "bad.yaml:14", "attention.chunk_frames", "bad.yaml:15",
                   "block 7 is out of range", "block 1 is listed twice"});
  write_file(path, model + "attention:\n  kind: rehyat\n  feature_dim: 10\n  degree: 3\n");
  expect_contains(error_message([&] { load_attention(path); }), {"bad.yaml:13", "attention.feature_dim", "divisible"});
  write_file(path, model + "attention:\n  kind: rehyat\n  degree: 3\n");  // default Dp = 2*16 = 32, 32 % 3 != 0
  expect_contains(error_message([&] { load_attention(path); }), {"attention.feature_dim", "2 * head_dim"});
  write_file(path, model + "attention:\n  kind: hybrid\n");
  expect_contains(error_message([&] { load_attention(path); }), {"bad.yaml:12", "attention.kind", "hybrid"});
  write_file(path, model + "attention:\n  kind: rehyat\n  chunk_frame: 2\n");  // a typo is an error
  expect_contains(error_message([&] { load_attention(path); }), {"bad.yaml:13", "chunk_frame"});
  write_file(path, model + "attention:\n  hybrid_blocks: 2\n");  // the count has its own key
  expect_contains(error_message([&] { load_attention(path); }), {"bad.yaml:12", "attention.hybrid_blocks"});
  write_file(path, model + "attention:\n  hybrid_blocks: [1]\n  hybrid_block_count: 2\n  block_ranking: [0]\n");
  expect_contains(error_message([&] { load_attention(path); }), {"bad.yaml:13", "not both"});
  write_file(path, model + "attention:\n  hybrid_block_count: 2\n  block_ranking: [0]\n");
  expect_contains(error_message([&] { load_attention(path); }), {"bad.yaml:13", "attention.block_ranking", "fewer"});
  write_file(path, model);
  expect_contains(error_message([&] { load_attention(path, {"attention.overlap_frames=-1"}); }),
                  {"attention.overlap_frames=-1", "must be >= 0"});
}

// --- the core in a model ---------------------------------------------------------------------

WanConfig toy(int64_t layers = 4) {
  WanConfig c;
  c.dim = 32;
  c.ffn_dim = 48;
  c.freq_dim = 16;
  c.num_heads = 2;
  c.num_layers = layers;
  c.in_dim = 3;
  c.out_dim = 2;
  c.text_len = 5;
  c.text_dim = 6;
  return c;
}

struct Inputs {
  Tensor latents, timestep, context;
};
Inputs toy_inputs(const WanConfig& c, int64_t frames, uint64_t seed) {
  return {Tensor::randn({1, c.in_dim, frames, 4, 4}, seed, 0, DType::F64),
          Tensor::from_vector({370.0}, {1}, DType::F64), Tensor::randn({1, 4, c.text_dim}, seed + 1, 0, DType::F64)};
}

bool has_name(const layers::NamedTensors& params, const std::string& name, Shape* shape = nullptr) {
  for (const auto& [n, t] : params)
    if (n == name) {
      if (shape) *shape = t.shape();
      return true;
    }
  return false;
}

TEST(HybridCore, ApplyAttentionConfigPicksBlocksAndListsPhi) {
  WanModel model(toy(), Device::cpu(), DType::F32, 1);
  const size_t teacher_params = model.named_parameters().size();
  AttentionConfig c;
  c.kind = AttentionKind::Rehyat;
  c.hybrid_blocks = {1, 3};
  EXPECT_EQ(layers::apply_attention_config(model, c, 5), (std::vector<int>{1, 3}));
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(model.block(i).self_attn.core->kind(), (i == 1 || i == 3) ? "rehyat" : "softmax") << i;
    EXPECT_EQ(layers::hybrid_core(model, i) != nullptr, i == 1 || i == 3);
  }
  const layers::NamedTensors params = model.named_parameters();
  EXPECT_EQ(params.size(), teacher_params + 2 * 8);
  Shape shape;
  for (const std::string phi : {"phi_q", "phi_k"}) {
    const std::string p = "blocks.3.self_attn." + phi;
    ASSERT_TRUE(has_name(params, p + ".0.weight", &shape)) << p;
    EXPECT_EQ(shape, (Shape{2, 32, 16}));
    ASSERT_TRUE(has_name(params, p + ".0.bias", &shape));
    EXPECT_EQ(shape, (Shape{2, 32}));
    ASSERT_TRUE(has_name(params, p + ".2.weight", &shape));
    EXPECT_EQ(shape, (Shape{2, 32, 32}));
    ASSERT_TRUE(has_name(params, p + ".2.bias", &shape));
    EXPECT_EQ(shape, (Shape{2, 32}));
    EXPECT_FALSE(has_name(params, "blocks.0.self_attn." + phi + ".0.weight"));
  }
  // The φ modules are reachable for the recurrent engine.
  EXPECT_EQ(layers::hybrid_core(model, 1)->phi_k().weight1.shape(), (Shape{2, 32, 16}));
  // Count with a ranking; then back to the teacher.
  c.hybrid_blocks.clear();
  c.hybrid_block_count = 2;
  c.block_ranking = {2, 0};
  c.kind = AttentionKind::Linear;
  EXPECT_EQ(layers::apply_attention_config(model, c), (std::vector<int>{0, 2}));
  EXPECT_EQ(model.block(0).self_attn.core->kind(), "linear");
  EXPECT_EQ(model.block(3).self_attn.core->kind(), "softmax");
  c.kind = AttentionKind::Softmax;
  EXPECT_TRUE(layers::apply_attention_config(model, c).empty());
  EXPECT_EQ(model.named_parameters().size(), teacher_params);
  c.kind = AttentionKind::Rehyat;
  c.hybrid_block_count = 0;
  c.hybrid_blocks = {4};
  expect_contains(error_message([&] { layers::apply_attention_config(model, c); }), {"attention.hybrid_blocks", "4"});
}

TEST(HybridCore, ChunkCoveringAllFramesIsTheTeacherAndGradientsReachPhi) {
  const WanConfig c = toy(2);
  WanModel model(c, Device::cpu(), DType::F64, 1);
  randomize_parameters(model.named_parameters(), 2);
  const Inputs in = toy_inputs(c, 3, 3);
  const Tensor teacher = model.forward(in.latents, in.timestep, in.context, DType::F64);
  AttentionConfig ac;
  ac.kind = AttentionKind::Rehyat;
  ac.chunk_frames = 3;  // Tc >= T: every key is a softmax key (SPEC §3 check)
  layers::apply_attention_config(model, ac, 4);
  expect_close("rehyat Tc >= T", model.forward(in.latents, in.timestep, in.context, DType::F64), teacher, 1e-12);

  ac.chunk_frames = 1;
  ac.overlap_frames = 0;
  layers::apply_attention_config(model, ac, 4);
  const Tensor hybrid = model.forward(in.latents, in.timestep, in.context, DType::F64);
  EXPECT_GT(max_rel_error(hybrid, teacher), 1e-6);
  // Changing the options of an installed core changes its chunking.
  layers::hybrid_core(model, 0)->options().chunk_frames = 3;
  layers::hybrid_core(model, 1)->options().chunk_frames = 3;
  expect_close("options() Tc >= T", model.forward(in.latents, in.timestep, in.context, DType::F64), teacher, 1e-12);
  layers::hybrid_core(model, 0)->options().chunk_frames = 1;
  layers::hybrid_core(model, 1)->options().chunk_frames = 1;

  // f64 finite differences through the whole model into φ of block 1.
  layers::HybridAttentionCore& core = *layers::hybrid_core(model, 1);
  gradcheck("model wrt φ", [&] { return model.forward(in.latents, in.timestep, in.context, DType::F64); },
            {{"phi_q.0.weight", core.phi_q().weight1}, {"phi_q.2.bias", core.phi_q().bias2},
             {"phi_k.2.weight", core.phi_k().weight2}},
            4, 1e-5);
}

TEST(HybridCore, CheckpointRoundTripWithPhi) {
  TempDir dir;
  AttentionConfig ac;
  ac.kind = AttentionKind::Rehyat;
  ac.hybrid_blocks = {0, 2};
  WanModel source(toy(3), Device::cpu(), DType::F32, 1);
  layers::apply_attention_config(source, ac, 2);
  randomize_parameters(source.named_parameters(), 3);
  for (auto naming : {layers::CheckpointNaming::Wan, layers::CheckpointNaming::Diffusers}) {
    const std::string path = dir.file(std::string(layers::naming_name(naming)) + ".safetensors");
    layers::save_checkpoint(source, path, naming);
    WanModel target(toy(3), Device::cpu(), DType::F32, 9);
    layers::apply_attention_config(target, ac, 10);
    const layers::LoadResult r = layers::load_checkpoint(target, path);
    EXPECT_TRUE(r.missing.empty());
    const auto pa = source.named_parameters(), pb = target.named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (size_t i = 0; i < pa.size(); ++i) {
      ASSERT_EQ(pa[i].first, pb[i].first);
      EXPECT_EQ(pa[i].second.to_vector(), pb[i].second.to_vector()) << pa[i].first;
    }
  }
  // A teacher checkpoint: strict loading names the φ tensors; allow_missing keeps their init.
  WanModel teacher(toy(3), Device::cpu(), DType::F32, 1);
  const std::string teacher_path = dir.file("teacher.safetensors");
  layers::save_checkpoint(teacher, teacher_path);
  WanModel student(toy(3), Device::cpu(), DType::F32, 1);
  layers::apply_attention_config(student, ac, 2);
  expect_contains(error_message([&] { layers::load_checkpoint(student, teacher_path); }),
                  {"teacher.safetensors", "blocks.0.self_attn.phi_q.0.weight", "blocks.2.self_attn.phi_k.2.bias"});
  const layers::LoadResult r = layers::load_checkpoint(student, teacher_path, {.allow_missing = true});
  EXPECT_EQ(r.missing.size(), 16u);
}

}  // namespace
}  // namespace rehyat::testing
