// Softmax attention: validation and routing of the raw kernels, the plain-loop CPU
// reference, the autograd op (its backward right below the forward) and the composite
// reference built from autograd primitives.
//
// CPU reference, per (batch, head, query row i) over the row's key range R_i:
//   s_ij = scale * q_i.k_j, m_i = max_j s_ij, lse_i = m_i + log sum_j exp(s_ij - m_i),
//   o_i = sum_j exp(s_ij - lse_i) v_j                                (all assigned)
// backward (f64 accumulation, then assigned):
//   D_i = dO_i.o_i, P_ij = exp(s_ij - lse_i), dS_ij = P_ij (dO_i.v_j - D_i),
//   dq_i = scale sum_j dS_ij k_j, dk_j = scale sum_i dS_ij q_i, dv_j = sum_i P_ij dO_i.
#include "attention/softmax_attention.h"

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/softmax_attention_cuda.h"
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/ops/matmul.h"

namespace rehyat::attention {

TokenRange key_tokens_for_query(const KeyRange& keys, int64_t query, int64_t num_keys) {
  if (!keys.chunked()) return {0, num_keys};
  const int64_t frames = num_keys / keys.frame_tokens;
  const int64_t chunk = (query / keys.frame_tokens) / keys.chunk_frames;
  const int64_t first = std::max<int64_t>(chunk * keys.chunk_frames - keys.overlap_frames, 0);
  const int64_t last = std::min<int64_t>((chunk + 1) * keys.chunk_frames, frames);
  return {first * keys.frame_tokens, last * keys.frame_tokens};
}

void check_key_range(const char* op, const KeyRange& keys, int64_t num_queries, int64_t num_keys) {
  REHYAT_CHECK(keys.chunk_frames >= 0 && keys.overlap_frames >= 0,
               "{}: chunk_frames {} and overlap_frames {} must be non-negative", op, keys.chunk_frames,
               keys.overlap_frames);
  if (!keys.chunked()) return;
  REHYAT_CHECK(keys.frame_tokens > 0, "{}: chunked key range needs frame_tokens > 0, got {}", op,
               keys.frame_tokens);
  REHYAT_CHECK(num_queries == num_keys, "{}: chunked key range needs self-attention (Nq == Nk), got {} and {}",
               op, num_queries, num_keys);
  REHYAT_CHECK(num_keys % keys.frame_tokens == 0, "{}: {} tokens are not whole frames of {} tokens", op, num_keys,
               keys.frame_tokens);
}

int64_t scored_pairs(const KeyRange& keys, int64_t num_queries, int64_t num_keys) {
  if (!keys.chunked()) return num_queries * num_keys;
  int64_t pairs = 0;
  for (int64_t f = 0; f * keys.frame_tokens < num_queries; ++f) {
    const TokenRange r = key_tokens_for_query(keys, f * keys.frame_tokens, num_keys);
    pairs += keys.frame_tokens * (r.end - r.begin);
  }
  return pairs;
}

double resolved_scale(const SoftmaxAttentionOptions& options, int64_t head_dim) {
  return options.scale != 0.0 ? options.scale : 1.0 / std::sqrt(double(head_dim));
}

namespace kernels {

DType stats_dtype(DType input) { return input == DType::F64 ? DType::F64 : DType::F32; }

namespace {

struct Dims {
  int64_t batch, queries, keys, heads, head_dim;
};

// Checks q/k/v (and optional others of q's shape) and returns the problem size.
Dims check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const KeyRange& keys) {
  REHYAT_CHECK(q.defined() && k.defined() && v.defined(), "{}: q, k and v must be defined", op);
  REHYAT_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "{}: q {}, k {}, v {} must be [B, N, H, d]", op,
               q.str(), k.str(), v.str());
  REHYAT_CHECK(k.shape() == v.shape(), "{}: k {} and v {} differ", op, k.str(), v.str());
  REHYAT_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3),
               "{}: q {} and k {} disagree on batch, heads or head dim", op, q.str(), k.str());
  REHYAT_CHECK(is_floating(q.dtype()) && q.dtype() == k.dtype() && q.dtype() == v.dtype(),
               "{}: q {}, k {}, v {} must share one floating dtype", op, q.str(), k.str(), v.str());
  REHYAT_CHECK(q.device() == k.device() && q.device() == v.device(), "{}: q {}, k {}, v {} on different devices",
               op, q.str(), k.str(), v.str());
  for (const Tensor* t : {&q, &k, &v})
    REHYAT_CHECK(t->stride(3) == 1 || t->size(3) == 1, "{}: {} needs a unit stride on the head dim", op, t->str());
  REHYAT_CHECK(k.size(1) > 0, "{}: no keys ({})", op, k.str());
  check_key_range(op, keys, q.size(1), k.size(1));
  return {q.size(0), q.size(1), k.size(1), q.size(2), q.size(3)};
}

