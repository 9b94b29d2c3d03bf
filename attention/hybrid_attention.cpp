// ReHyAt hybrid attention (SPEC §3): option checks, the plain-loop CPU reference (forward
// and exact backward), the autograd op routing CPU tensors to the reference and CUDA
// tensors to the fused kernels (attention/hybrid_attention.cu), and the composite
// reference built from autograd primitives.
//
// CPU reference, per (batch, head, query row i), f64 accumulation, recomputed in backward:
//   softmax part over S_i: s_ij = scale q_i.k_j, c_i = max_j s_ij (arg-max a_i),
//     w_ij = exp(s_ij - c_i), aS_i = sum w_ij v_j, nS_i = sum w_ij;
//   linear part over L_i: l_ij = phi_q_i.phi_k_j, aL_i = sum l_ij v_j, nL_i = sum l_ij;
//   den_i = nS_i + nL_i (+ linear_eps for the Linear kind), y_i = (aS_i + aL_i) / den_i.
// backward (all gradients assigned), g_i = dy_i, D_i = g_i.y_i:
//   j in S_i: P_ij = w_ij / den_i, dS_ij = P_ij (g_i.v_j - D_i), dq_i += scale dS_ij k_j,
//             dk_j += scale dS_ij q_i, dv_j += P_ij g_i;
//   row max:  dc_i = -sum_j dS_ij, applied to s_{i a_i} (dq_i += scale dc_i k_a, dk_a += scale dc_i q_i);
//   j in L_i: dl_ij = (g_i.v_j - D_i) / den_i, dphi_q_i += dl_ij phi_k_j, dphi_k_j += dl_ij phi_q_i,
//             dv_j += l_ij / den_i g_i.
#include "attention/hybrid_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/hybrid_attention_cuda.h"
#include "attention/softmax_attention.h"
#include "autograd/graph.h"
#include "autograd/ops.h"

