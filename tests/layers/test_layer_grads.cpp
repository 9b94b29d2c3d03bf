// Every layer of the Wan2.1 DiT, run through two checks:
// - f64 finite differences on the CPU (inputs and parameters, sampled elements);
// - CPU against CUDA in f32, forward and every gradient (skips without a GPU), at head
//   dims 48 (generic attention path) and 64 (fast kernels).
#include <gtest/gtest.h>

#include <memory>

#include "autograd/ops.h"
#include "layer_test_util.h"
#include "layers/embeddings.h"
#include "layers/wan_block.h"
#include "layers/wan_model.h"

namespace rehyat::testing {
namespace {

using layers::NamedTensors;
using layers::ParamFactory;
using layers::Precision;

// Sizes of one instantiation. Latents are [B, in, F, 2H, 2W] (patch 1x2x2).
struct Dims {
  int64_t dim, heads, ffn, text_dim, text_len, context_len, in, out, freq;
  int64_t batch, frames, height, width;  // token grid after patching
  int64_t tokens() const { return frames * height * width; }
  layers::TokenGrid grid() const { return {frames, height, width, 0}; }
  layers::WanConfig config() const {
    layers::WanConfig c;
    c.dim = dim;
    c.ffn_dim = ffn;
    c.freq_dim = freq;
    c.num_heads = heads;
    c.num_layers = 2;
    c.in_dim = in;
    c.out_dim = out;
    c.text_len = text_len;
    c.text_dim = text_dim;
    return c;
  }
};

const Dims kSmall{12, 2, 20, 10, 5, 3, 3, 2, 8, 2, 2, 2, 3};          // head dim 6, gradchecks
const Dims kD48{96, 2, 160, 24, 12, 9, 4, 4, 32, 2, 3, 2, 3};        // head dim 48
const Dims kD64{128, 2, 192, 16, 10, 7, 4, 3, 64, 2, 3, 4, 3};       // head dim 64

struct Instance {
  NamedTensors params;                              // the layer's parameters
  std::vector<std::pair<std::string, Tensor>> inputs;  // differentiable inputs
  std::function<Tensor(DType compute)> run;
  std::shared_ptr<void> owner;                      // keeps the module alive
};

using Make = std::function<Instance(const Dims&, Device, DType)>;
struct LayerCase {
  std::string name;
  Make make;
};

// Builds a module of type M from `build`, randomizes its parameters, and wires `run`.
template <typename M>
Instance instance(std::shared_ptr<M> module, NamedTensors params,
                  std::vector<std::pair<std::string, Tensor>> inputs, std::function<Tensor(DType)> run) {
  randomize_parameters(params, 11);
  return Instance{std::move(params), std::move(inputs), std::move(run), module};
}

Tensor timesteps(const Dims& d, Device device) {
  std::vector<double> t;
  for (int64_t b = 0; b < d.batch; ++b) t.push_back(3.7 + 401.9 * double(b));
  return Tensor::from_vector(t, {d.batch}, DType::F32, device);
}

std::vector<LayerCase> layer_cases() {
  std::vector<LayerCase> cases;
  cases.push_back({"rope", [](const Dims& d, Device dev, DType dt) {
                     Tensor x = random_input({d.batch, d.tokens(), d.heads, d.dim / d.heads}, 21, dt, dev);
                     auto none = std::make_shared<int>(0);
                     return instance(none, {}, {{"x", x}}, [d, x, dev](DType c) {
                       const auto tables = layers::RopeTables::build(d.dim / d.heads, d.grid(),
                                                                     Precision::for_compute(c).high, dev);
                       return layers::apply_rope(layers::cast(x, c), tables);
                     });
                   }});
  cases.push_back({"patch_embedding", [](const Dims& d, Device dev, DType dt) {
                     auto m = std::make_shared<layers::PatchEmbedding>(ParamFactory{dev, dt, 1}, d.in, d.dim,
                                                                       layers::PatchSize{1, 2, 2});
                     NamedTensors params;
                     m->collect("patch_embedding", params);
                     Tensor lat = random_input({d.batch, d.in, d.frames, 2 * d.height, 2 * d.width}, 22, dt, dev);
                     return instance(m, params, {{"latents", lat}},
                                     [m, lat](DType c) { return m->forward(lat, Precision::for_compute(c)); });
                   }});
  cases.push_back({"time_embedding", [](const Dims& d, Device dev, DType dt) {
                     auto m = std::make_shared<layers::TimeEmbedding>(ParamFactory{dev, dt, 1}, d.freq, d.dim);
                     NamedTensors params;
                     m->collect(params);
                     Tensor t = timesteps(d, dev);
                     return instance(m, params, {}, [m, t, dev](DType c) {
                       const auto out = m->forward(t, Precision::for_compute(c), dev);
                       return concat({out.e.unsqueeze(1), out.e0}, 1);  // [B, 7, D]
                     });
                   }});
  cases.push_back({"text_embedding", [](const Dims& d, Device dev, DType dt) {
                     auto m = std::make_shared<layers::TextEmbedding>(ParamFactory{dev, dt, 1}, d.text_dim, d.dim,
                                                                      d.text_len);
                     NamedTensors params;
                     m->collect(params);
                     Tensor ctx = random_input({d.batch, d.context_len, d.text_dim}, 23, dt, dev);
                     return instance(m, params, {{"context", ctx}},
                                     [m, ctx](DType c) { return m->forward(ctx, Precision::for_compute(c)); });
                   }});
  cases.push_back({"modulation", [](const Dims& d, Device dev, DType dt) {
                     auto m = std::make_shared<layers::WanBlock>(ParamFactory{dev, dt, 1}, "blocks.0", d.dim, d.ffn,
                                                                 d.heads, 1e-6);
                     Tensor e0 = random_input({d.batch, 6, d.dim}, 24, dt, dev);
                     return instance(m, {{"blocks.0.modulation", m->modulation}}, {{"e0", e0}}, [m, e0](DType c) {
                       return concat(m->modulation_chunks(e0, Precision::for_compute(c)), 1);
                     });
                   }});
  cases.push_back({"self_attention", [](const Dims& d, Device dev, DType dt) {
                     auto m = std::make_shared<layers::SelfAttention>(ParamFactory{dev, dt, 1}, "blocks.0.self_attn",
                                                                      d.dim, d.heads, 1e-6);
                     NamedTensors params;
                     m->collect("blocks.0.self_attn", params);
                     Tensor x = random_input({d.batch, d.tokens(), d.dim}, 25, dt, dev);
                     return instance(m, params, {{"x", x}}, [m, x, d, dev](DType c) {
                       const Precision p = Precision::for_compute(c);
                       return m->forward(x, layers::RopeTables::build(d.dim / d.heads, d.grid(), p.high, dev), p);
                     });
                   }});
  cases.push_back({"cross_attention", [](const Dims& d, Device dev, DType dt) {
                     auto m = std::make_shared<layers::CrossAttention>(ParamFactory{dev, dt, 1},
                                                                       "blocks.0.cross_attn", d.dim, d.heads, 1e-6);
                     NamedTensors params;
                     m->collect("blocks.0.cross_attn", params);
                     Tensor x = random_input({d.batch, d.tokens(), d.dim}, 26, dt, dev);
                     Tensor ctx = random_input({d.batch, d.text_len, d.dim}, 27, dt, dev);
                     return instance(m, params, {{"x", x}, {"context", ctx}}, [m, x, ctx](DType c) {
                       return m->forward(x, ctx, Precision::for_compute(c));
                     });
                   }});
  cases.push_back({"ffn", [](const Dims& d, Device dev, DType dt) {
                     auto m = std::make_shared<layers::GeluMLP>(ParamFactory{dev, dt, 1}, "blocks.0.ffn", d.dim,
                                                                d.ffn, d.dim);
                     NamedTensors params;
                     m->collect("blocks.0.ffn", params);
                     Tensor x = random_input({d.batch, d.tokens(), d.dim}, 28, dt, dev);
                     return instance(m, params, {{"x", x}}, [m, x](DType c) { return m->forward(x, c); });
                   }});
  cases.push_back({"block", [](const Dims& d, Device dev, DType dt) {
                     auto m = std::make_shared<layers::WanBlock>(ParamFactory{dev, dt, 1}, "blocks.0", d.dim, d.ffn,
                                                                 d.heads, 1e-6);
                     NamedTensors params;
                     m->collect("blocks.0", params);
                     Tensor x = random_input({d.batch, d.tokens(), d.dim}, 29, dt, dev);
                     Tensor e0 = random_input({d.batch, 6, d.dim}, 30, dt, dev);
                     Tensor ctx = random_input({d.batch, d.text_len, d.dim}, 31, dt, dev);
                     return instance(m, params, {{"x", x}, {"e0", e0}, {"context", ctx}},
                                     [m, x, e0, ctx, d, dev](DType c) {
                                       const Precision p = Precision::for_compute(c);
                                       const auto rope = layers::RopeTables::build(d.dim / d.heads, d.grid(), p.high, dev);
                                       return m->forward(x, e0, layers::cast(ctx, c), rope, p);
                                     });
                   }});
  cases.push_back({"head", [](const Dims& d, Device dev, DType dt) {
                     auto m = std::make_shared<layers::Head>(ParamFactory{dev, dt, 1}, d.dim, d.out * 4, 1e-6);
                     NamedTensors params;
                     m->collect(params);
                     Tensor x = random_input({d.batch, d.tokens(), d.dim}, 32, dt, dev);
                     Tensor e = random_input({d.batch, d.dim}, 33, dt, dev);
                     return instance(m, params, {{"x", x}, {"e", e}},
                                     [m, x, e](DType c) { return m->forward(x, e, Precision::for_compute(c)); });
                   }});
  cases.push_back({"unpatchify", [](const Dims& d, Device dev, DType dt) {
                     Tensor y = random_input({d.batch, d.tokens(), 4 * d.out}, 34, dt, dev);
                     auto none = std::make_shared<int>(0);
                     return instance(none, {}, {{"y", y}}, [d, y](DType c) {
                       return layers::unpatchify(layers::cast(y, c), d.grid(), {1, 2, 2}, d.out);
                     });
                   }});
  cases.push_back({"model", [](const Dims& d, Device dev, DType dt) {
                     auto m = std::make_shared<layers::WanModel>(d.config(), dev, dt, 5);
                     Tensor lat = random_input({d.batch, d.in, d.frames, 2 * d.height, 2 * d.width}, 35, dt, dev);
                     Tensor ctx = random_input({d.batch, d.context_len, d.text_dim}, 36, dt, dev);
                     Tensor t = timesteps(d, dev);
                     return instance(m, m->named_parameters(), {{"latents", lat}, {"context", ctx}},
                                     [m, lat, ctx, t](DType c) { return m->forward(lat, t, ctx, c); });
                   }});
  return cases;
}

std::vector<std::string> case_names() {
  std::vector<std::string> names;
  for (const auto& c : layer_cases()) names.push_back(c.name);
  return names;
}

LayerCase find_case(const std::string& name) {
  for (auto& c : layer_cases())
    if (c.name == name) return c;
  throw std::runtime_error("no layer case " + name);
}

class LayerGradCheck : public ::testing::TestWithParam<std::string> {};

TEST_P(LayerGradCheck, F64FiniteDifferencesOnCpu) {
  const LayerCase c = find_case(GetParam());
  Instance inst = c.make(kSmall, Device::cpu(), DType::F64);
  std::vector<std::pair<std::string, Tensor>> wrt = inst.inputs;
  for (const auto& p : inst.params) wrt.push_back(p);
  const int samples = c.name == "model" ? 3 : 6;
  gradcheck(c.name, [&] { return inst.run(DType::F64); }, wrt, samples);
}

INSTANTIATE_TEST_SUITE_P(Layers, LayerGradCheck, ::testing::ValuesIn(case_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// CPU vs CUDA in f32: forward and the gradients of every input and parameter.
class LayerCpuVsCuda : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(LayerCpuVsCuda, ForwardAndGradientsMatch) {
  const auto [name, dims_index] = GetParam();
  const Dims& d = dims_index == 0 ? kD48 : kD64;
  REHYAT_SKIP_WITHOUT_GPU(name + " CPU vs CUDA");
  const LayerCase c = find_case(name);
  Instance cpu = c.make(d, Device::cpu(), DType::F32);
  Instance gpu = c.make(d, Device::cuda(0), DType::F32);
  Tensor out_cpu = cpu.run(DType::F32), out_gpu = gpu.run(DType::F32);
  ASSERT_TRUE(out_gpu.device().is_cuda()) << name;
  expect_close(name + " forward", out_gpu, out_cpu, 1e-4);
  const Tensor g = Tensor::randn(out_cpu.shape(), 77, 0, DType::F32);
  out_cpu.backward(g);
  out_gpu.backward(g.to(Device::cuda(0)));
  for (size_t i = 0; i < cpu.inputs.size(); ++i)
    expect_close(name + " grad of " + cpu.inputs[i].first, gpu.inputs[i].second.grad(), cpu.inputs[i].second.grad(),
                 1e-3);
  for (size_t i = 0; i < cpu.params.size(); ++i)
    expect_close(name + " grad of " + cpu.params[i].first, gpu.params[i].second.grad(), cpu.params[i].second.grad(),
                 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Layers, LayerCpuVsCuda,
                         ::testing::Combine(::testing::ValuesIn(case_names()), ::testing::Values(0, 1)),
                         [](const ::testing::TestParamInfo<std::tuple<std::string, int>>& info) {
                           return std::get<0>(info.param) + (std::get<1>(info.param) == 0 ? "_d48" : "_d64");
                         });

}  // namespace
}  // namespace rehyat::testing
