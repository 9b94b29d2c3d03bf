// The op catalogue shared by the CPU-vs-device harness (test_ops.cpp) and the f64
// finite-difference gradient checks (test_gradcheck.cpp). Each case builds random f64
// CPU inputs for a given size class and applies one differentiable op (or a tiny
// composition that exercises one op's particular path, e.g. a transposed matmul operand).
#pragma once

#include <functional>
#include <random>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "core/tensor.h"

namespace rehyat::testing {

enum class Size { Small, Large };  // Small: gradcheck-sized; Large: harness-sized

struct InputSpec {
  Shape shape;
  enum Kind { Normal, Positive, Index } kind = Normal;
  int64_t index_range = 0;  // for Index inputs: values in [0, index_range)
  bool differentiable = true;
};

struct OpCase {
  std::string name;
  std::function<std::vector<InputSpec>(std::mt19937&, Size)> inputs;
  std::function<Tensor(const std::vector<Tensor>&)> fn;
  // Tolerance multiplier for ops whose error grows (long reductions, matmul).
  double tolerance_scale = 1.0;
  bool gradcheck = true;  // finite differences are meaningful for this case
};

// Random dimension in [lo, hi] (sizes deliberately not multiples of tile sizes).
inline int64_t rand_dim(std::mt19937& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

inline Shape rand_shape(std::mt19937& rng, Size size, int rank) {
  Shape s;
  for (int i = 0; i < rank; ++i) s.push_back(size == Size::Small ? rand_dim(rng, 1, 4) : rand_dim(rng, 3, 40));
  return s;
}

inline InputSpec normal(Shape s) { return {std::move(s), InputSpec::Normal, 0, true}; }
inline InputSpec positive(Shape s) { return {std::move(s), InputSpec::Positive, 0, true}; }
inline InputSpec index_input(Shape s, int64_t range) { return {std::move(s), InputSpec::Index, range, false}; }

inline std::vector<OpCase> op_cases() {
  std::vector<OpCase> cases;
  auto unary = [&](std::string name, std::function<Tensor(const Tensor&)> f, bool pos = false) {
    cases.push_back({name,
                     [pos](std::mt19937& rng, Size sz) {
                       Shape s = rand_shape(rng, sz, 3);
                       return std::vector<InputSpec>{pos ? positive(s) : normal(s)};
                     },
                     [f](const std::vector<Tensor>& in) { return f(in[0]); }});
  };
  auto binary = [&](std::string name, std::function<Tensor(const Tensor&, const Tensor&)> f, bool pos_b) {
    // Broadcasting: b drops the leading dim and has a size-1 middle dim.
    cases.push_back({name,
                     [pos_b](std::mt19937& rng, Size sz) {
                       Shape s = rand_shape(rng, sz, 3);
                       Shape sb = {1, s[2]};
                       return std::vector<InputSpec>{normal(s), pos_b ? positive(sb) : normal(sb)};
                     },
                     [f](const std::vector<Tensor>& in) { return f(in[0], in[1]); }});
  };
  binary("add", [](const Tensor& a, const Tensor& b) { return add(a, b); }, false);
  binary("sub", [](const Tensor& a, const Tensor& b) { return sub(b, a); }, false);
  binary("mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }, false);
  binary("div", [](const Tensor& a, const Tensor& b) { return div(a, b); }, true);
  unary("affine", [](const Tensor& x) { return affine(x, -1.75, 0.5); });
  unary("exp", [](const Tensor& x) { return exp(x); });
  unary("log", [](const Tensor& x) { return natural_log(x); }, true);
  unary("sqrt", [](const Tensor& x) { return sqrt(x); }, true);
  unary("rsqrt", [](const Tensor& x) { return rsqrt(x); }, true);
  unary("square", [](const Tensor& x) { return square(x); });
  unary("pow", [](const Tensor& x) { return pow(x, 2.5); }, true);
  unary("pow_negative", [](const Tensor& x) { return pow(x, -1.5); }, true);
  unary("gelu", [](const Tensor& x) { return gelu(mul(x, 3.0)); });
  unary("silu", [](const Tensor& x) { return silu(mul(x, 3.0)); });
  unary("softplus", [](const Tensor& x) { return softplus(mul(x, 8.0)); });  // reaches the linear branch
  unary("sigmoid", [](const Tensor& x) { return sigmoid(mul(x, 3.0)); });

  auto reduce = [&](std::string name, std::function<Tensor(const Tensor&)> f, double tol = 1.0) {
    cases.push_back({name,
                     [](std::mt19937& rng, Size sz) {
                       Shape s = rand_shape(rng, sz, 3);
                       if (sz == Size::Large) s[1] = rand_dim(rng, 200, 700);  // a long reduced axis
                       return std::vector<InputSpec>{normal(s)};
                     },
                     [f](const std::vector<Tensor>& in) { return f(in[0]); }, tol});
  };
  reduce("sum_dim0", [](const Tensor& x) { return sum(x, 0); });
  reduce("sum_dim1_keepdim", [](const Tensor& x) { return sum(x, 1, true); }, 4.0);
  reduce("sum_last", [](const Tensor& x) { return sum(x, -1); });
  reduce("sum_all", [](const Tensor& x) { return sum(x); }, 8.0);
  reduce("mean_dim1", [](const Tensor& x) { return mean(x, 1); });
  reduce("max_dim1", [](const Tensor& x) { return max(x, 1); });
  reduce("max_last", [](const Tensor& x) { return max(x, -1, true); });
  reduce("softmax_last", [](const Tensor& x) { return softmax(mul(x, 2.0), -1); });
  reduce("softmax_dim1", [](const Tensor& x) { return softmax(x, 1); });

  auto rows = [](std::mt19937& rng, Size sz) {
    // Large: cols on the vector path (multiple of 8) and off it (odd), and > 4096.
    int64_t r = sz == Size::Small ? rand_dim(rng, 1, 3) : rand_dim(rng, 5, 33);
    int64_t c = sz == Size::Small ? rand_dim(rng, 2, 6) : std::vector<int64_t>{1536, 77, 4104, 8}[rng() % 4];
    return Shape{2, r, c};
  };
  cases.push_back({"layer_norm", [rows](std::mt19937& rng, Size sz) {
                     Shape s = rows(rng, sz);
                     return std::vector<InputSpec>{normal(s)};
                   },
                   [](const std::vector<Tensor>& in) { return layer_norm(affine(in[0], 2.0, 0.5), {}, {}, 1e-6); }});
  cases.push_back({"layer_norm_affine", [rows](std::mt19937& rng, Size sz) {
                     Shape s = rows(rng, sz);
                     return std::vector<InputSpec>{normal(s), normal({s[2]}), normal({s[2]})};
                   },
                   [](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], in[2], 1e-6); }, 2.0});
  cases.push_back({"rms_norm", [rows](std::mt19937& rng, Size sz) {
                     Shape s = rows(rng, sz);
                     return std::vector<InputSpec>{normal(s)};
                   },
                   [](const std::vector<Tensor>& in) { return rms_norm(in[0], {}, 1e-6); }});
  cases.push_back({"rms_norm_weight", [rows](std::mt19937& rng, Size sz) {
                     Shape s = rows(rng, sz);
                     return std::vector<InputSpec>{normal(s), normal({s[2]})};
                   },
                   [](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1], 1e-6); }, 2.0});

  auto mm_dims = [](std::mt19937& rng, Size sz) {
    if (sz == Size::Small) return Shape{rand_dim(rng, 1, 4), rand_dim(rng, 1, 4), rand_dim(rng, 1, 4)};
    return Shape{rand_dim(rng, 17, 150), rand_dim(rng, 9, 300), rand_dim(rng, 5, 130)};
  };
  cases.push_back({"matmul", [mm_dims](std::mt19937& rng, Size sz) {
                     Shape d = mm_dims(rng, sz);
                     return std::vector<InputSpec>{normal({d[0], d[1]}), normal({d[1], d[2]})};
                   },
                   [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, 4.0});
  cases.push_back({"matmul_batched", [mm_dims](std::mt19937& rng, Size sz) {
                     Shape d = mm_dims(rng, sz);
                     return std::vector<InputSpec>{normal({2, 3, d[0], d[1]}), normal({2, 3, d[1], d[2]})};
                   },
                   [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, 4.0});
  cases.push_back({"matmul_broadcast_transposed", [mm_dims](std::mt19937& rng, Size sz) {
                     Shape d = mm_dims(rng, sz);
                     return std::vector<InputSpec>{normal({3, d[0], d[1]}), normal({d[2], d[1]})};
                   },
                   [](const std::vector<Tensor>& in) { return matmul(in[0], in[1].transpose(0, 1)); }, 4.0});
  cases.push_back({"linear", [mm_dims](std::mt19937& rng, Size sz) {
                     Shape d = mm_dims(rng, sz);
                     return std::vector<InputSpec>{normal({2, d[0], d[1]}), normal({d[2], d[1]}), normal({d[2]})};
                   },
                   [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); }, 4.0});

  cases.push_back({"concat", [](std::mt19937& rng, Size sz) {
                     Shape a = rand_shape(rng, sz, 3), b = a;
                     b[1] = sz == Size::Small ? 2 : rand_dim(rng, 1, 50);
                     return std::vector<InputSpec>{normal(a), normal(b), normal(a)};
                   },
                   [](const std::vector<Tensor>& in) { return concat(in, 1); }});
  cases.push_back({"index_select", [](std::mt19937& rng, Size sz) {
                     Shape s = rand_shape(rng, sz, 3);
                     return std::vector<InputSpec>{normal(s), index_input({s[1] + 3}, s[1])};
                   },
                   [](const std::vector<Tensor>& in) { return index_select(in[0], 1, in[1]); }});
  cases.push_back({"gather", [](std::mt19937& rng, Size sz) {
                     Shape s = rand_shape(rng, sz, 3), si = s;
                     si[2] = s[2] + 2;
                     return std::vector<InputSpec>{normal(s), index_input(si, s[2])};
                   },
                   [](const std::vector<Tensor>& in) { return gather(in[0], 2, in[1]); }});
  cases.push_back({"views", [](std::mt19937& rng, Size sz) {
                     return std::vector<InputSpec>{normal(rand_shape(rng, sz, 4))};
                   },
                   [](const std::vector<Tensor>& in) {
                     Tensor x = in[0].permute({2, 0, 3, 1});
                     x = x.reshape({x.size(0), -1});  // needs a copy
                     return mul(x.slice(1, 0, std::max<int64_t>(1, x.size(1) - 1)), 1.5);
                   }});
  cases.push_back({"cast_roundtrip", [](std::mt19937& rng, Size sz) {
                     return std::vector<InputSpec>{normal(rand_shape(rng, sz, 2))};
                   },
                   [](const std::vector<Tensor>& in) { return mul(in[0].to(DType::F32), 1.0).to(in[0].dtype()); },
                   1.0, /*gradcheck=*/false});  // the f32 detour is below finite-difference resolution
  cases.push_back({"mse_loss", [](std::mt19937& rng, Size sz) {
                     Shape s = rand_shape(rng, sz, 3);
                     return std::vector<InputSpec>{normal(s), normal(s)};
                   },
                   [](const std::vector<Tensor>& in) { return mse_loss(in[0], in[1]); }, 4.0});
  return cases;
}

// Builds the f64 CPU inputs of a case from its specs (Philox, seeded).
inline std::vector<Tensor> make_inputs(const std::vector<InputSpec>& specs, uint64_t seed) {
  std::vector<Tensor> out;
  for (size_t i = 0; i < specs.size(); ++i) {
    const InputSpec& s = specs[i];
    uint64_t stream = seed * 7919 + i;
    if (s.kind == InputSpec::Index) {
      Tensor u = Tensor::rand(s.shape, stream, 0, DType::F64);
      std::vector<double> v = u.to_vector();
      for (double& x : v) x = std::min(double(s.index_range - 1), std::floor(x * double(s.index_range)));
      out.push_back(Tensor::from_vector(v, s.shape, DType::I64));
    } else if (s.kind == InputSpec::Positive) {
      out.push_back(Tensor::rand(s.shape, stream, 0, DType::F64, Device::cpu(), 0.5, 2.0));
    } else {
      out.push_back(Tensor::randn(s.shape, stream, 0, DType::F64));
    }
  }
  return out;
}

}  // namespace rehyat::testing