namespace rehyat::attention {

const char* attention_kind_name(AttentionKind kind) {
  switch (kind) {
    case AttentionKind::Softmax: return "softmax";
    case AttentionKind::Rehyat: return "rehyat";
    case AttentionKind::Linear: return "linear";
    case AttentionKind::UniformHybrid: return "uniform_hybrid";
  }
  return "unknown";
}

AttentionKind parse_attention_kind(const std::string& name) {
  for (AttentionKind kind :
       {AttentionKind::Softmax, AttentionKind::Rehyat, AttentionKind::Linear, AttentionKind::UniformHybrid})
    if (name == attention_kind_name(kind)) return kind;
  REHYAT_FAIL("attention kind '{}' is not one of softmax, rehyat, linear, uniform_hybrid", name);
}

namespace hybrid_detail {

KeyClass key_class(const HybridOptions& o, int64_t frames, int64_t query_frame, int64_t key_frame) {
  switch (o.kind) {
    case AttentionKind::Softmax: return KeyClass::Softmax;
    case AttentionKind::Linear: return KeyClass::Linear;
    case AttentionKind::UniformHybrid: return key_frame % o.rate == 0 ? KeyClass::Softmax : KeyClass::Linear;
    case AttentionKind::Rehyat: {
      const int64_t chunk = query_frame / o.chunk_frames;
      const int64_t first = std::max<int64_t>(chunk * o.chunk_frames - o.overlap_frames, 0);
      const int64_t last = std::min<int64_t>((chunk + 1) * o.chunk_frames, frames);
      if (key_frame >= first && key_frame < last) return KeyClass::Softmax;
      if (key_frame < first || !o.causal) return KeyClass::Linear;
      return KeyClass::None;
    }
  }
  return KeyClass::None;
}

Dims check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q,
                  const Tensor& phi_k, const HybridOptions& o) {
  REHYAT_CHECK(q.defined() && k.defined() && v.defined(), "{}: q, k and v must be defined", op);
  REHYAT_CHECK(q.dim() == 4 && q.shape() == k.shape() && q.shape() == v.shape(),
               "{}: q {}, k {}, v {} must share one [B, N, H, d] shape", op, q.str(), k.str(), v.str());
  REHYAT_CHECK(is_floating(q.dtype()) && q.dtype() == k.dtype() && q.dtype() == v.dtype(),
               "{}: q {}, k {}, v {} must share one floating dtype", op, q.str(), k.str(), v.str());
  REHYAT_CHECK(q.device() == k.device() && q.device() == v.device(), "{}: q {}, k {}, v {} on different devices",
               op, q.str(), k.str(), v.str());
  for (const Tensor* t : {&q, &k, &v})
    REHYAT_CHECK(t->stride(3) == 1 || t->size(3) == 1, "{}: {} needs a unit stride on the head dim", op, t->str());
  REHYAT_CHECK(q.size(1) > 0 && q.size(3) > 0, "{}: q {} has no tokens or an empty head dim", op, q.str());
  REHYAT_CHECK(o.frame_tokens > 0, "{}: frame_tokens must be > 0, got {}", op, o.frame_tokens);
  REHYAT_CHECK(q.size(1) % o.frame_tokens == 0, "{}: q {} has {} tokens, not whole frames of {} tokens", op,
               q.str(), q.size(1), o.frame_tokens);
  REHYAT_CHECK(o.chunk_frames >= 1, "{}: chunk_frames must be >= 1, got {}", op, o.chunk_frames);
  REHYAT_CHECK(o.overlap_frames >= 0, "{}: overlap_frames must be >= 0, got {}", op, o.overlap_frames);
  REHYAT_CHECK(o.rate >= 1, "{}: rate must be >= 1, got {}", op, o.rate);
  REHYAT_CHECK(o.scale >= 0.0 && std::isfinite(o.scale), "{}: scale must be finite and >= 0, got {}", op, o.scale);
  REHYAT_CHECK(o.linear_eps >= 0.0, "{}: linear_eps must be >= 0, got {}", op, o.linear_eps);
  Dims n{q.size(0), q.size(1), q.size(2), q.size(3), 0, q.size(1) / o.frame_tokens};
  if (o.kind == AttentionKind::Softmax) return n;
  const DType feature = q.dtype() == DType::F64 ? DType::F64 : DType::F32;
  REHYAT_CHECK(phi_q.defined() && phi_k.defined(), "{}: kind {} needs phi_q and phi_k", op,
               attention_kind_name(o.kind));
  REHYAT_CHECK(phi_q.dim() == 4 && phi_q.shape() == phi_k.shape() && phi_q.size(0) == n.batch &&
                   phi_q.size(1) == n.tokens && phi_q.size(2) == n.heads && phi_q.size(3) > 0,
               "{}: phi_q {} and phi_k {} must be [B, N, H, Dp] matching q {}", op, phi_q.str(), phi_k.str(),
               q.str());
  REHYAT_CHECK(phi_q.dtype() == feature && phi_k.dtype() == feature,
               "{}: phi_q {} and phi_k {} must be {} for {} q", op, phi_q.str(), phi_k.str(), dtype_name(feature),
               dtype_name(q.dtype()));
  REHYAT_CHECK(phi_q.device() == q.device() && phi_k.device() == q.device(),
               "{}: phi_q {} and phi_k {} must be on q's device {}", op, phi_q.str(), phi_k.str(), q.device().str());
  n.feature_dim = phi_q.size(3);
  return n;
}

double resolved_scale(const HybridOptions& o, int64_t head_dim) {
  return o.scale != 0.0 ? o.scale : 1.0 / std::sqrt(double(head_dim));
}

}  // namespace hybrid_detail

namespace {

using hybrid_detail::Dims;
using hybrid_detail::KeyClass;

// Host f64 copies (logical row-major [B, N, H, x]) of the inputs.
struct HostInputs {
  std::vector<double> q, k, v, pq, pk;
  HostInputs(const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& pq_, const Tensor& pk_,
             bool features)
      : q(q_.to_vector()), k(k_.to_vector()), v(v_.to_vector()) {
    if (features) {
      pq = pq_.to_vector();
      pk = pk_.to_vector();
    }
  }
};

// Key classes per (query frame, key frame).
std::vector<KeyClass> class_table(const HybridOptions& o, int64_t frames) {
  std::vector<KeyClass> table(size_t(frames * frames));
  for (int64_t f = 0; f < frames; ++f)
    for (int64_t g = 0; g < frames; ++g) table[size_t(f * frames + g)] = hybrid_detail::key_class(o, frames, f, g);
  return table;
}

// One query row's forward quantities (f64).
struct RowForward {
  double c = 0, ns = 0, nl = 0, den = 0;
  int64_t argmax = -1;
  std::vector<double> y;
};

class CpuReference {
 public:
  CpuReference(const HostInputs& in, const HybridOptions& o, const Dims& n)
      : in_(in), o_(o), n_(n), scale_(hybrid_detail::resolved_scale(o, n.head_dim)),
        classes_(class_table(o, n.frames)), s_(size_t(n.tokens)) {}