void check_output(const char* op, const Tensor& t, const Shape& shape, DType dtype, Device device,
                  const char* name) {
  REHYAT_CHECK(t.defined() && t.shape() == shape && t.dtype() == dtype && t.device() == device &&
                   t.is_contiguous(),
               "{}: {} must be a contiguous {} {} on {}, got {}", op, name, dtype_name(dtype), shape_str(shape),
               device.str(), t.defined() ? t.str() : std::string("undefined"));
}

// Element (b, n, h, 0) of a [B, N, H, d] tensor with unit stride on d.
template <typename T>
struct Rows {
  const T* base;
  int64_t sb, sn, sh;
  explicit Rows(const Tensor& t)
      : base(static_cast<const T*>(t.data_ptr())), sb(t.stride(0)), sn(t.stride(1)), sh(t.stride(2)) {}
  const T* row(int64_t b, int64_t n, int64_t h) const { return base + b * sb + n * sn + h * sh; }
};

template <typename T>
void cpu_forward(Tensor& o, Tensor& lse, Tensor& row_max, const Tensor& q, const Tensor& k, const Tensor& v,
                 double scale, const KeyRange& keys, const Dims& n) {
  const Rows<T> qr(q), kr(k), vr(v);
  T* op = static_cast<T*>(o.data_ptr());
  std::vector<double> s(size_t(n.keys)), acc(size_t(n.head_dim));
  for (int64_t b = 0; b < n.batch; ++b)
    for (int64_t h = 0; h < n.heads; ++h)
      for (int64_t i = 0; i < n.queries; ++i) {
        const TokenRange r = key_tokens_for_query(keys, i, n.keys);
        const T* qi = qr.row(b, i, h);
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = r.begin; j < r.end; ++j) {
          const T* kj = kr.row(b, j, h);
          double dot = 0;
          for (int64_t e = 0; e < n.head_dim; ++e) dot += to_double(qi[e]) * to_double(kj[e]);
          s[size_t(j)] = scale * dot;
          mx = std::max(mx, s[size_t(j)]);
        }
        double total = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = r.begin; j < r.end; ++j) {
          const double p = std::exp(s[size_t(j)] - mx);
          total += p;
          const T* vj = vr.row(b, j, h);
          for (int64_t e = 0; e < n.head_dim; ++e) acc[size_t(e)] += p * to_double(vj[e]);
        }
        T* oi = op + ((b * n.queries + i) * n.heads + h) * n.head_dim;
        for (int64_t e = 0; e < n.head_dim; ++e) oi[e] = from_double<T>(acc[size_t(e)] / total);
        const int64_t stat = (b * n.heads + h) * n.queries + i;
        const double lse_i = mx + std::log(total);
        if (lse.dtype() == DType::F64) {
          lse.data<double>()[stat] = lse_i;
          row_max.data<double>()[stat] = mx;
        } else {
          lse.data<float>()[stat] = float(lse_i);
          row_max.data<float>()[stat] = float(mx);
        }
      }
}

