// Recurrent causal ReHyAt attention: the chunk step (softmax over the window through the
// flash kernel, linear term from the running state, joint normalization) and the
// absorption of the frames that leave the window. Composed from device ops, so the same
// code runs on CPU and CUDA tensors.
#include "attention/recurrent.h"

#include <algorithm>
#include <cmath>

#include "attention/softmax_attention.h"
#include "autograd/graph.h"
#include "autograd/ops.h"
#include "core/check.h"
#include "core/ops/matmul.h"

namespace rehyat::attention {

namespace {

// [B, N, H, X] -> [B, H, N, X] (a view).
Tensor heads_first(const Tensor& t) { return t.permute({0, 2, 1, 3}); }

Tensor frames_slice(const Tensor& t, int64_t frame_tokens, int64_t first, int64_t last) {
  return t.slice(1, first * frame_tokens, last * frame_tokens);
}

Tensor join(const Tensor& kept, const Tensor& chunk) { return kept.defined() ? concat({kept, chunk}, 1) : chunk; }

}  // namespace

RecurrentHybridAttention::RecurrentHybridAttention(const HybridOptions& options) : options_(options) {
  REHYAT_CHECK(options.kind == AttentionKind::Rehyat && options.causal,
               "recurrent hybrid attention needs kind rehyat with causal = true, got kind {} causal {}",
               attention_kind_name(options.kind), options.causal);
  REHYAT_CHECK(options.frame_tokens > 0 && options.chunk_frames >= 1 && options.overlap_frames >= 0,
               "recurrent hybrid attention: frame_tokens {} and chunk_frames {} must be positive, overlap_frames {} "
               "non-negative",
               options.frame_tokens, options.chunk_frames, options.overlap_frames);
}

void RecurrentHybridAttention::reset() {
  state_ = Tensor();
  normalizer_ = Tensor();
  kept_k_ = kept_v_ = kept_phi_k_ = Tensor();
  frames_done_ = 0;
  finished_ = false;
}

int64_t RecurrentHybridAttention::kept_frames() const {
  return kept_k_.defined() ? kept_k_.size(1) / options_.frame_tokens : 0;
}

size_t RecurrentHybridAttention::state_bytes() const {
  size_t bytes = 0;
  for (const Tensor* t : {&state_, &normalizer_, &kept_k_, &kept_v_, &kept_phi_k_})
    if (t->defined()) bytes += t->nbytes();
  return bytes;
}

Tensor RecurrentHybridAttention::step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q,
                                      const Tensor& phi_k) {
  const char* op = "RecurrentHybridAttention::step";
  const int64_t ft = options_.frame_tokens, Tc = options_.chunk_frames, To = options_.overlap_frames;
  REHYAT_CHECK(!finished_, "{}: the previous chunk had fewer than chunk_frames = {} frames, so it was the last; "
               "reset() before a new video", op, Tc);
  REHYAT_CHECK(q.dim() == 4 && k.shape() == q.shape() && v.shape() == q.shape(),
               "{}: q {}, k {}, v {} must be [B, N, H, d] of one shape", op, q.str(), k.str(), v.str());
  const int64_t B = q.size(0), N = q.size(1), H = q.size(2), d = q.size(3);
  REHYAT_CHECK(N > 0 && N % ft == 0 && N / ft <= Tc, "{}: {} tokens must be 1 to chunk_frames = {} frames of {} tokens",
               op, N, Tc, ft);
  REHYAT_CHECK(phi_q.dim() == 4 && phi_q.size(0) == B && phi_q.size(1) == N && phi_q.size(2) == H &&
                   phi_k.shape() == phi_q.shape(),
               "{}: phi_q {} and phi_k {} must be [B, N, H, Dp] matching q {}", op, phi_q.str(), phi_k.str(), q.str());
  const DType state_dtype = kernels::stats_dtype(q.dtype());
  REHYAT_CHECK(phi_q.dtype() == state_dtype && phi_k.dtype() == state_dtype,
               "{}: phi_q {} and phi_k {} must be {} for {} inputs", op, phi_q.str(), phi_k.str(),
               dtype_name(state_dtype), dtype_name(q.dtype()));
  REHYAT_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype() && k.device() == q.device() &&
                   v.device() == q.device() && phi_q.device() == q.device() && phi_k.device() == q.device(),
               "{}: q {}, k {}, v {}, phi_q {}, phi_k {} must share a device (and q, k, v a dtype)", op, q.str(),
               k.str(), v.str(), phi_q.str(), phi_k.str());
  const int64_t Dp = phi_q.size(3);
  if (state_.defined())
    REHYAT_CHECK(state_.shape() == Shape({B, H, Dp, d}) && state_.device() == q.device(),
                 "{}: chunk q {} / phi {} does not match the state {} of earlier chunks", op, q.str(), phi_q.str(),
                 state_.str());

  autograd::NoGradGuard no_grad;
  if (!state_.defined()) {
    state_ = Tensor::zeros({B, H, Dp, d}, state_dtype, q.device());
    normalizer_ = Tensor::zeros({B, H, Dp}, state_dtype, q.device());
  }
  const int64_t frames = N / ft;
  const int64_t start = frames_done_;
  const int64_t window_first = std::max<int64_t>(start - To, 0);  // == start - kept_frames()

  // Softmax over the window: the kept frames, then the chunk.
  const Tensor window_k = join(kept_k_, k), window_v = join(kept_v_, v);
  const Tensor window_phi_k = join(kept_phi_k_, phi_k.contiguous());
  Tensor o = Tensor::empty(q.shape(), q.dtype(), q.device());  // [B, N, H, d]
  Tensor lse = Tensor::empty({B, H, N}, state_dtype, q.device());
  Tensor row_max = Tensor::empty({B, H, N}, state_dtype, q.device());
  const double scale = options_.scale != 0.0 ? options_.scale : 1.0 / std::sqrt(double(d));
  kernels::softmax_attention_forward(o, lse, row_max, q, window_k, window_v, scale, KeyRange{});

  // y = (nS o + phi_q S) / (nS + phi_q z), per head, in the state dtype.
  const Tensor n_softmax = exp(lse - row_max).unsqueeze(3);                      // [B, H, N, 1]
  const Tensor phi_q_h = heads_first(phi_q);                                     // [B, H, N, Dp]
  const Tensor a_linear = matmul(phi_q_h, state_);                               // [B, H, N, d]
  const Tensor n_linear = matmul(phi_q_h, normalizer_.unsqueeze(3));             // [B, H, N, 1]
  const Tensor o_h = heads_first(o.to(state_dtype));                             // [B, H, N, d]
  const Tensor y_h = (n_softmax * o_h + a_linear) / (n_softmax + n_linear);      // [B, H, N, d]
  Tensor y = heads_first(y_h).to(q.dtype()).contiguous();                        // [B, N, H, d]

  // Absorb the frames that leave the softmax window; keep the last To.
  const int64_t end = start + frames;
  const int64_t next_linear_end = std::max<int64_t>(end - To, 0);  // the next chunk's L = [0, next_linear_end)
  const int64_t absorbed = next_linear_end - window_first;          // window frames [0, absorbed)
  if (absorbed > 0) {
    const Tensor phi_k_abs = heads_first(frames_slice(window_phi_k, ft, 0, absorbed));           // [B, H, a, Dp]
    const Tensor v_abs = heads_first(frames_slice(window_v, ft, 0, absorbed)).to(state_dtype);  // [B, H, a, d]
    rehyat::kernels::matmul(state_, phi_k_abs.transpose(2, 3), v_abs, 1.0, 1.0);                        // S += phi_k^T v
    normalizer_ = normalizer_ + sum(phi_k_abs, 2);                                              // z += sum phi_k
  }
  const int64_t window_frames = end - window_first;
  const int64_t keep = std::min<int64_t>(To, end);
  if (keep > 0) {
    kept_k_ = frames_slice(window_k, ft, window_frames - keep, window_frames).clone();
    kept_v_ = frames_slice(window_v, ft, window_frames - keep, window_frames).clone();
    kept_phi_k_ = frames_slice(window_phi_k, ft, window_frames - keep, window_frames).clone();
  }
  frames_done_ = end;
  finished_ = frames < Tc;
  return y;
}

Tensor hybrid_attention_recurrent(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q,
                                  const Tensor& phi_k, const HybridOptions& options) {
  REHYAT_CHECK(q.dim() == 4 && options.frame_tokens > 0 && q.size(1) % options.frame_tokens == 0,
               "hybrid_attention_recurrent: q {} must be [B, N, H, d] with N whole frames of {} tokens", q.str(),
               options.frame_tokens);
  RecurrentHybridAttention recurrent(options);
  const int64_t chunk_tokens = options.chunk_frames * options.frame_tokens, N = q.size(1);
  std::vector<Tensor> outputs;
  for (int64_t first = 0; first < N; first += chunk_tokens) {
    const int64_t last = std::min(first + chunk_tokens, N);
    outputs.push_back(recurrent.step(q.slice(1, first, last), k.slice(1, first, last), v.slice(1, first, last),
                                     phi_q.slice(1, first, last), phi_k.slice(1, first, last)));
  }
  autograd::NoGradGuard no_grad;
  return outputs.size() == 1 ? outputs[0] : concat(outputs, 1);
}

}  // namespace rehyat::attention