  size_t qi(int64_t b, int64_t t, int64_t h) const { return size_t(((b * n_.tokens + t) * n_.heads + h) * n_.head_dim); }
  size_t fi(int64_t b, int64_t t, int64_t h) const {
    return size_t(((b * n_.tokens + t) * n_.heads + h) * n_.feature_dim);
  }
  KeyClass cls(int64_t i, int64_t j) const {
    return classes_[size_t((i / o_.frame_tokens) * n_.frames + j / o_.frame_tokens)];
  }
  double dot(const double* a, const double* b, int64_t len) const {
    double s = 0;
    for (int64_t e = 0; e < len; ++e) s += a[e] * b[e];
    return s;
  }

  // Fills r and s_ (scaled scores of the row's softmax keys).
  void row_forward(int64_t b, int64_t h, int64_t i, RowForward& r) {
    const int64_t d = n_.head_dim, dp = n_.feature_dim;
    r.y.assign(size_t(d), 0.0);
    r.c = -std::numeric_limits<double>::infinity();
    r.argmax = -1;
    r.ns = r.nl = 0;
    const double* qrow = &in_.q[qi(b, i, h)];
    for (int64_t j = 0; j < n_.tokens; ++j)
      if (cls(i, j) == KeyClass::Softmax) {
        s_[size_t(j)] = scale_ * dot(qrow, &in_.k[qi(b, j, h)], d);
        if (s_[size_t(j)] > r.c) {
          r.c = s_[size_t(j)];
          r.argmax = j;
        }
      }
    for (int64_t j = 0; j < n_.tokens; ++j) {
      const KeyClass kc = cls(i, j);
      if (kc == KeyClass::None) continue;
      const double w = kc == KeyClass::Softmax ? std::exp(s_[size_t(j)] - r.c)
                                               : dot(&in_.pq[fi(b, i, h)], &in_.pk[fi(b, j, h)], dp);
      (kc == KeyClass::Softmax ? r.ns : r.nl) += w;
      const double* vrow = &in_.v[qi(b, j, h)];
      for (int64_t e = 0; e < d; ++e) r.y[size_t(e)] += w * vrow[e];
    }
    r.den = r.ns + r.nl + (o_.kind == AttentionKind::Linear ? o_.linear_eps : 0.0);
    for (double& x : r.y) x /= r.den;
  }

  std::vector<double> forward() {
    std::vector<double> y(in_.q.size());
    RowForward r;
    for (int64_t b = 0; b < n_.batch; ++b)
      for (int64_t h = 0; h < n_.heads; ++h)
        for (int64_t i = 0; i < n_.tokens; ++i) {
          row_forward(b, h, i, r);
          std::copy(r.y.begin(), r.y.end(), y.begin() + std::ptrdiff_t(qi(b, i, h)));
        }
    return y;
  }