template <typename T>
void cpu_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& d_o, const Tensor& q, const Tensor& k,
                  const Tensor& v, const Tensor& o, const Tensor& lse, double scale, const KeyRange& keys,
                  const Dims& n) {
  const Rows<T> qr(q), kr(k), vr(v), dor(d_o), orow(o);
  const int64_t d = n.head_dim;
  // f64 accumulators, [B, N, H, d] like the outputs.
  std::vector<double> gq(size_t(dq.numel()), 0.0), gk(size_t(dk.numel()), 0.0), gv(size_t(dv.numel()), 0.0);
  for (int64_t b = 0; b < n.batch; ++b)
    for (int64_t h = 0; h < n.heads; ++h)
      for (int64_t i = 0; i < n.queries; ++i) {
        const TokenRange r = key_tokens_for_query(keys, i, n.keys);
        const T* qi = qr.row(b, i, h);
        const T* doi = dor.row(b, i, h);
        const T* oi = orow.row(b, i, h);
        const int64_t stat = (b * n.heads + h) * n.queries + i;
        const double lse_i = lse.dtype() == DType::F64 ? lse.data<double>()[stat] : lse.data<float>()[stat];
        double delta = 0;
        for (int64_t e = 0; e < d; ++e) delta += to_double(doi[e]) * to_double(oi[e]);
        double* gqi = &gq[size_t(((b * n.queries + i) * n.heads + h) * d)];
        for (int64_t j = r.begin; j < r.end; ++j) {
          const T* kj = kr.row(b, j, h);
          const T* vj = vr.row(b, j, h);
          double dot = 0, dp = 0;
          for (int64_t e = 0; e < d; ++e) {
            dot += to_double(qi[e]) * to_double(kj[e]);
            dp += to_double(doi[e]) * to_double(vj[e]);
          }
          const double p = std::exp(scale * dot - lse_i);
          const double ds = p * (dp - delta);
          double* gkj = &gk[size_t(((b * n.keys + j) * n.heads + h) * d)];
          double* gvj = &gv[size_t(((b * n.keys + j) * n.heads + h) * d)];
          for (int64_t e = 0; e < d; ++e) {
            gqi[e] += scale * ds * to_double(kj[e]);
            gkj[e] += scale * ds * to_double(qi[e]);
            gvj[e] += p * to_double(doi[e]);
          }
        }
      }
  auto store = [](Tensor& t, const std::vector<double>& src) {
    T* p = static_cast<T*>(t.data_ptr());
    for (size_t e = 0; e < src.size(); ++e) p[e] = from_double<T>(src[e]);
  };
  store(dq, gq);
  store(dk, gk);
  store(dv, gv);
}

}  // namespace

void softmax_attention_forward(Tensor& o, Tensor& lse, Tensor& row_max, const Tensor& q, const Tensor& k,
                               const Tensor& v, double scale, const KeyRange& keys) {
  const char* op = "softmax_attention_forward";
  const Dims n = check_inputs(op, q, k, v, keys);
  const DType stats = stats_dtype(q.dtype());
  check_output(op, o, q.shape(), q.dtype(), q.device(), "o");
  check_output(op, lse, {n.batch, n.heads, n.queries}, stats, q.device(), "lse");
  check_output(op, row_max, {n.batch, n.heads, n.queries}, stats, q.device(), "row_max");
#ifdef REHYAT_CUDA
  if (q.device().is_cuda()) {
    cuda::softmax_attention_forward(o, lse, row_max, q, k, v, scale, keys);
    return;
  }
#else
  REHYAT_CHECK(!q.device().is_cuda(), "{}: {} is on {} but rehyat was built without CUDA", op, q.str(),
               q.device().str());
#endif
  REHYAT_DISPATCH_FLOAT(q.dtype(), op, cpu_forward<scalar_t>(o, lse, row_max, q, k, v, scale, keys, n));
}

void softmax_attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& d_o, const Tensor& q,
                                const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                                double scale, const KeyRange& keys) {
  const char* op = "softmax_attention_backward";
  const Dims n = check_inputs(op, q, k, v, keys);
  REHYAT_CHECK(d_o.defined() && d_o.shape() == q.shape() && d_o.dtype() == q.dtype() && d_o.device() == q.device() &&
                   (d_o.stride(3) == 1 || n.head_dim == 1),
               "{}: d_o {} must match q {} with a unit stride on d", op, d_o.str(), q.str());
  check_output(op, o, q.shape(), q.dtype(), q.device(), "o");
  check_output(op, lse, {n.batch, n.heads, n.queries}, stats_dtype(q.dtype()), q.device(), "lse");
  check_output(op, dq, q.shape(), q.dtype(), q.device(), "dq");
  check_output(op, dk, k.shape(), q.dtype(), q.device(), "dk");
  check_output(op, dv, v.shape(), q.dtype(), q.device(), "dv");
#ifdef REHYAT_CUDA
  if (q.device().is_cuda()) {
    cuda::softmax_attention_backward(dq, dk, dv, d_o, q, k, v, o, lse, scale, keys);
    return;
  }
#endif
  REHYAT_DISPATCH_FLOAT(q.dtype(), op,
                        cpu_backward<scalar_t>(dq, dk, dv, d_o, q, k, v, o, lse, scale, keys, n));
}

}  // namespace kernels