  // Gradients (f64, [B, N, H, x]) from dy.
  void backward(const std::vector<double>& dy, std::vector<double>& dq, std::vector<double>& dk,
                std::vector<double>& dv, std::vector<double>& dpq, std::vector<double>& dpk) {
    const int64_t d = n_.head_dim, dp = n_.feature_dim;
    dq.assign(in_.q.size(), 0.0);
    dk.assign(in_.q.size(), 0.0);
    dv.assign(in_.q.size(), 0.0);
    dpq.assign(in_.pq.size(), 0.0);
    dpk.assign(in_.pk.size(), 0.0);
    RowForward r;
    for (int64_t b = 0; b < n_.batch; ++b)
      for (int64_t h = 0; h < n_.heads; ++h)
        for (int64_t i = 0; i < n_.tokens; ++i) {
          row_forward(b, h, i, r);
          const double* g = &dy[qi(b, i, h)];
          const double* qrow = &in_.q[qi(b, i, h)];
          const double delta = dot(g, r.y.data(), d);
          double sum_ds = 0;
          for (int64_t j = 0; j < n_.tokens; ++j) {
            const KeyClass kc = cls(i, j);
            if (kc == KeyClass::None) continue;
            const double* vrow = &in_.v[qi(b, j, h)];
            const double gv = dot(g, vrow, d) - delta;
            double weight;  // coefficient of g in dv_j
            if (kc == KeyClass::Softmax) {
              const double p = std::exp(s_[size_t(j)] - r.c) / r.den;
              const double ds = p * gv;
              sum_ds += ds;
              const double* krow = &in_.k[qi(b, j, h)];
              for (int64_t e = 0; e < d; ++e) {
                dq[qi(b, i, h) + size_t(e)] += scale_ * ds * krow[e];
                dk[qi(b, j, h) + size_t(e)] += scale_ * ds * qrow[e];
              }
              weight = p;
            } else {
              const double* pqi = &in_.pq[fi(b, i, h)];
              const double* pkj = &in_.pk[fi(b, j, h)];
              const double dl = gv / r.den;
              for (int64_t e = 0; e < dp; ++e) {
                dpq[fi(b, i, h) + size_t(e)] += dl * pkj[e];
                dpk[fi(b, j, h) + size_t(e)] += dl * pqi[e];
              }
              weight = dot(pqi, pkj, dp) / r.den;
            }
            for (int64_t e = 0; e < d; ++e) dv[qi(b, j, h) + size_t(e)] += weight * g[e];
          }
          if (r.argmax >= 0) {  // the row max's own gradient goes to the arg-max key's score
            const double dc = -sum_ds;
            const double* ka = &in_.k[qi(b, r.argmax, h)];
            for (int64_t e = 0; e < d; ++e) {
              dq[qi(b, i, h) + size_t(e)] += scale_ * dc * ka[e];
              dk[qi(b, r.argmax, h) + size_t(e)] += scale_ * dc * qrow[e];
            }
          }
        }
  }

 private:
  const HostInputs& in_;
  HybridOptions o_;
  Dims n_;
  double scale_;
  std::vector<KeyClass> classes_;
  std::vector<double> s_;
};

bool uses_features(const HybridOptions& o) { return o.kind != AttentionKind::Softmax; }

Tensor cpu_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q, const Tensor& phi_k,
                   const HybridOptions& o, const Dims& n) {
  const HostInputs in(q, k, v, phi_q, phi_k, uses_features(o));
  CpuReference ref(in, o, n);
  return Tensor::from_vector(ref.forward(), q.shape(), q.dtype(), q.device());
}

std::vector<Tensor> cpu_backward(const Tensor& dy, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& phi_q, const Tensor& phi_k, const HybridOptions& o, const Dims& n) {
  const bool features = uses_features(o);
  const HostInputs in(q, k, v, phi_q, phi_k, features);
  CpuReference ref(in, o, n);
  std::vector<double> dq, dk, dv, dpq, dpk;
  ref.backward(dy.to_vector(), dq, dk, dv, dpq, dpk);
  std::vector<Tensor> grads{Tensor::from_vector(dq, q.shape(), q.dtype(), q.device()),
                            Tensor::from_vector(dk, k.shape(), k.dtype(), k.device()),
                            Tensor::from_vector(dv, v.shape(), v.dtype(), v.device()), Tensor(), Tensor()};
  if (features) {
    grads[3] = Tensor::from_vector(dpq, phi_q.shape(), phi_q.dtype(), phi_q.device());
    grads[4] = Tensor::from_vector(dpk, phi_k.shape(), phi_k.dtype(), phi_k.device());
  }
  return grads;
}

}  // namespace

// --- autograd op -------------------------------------------------------------------------