// --- autograd op -------------------------------------------------------------------------

Tensor softmax_attention(const Tensor& q, const Tensor& k, const Tensor& v, const SoftmaxAttentionOptions& options) {
  REHYAT_CHECK(q.dim() == 4, "softmax_attention: q {} must be [B, N, H, d]", q.str());
  const double scale = resolved_scale(options, q.size(3));
  const KeyRange keys = options.keys;
  Tensor qd = q.detach(), kd = k.detach(), vd = v.detach();
  const int64_t batch = q.size(0), heads = q.size(2), queries = q.size(1);
  const DType stats = kernels::stats_dtype(q.dtype());
  Tensor o = Tensor::empty(q.shape(), q.dtype(), q.device());             // [B, Nq, H, d]
  Tensor lse = Tensor::empty({batch, heads, queries}, stats, q.device());  // [B, H, Nq]
  Tensor row_max = Tensor::empty({batch, heads, queries}, stats, q.device());
  kernels::softmax_attention_forward(o, lse, row_max, qd, kd, vd, scale, keys);
  if (autograd::should_record({&q, &k, &v})) {
    Tensor so = o.detach();
    autograd::record("softmax_attention", o, {q, k, v},
                     [qd, kd, vd, so, lse, scale, keys](const Tensor& g, const Node&) {
                       Tensor dq = Tensor::empty(qd.shape(), qd.dtype(), qd.device());
                       Tensor dk = Tensor::empty(kd.shape(), kd.dtype(), kd.device());
                       Tensor dv = Tensor::empty(vd.shape(), vd.dtype(), vd.device());
                       Tensor d_o = g.stride(3) == 1 ? g : g.contiguous();
                       kernels::softmax_attention_backward(dq, dk, dv, d_o, qd, kd, vd, so, lse, scale, keys);
                       return std::vector<Tensor>{dq, dk, dv};
                     });
  }
  return o;
}

bool prefer_cpu_composite(const Tensor& q) {
  static const bool loop_forced = [] {
    const char* env = std::getenv("REHYAT_CPU_ATTENTION");
    return env != nullptr && std::string(env) == "loop";
  }();
  return q.device().is_cpu() && q.dtype() == DType::F32 && ::rehyat::kernels::cpu_blas_available() && !loop_forced;
}

// --- composite reference -------------------------------------------------------------------

Tensor softmax_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const SoftmaxAttentionOptions& options) {
  REHYAT_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "softmax_attention_composite: q {}, k {}, v {} must be [B, N, H, d]",
               q.str(), k.str(), v.str());
  const int64_t queries = q.size(1), keys = k.size(1);
  check_key_range("softmax_attention_composite", options.keys, queries, keys);
  const double scale = resolved_scale(options, q.size(3));
  const int64_t batch = q.size(0), heads = q.size(2), head_dim = q.size(3);
  // Batch and heads merged into one batch dim: core matmul reads the batch stride off the
  // innermost batch dim, which is wrong for a size-1 head dim of a permuted view.
  Tensor qh = q.permute({0, 2, 1, 3}).reshape({batch * heads, queries, head_dim});
  Tensor kt = k.permute({0, 2, 3, 1}).reshape({batch * heads, head_dim, keys});
  Tensor vh = v.permute({0, 2, 1, 3}).reshape({batch * heads, keys, head_dim});
  Tensor scores = mul(matmul(qh, kt), scale);  // [B*H, Nq, Nk]
  if (options.keys.chunked()) {
    std::vector<double> mask(size_t(queries * keys), -std::numeric_limits<double>::infinity());
    for (int64_t i = 0; i < queries; ++i) {
      const TokenRange r = key_tokens_for_query(options.keys, i, keys);
      std::fill(mask.begin() + i * keys + r.begin, mask.begin() + i * keys + r.end, 0.0);
    }
    scores = add(scores, Tensor::from_vector(mask, {1, queries, keys}, scores.dtype(), scores.device()));
  }
  Tensor probs = softmax(scores, -1);
  Tensor out = matmul(probs, vh).view({batch, heads, queries, head_dim});  // [B, H, Nq, d]
  return out.permute({0, 2, 1, 3}).contiguous();                          // [B, Nq, H, d]
}

}  // namespace rehyat::attention