Tensor hybrid_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q, const Tensor& phi_k,
                        const HybridOptions& options) {
  const char* op = "hybrid_attention";
  const Dims n = hybrid_detail::check_inputs(op, q, k, v, phi_q, phi_k, options);
  if (options.kind == AttentionKind::Softmax) {  // features unused: the flash softmax op
    SoftmaxAttentionOptions so;
    so.scale = options.scale;
    return softmax_attention(q, k, v, so);
  }
  if (q.device().is_cuda()) {
#ifdef REHYAT_CUDA
    if (kernels::cuda::hybrid_supported(q, phi_q, options)) return kernels::cuda::hybrid_attention(q, k, v, phi_q, phi_k, options);
#endif
    return hybrid_attention_composite(q, k, v, phi_q, phi_k, options);  // correct, materializes N x N
  }
  Tensor qd = q.detach(), kd = k.detach(), vd = v.detach(), pqd = phi_q.detach(), pkd = phi_k.detach();
  Tensor y = cpu_forward(qd, kd, vd, pqd, pkd, options, n);
  if (autograd::should_record({&q, &k, &v, &phi_q, &phi_k})) {
    autograd::record(op, y, {q, k, v, phi_q, phi_k}, [qd, kd, vd, pqd, pkd, options, n](const Tensor& g, const Node&) {
      return cpu_backward(g, qd, kd, vd, pqd, pkd, options, n);
    });
  }
  return y;
}

// --- composite reference -------------------------------------------------------------------

Tensor hybrid_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q,
                                  const Tensor& phi_k, const HybridOptions& options) {
  const char* op = "hybrid_attention_composite";
  const Dims n = hybrid_detail::check_inputs(op, q, k, v, phi_q, phi_k, options);
  const DType compute = q.dtype() == DType::F64 ? DType::F64 : DType::F32;
  const int64_t bh = n.batch * n.heads, tokens = n.tokens;
  // [B, N, H, x] -> [B*H, N, x] in the compute dtype.
  auto heads_first = [&](const Tensor& t) {
    Tensor c = t.dtype() == compute ? t : t.to(compute);
    return c.permute({0, 2, 1, 3}).reshape({bh, tokens, t.size(3)});
  };
  Tensor qh = heads_first(q), kh = heads_first(k), vh = heads_first(v);
  const double scale = hybrid_detail::resolved_scale(options, n.head_dim);
  std::vector<double> softmax_bias(size_t(tokens * tokens)), linear_mask(size_t(tokens * tokens));
  const std::vector<KeyClass> classes = class_table(options, n.frames);
  for (int64_t i = 0; i < tokens; ++i)
    for (int64_t j = 0; j < tokens; ++j) {
      const KeyClass kc = classes[size_t((i / options.frame_tokens) * n.frames + j / options.frame_tokens)];
      softmax_bias[size_t(i * tokens + j)] = kc == KeyClass::Softmax ? 0.0 : -std::numeric_limits<double>::infinity();
      linear_mask[size_t(i * tokens + j)] = kc == KeyClass::Linear ? 1.0 : 0.0;
    }
  Tensor num, den;  // [B*H, N, d], [B*H, N, 1]
  if (options.kind != AttentionKind::Linear) {
    Tensor scores = mul(matmul(qh, kh.transpose(1, 2)), scale);  // [B*H, N, N]
    scores = add(scores, Tensor::from_vector(softmax_bias, {1, tokens, tokens}, compute, q.device()));
    Tensor row_max = max(scores, -1, true);  // c_i, differentiable (gradient to the arg-max)
    Tensor w = exp(sub(scores, row_max));
    num = matmul(w, vh);
    den = sum(w, -1, true);
  }
  if (options.kind != AttentionKind::Softmax) {
    Tensor lin = mul(matmul(heads_first(phi_q), heads_first(phi_k).transpose(1, 2)),
                     Tensor::from_vector(linear_mask, {1, tokens, tokens}, compute, q.device()));
    Tensor lnum = matmul(lin, vh), lden = sum(lin, -1, true);
    num = num.defined() ? add(num, lnum) : lnum;
    den = den.defined() ? add(den, lden) : add(lden, options.linear_eps);
  }
  Tensor y = div(num, den).view({n.batch, n.heads, tokens, n.head_dim}).permute({0, 2, 1, 3}).contiguous();
  return y.dtype() == q.dtype() ? y : y.to(q.dtype());
}

}  // namespace rehyat::attention
