// Fused CUDA path of the hybrid attention (kinds Rehyat, Linear and UniformHybrid; bf16/f16
// q/k/v, head dim 64 or 128, fp32 features and fp32 state). SPEC §3; notation of
// attention/hybrid_attention.cpp.
//
// The kinds differ only in which keys the softmax sees and in the linear mask M below:
//   Rehyat         the flash kernel with per-chunk key ranges over k, v;
//   UniformHybrid  the softmax keys (frames divisible by R) gathered into compact k, v and
//                  seen by every query (plain flash, Nk < Nq); their gradients scattered back;
//   Linear         no softmax: y = aL / (nL + eps); q and k get a zero gradient (only phi's).
//
// Why this shape: the chunk softmax is the flash kernel of attention/softmax_attention.cu
// with per-chunk key ranges; the linear part is a handful of fp32 GEMMs on per-frame
// states (phi_k [v, 1]^T summed per frame), so nothing N x N is formed.
//
// Forward (saves o, stats, the extended values and the per-query-frame states):
//   flash: o = aS / nS, row_max c, lse = c + log nS                         [B, N, H, d], [B, H, N]
//   vhat = [v, 1] (fp32)                                                    [B, N, H, d+1]
//   Sf[b, f, h] = sum_{j in frame f} phi_k_j vhat_j^T                       [B, T, H, Dp, d+1]
//   Sq[b, f] = sum_g M[f, g] Sf[b, g], M[f, g] = 1 when key frame g is linear for query frame f
//   aL[b, f, h] = phi_q(frame f) @ Sq[b, f, h]  (last column = nL)          [B, T, H, ft, d+1]
//   y = (o nS + aL[:d]) / (nS + nL); saved: lse_joint = c + log den, den, ratio = nS / den.
// Backward (gradients assigned):
//   flash backward with lse_joint and y (P = exp(s - lse_joint) = w / den, D = dy.y) gives
//   the softmax part of dq, dk, dv exactly;
//   ghat = [dy / den, -D / den]                                             [B, N, H, d+1]
//   dphi_q = ghat @ Sq^T; Rq[f] = phi_q(f)^T ghat(f); R = M^T Rq;
//   dphi_k = vhat @ R^T; dv += phi_k @ R[:, :d];
//   row max: dc = -ratio (dy.o - D), a = arg-max key (tracked by the flash forward's online
//   softmax), dq_i += scale dc_i k_a, dk_a += scale dc_i q_i: folded into the flash
//   backward's dS tile (dS[i, a_i] += dc_i). Fallback when the flash kernels do not take the
//   problem: a tensor-core arg-max scan and fp32 atomics.
#include "core/ops/cuda_common.cuh"  // first: it configures fmt for nvcc

#include <mma.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "attention/hybrid_attention_cuda.h"
#include "attention/softmax_attention.h"
#include "attention/softmax_attention_cuda.h"
#include "autograd/graph.h"
#include "core/cuda_context.h"
#include "core/ops/matmul.h"

namespace rehyat::attention::kernels::cuda {
namespace {

using rehyat::kernels::cuda::ceil_div;
using hybrid_detail::KeyClass;

template <typename T>
__device__ __forceinline__ float to_f(T x) {
  return float(x);
}
template <>
__device__ __forceinline__ float to_f(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float to_f(__half x) {
  return __half2float(x);
}
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_f(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half from_f(float x) {
  return __float2half(x);
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Width of the extended rows ([v, 1], [dy / den, -D / den]): d + 1 padded with zeros to
// d + 4 so that every fp32 row is 16-byte aligned for the tensor-core GEMMs.
inline int64_t ext_width(int64_t d) { return d + 4; }

// vhat [rows, W] = [v, 1, 0, 0, 0] in fp32; rows = B*N*H, v contiguous [rows, d].
template <typename T>
__global__ void extend_values_kernel(float* __restrict__ vhat, const T* __restrict__ v, int64_t rows, int d, int w) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * w) return;
  const int64_t r = i / w;
  const int e = int(i - r * w);
  vhat[i] = e < d ? to_f(v[r * d + e]) : (e == d ? 1.0f : 0.0f);
}

// REHYAT_HYBRID_PROFILE=1: CUDA events between the phases of each forward / backward call,
// printed to stderr as "hybrid <fwd|bwd> total ms: phase ms ..." (synchronizes; measurement
// only).
class PhaseTimer {
 public:
  PhaseTimer(const char* what, cudaStream_t stream) : what_(what), stream_(stream) {
    static const bool on = [] {
      const char* e = std::getenv("REHYAT_HYBRID_PROFILE");
      return e && e[0] == '1';
    }();
    on_ = on;
    mark("start");
  }
  void mark(const char* phase) {
    if (!on_) return;
    cudaEvent_t e;
    if (cudaEventCreate(&e) != cudaSuccess) return;
    cudaEventRecord(e, stream_);
    events_.push_back({phase, e});
  }
  ~PhaseTimer() {
    if (!on_ || events_.empty()) return;
    cudaEventSynchronize(events_.back().second);
    std::string line;
    float total = 0.f;
    for (size_t i = 1; i < events_.size(); ++i) {
      float ms = 0.f;
      cudaEventElapsedTime(&ms, events_[i - 1].second, events_[i].second);
      total += ms;
      line += fmt::format(" {} {:.3f}", events_[i].first, ms);
    }
    for (auto& e : events_) cudaEventDestroy(e.second);
    fmt::print(stderr, "hybrid {} {:.3f} ms:{}\n", what_, total, line);
  }

 private:
  const char* what_;
  cudaStream_t stream_;
  bool on_ = false;
  std::vector<std::pair<const char*, cudaEvent_t>> events_;
};

// Row-major operand of the batched fp32 GEMMs over (b, h, f): element (r, c) of matrix
// (b, h, f) at p + b * sb + h * sh + f * sf + r * ld + c (row-major) or + r + c * ld (col).
struct GemmOp {
  const float* p;
  int64_t ld;
  bool col;
  int64_t sf, sh, sb;
};
bool use_tf32() {
  static const bool on = [] {
    const char* e = std::getenv("REHYAT_HYBRID_TF32");
    return !(e && e[0] == '0');
  }();
  return on;
}
// ptrs[3][count]: the (b, h, f) matrices of a, b, c, i = (b * H + h) * T + f.
__global__ void gemm_pointers_kernel(void** __restrict__ ptrs, GemmOp a, GemmOp b, GemmOp c, int64_t H,
                                     int64_t T, int64_t count) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int64_t f = i % T, h = (i / T) % H, bb = i / (T * H);
  ptrs[i] = const_cast<float*>(a.p + bb * a.sb + h * a.sh + f * a.sf);
  ptrs[count + i] = const_cast<float*>(b.p + bb * b.sb + h * b.sh + f * b.sf);
  ptrs[2 * count + i] = const_cast<float*>(c.p + bb * c.sb + h * c.sh + f * c.sf);
}
// C[b, h, f] (m x n, row-major) = A[b, h, f] (m x k) @ B[b, h, f] (k x n), all B*H*T
// products in one cublasGemmBatchedEx on TF32 tensor cores with fp32 accumulation
// (REHYAT_HYBRID_TF32=0: plain fp32). Row-major C is column-major C^T = B^T A^T, so cuBLAS
// gets (B, A) swapped; the pointer arrays are filled on the device (no host sync).
void gemm_f32(cudaStream_t stream, Device dev, int64_t m, int64_t n, int64_t k, GemmOp a, GemmOp b, GemmOp c,
              int64_t B, int64_t H, int64_t T) {
  const int64_t count = B * H * T;
  if (count == 0 || m == 0 || n == 0) return;
  REHYAT_CHECK(!c.col, "hybrid gemm: output must be row-major");
  Tensor ptrs = Tensor::empty({3 * count}, DType::I64, dev);
  void** pp = static_cast<void**>(ptrs.data_ptr());
  gemm_pointers_kernel<<<unsigned(ceil_div(count, 256)), 256, 0, stream>>>(pp, a, b, c, H, T, count);
  CUDA_CHECK_LAUNCH();
  cublasHandle_t h = rehyat::cuda::context(dev).cublas;
  CUBLAS_CHECK(cublasSetStream(h, stream));
  const float one = 1.f, zero = 0.f;
  // Column-major view of row-major B (k x n, ld) is B^T (n x k): op N; of col-major B: op T.
  CUBLAS_CHECK(cublasGemmBatchedEx(h, b.col ? CUBLAS_OP_T : CUBLAS_OP_N, a.col ? CUBLAS_OP_T : CUBLAS_OP_N, int(n),
                                   int(m), int(k), &one, pp + count, CUDA_R_32F,
                                   int(b.ld), pp, CUDA_R_32F, int(a.ld), &zero,
                                   pp + 2 * count, CUDA_R_32F, int(c.ld), int(count),
                                   use_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
}

// Geometry of one (b, n, h) row: frame-major tokens, aL/ghat-style per-frame layouts.
struct RowGeom {
  int64_t batch, tokens, heads, frames, frame_tokens;
  __device__ int64_t stat(int64_t b, int64_t n, int64_t h) const { return (b * heads + h) * tokens + n; }
  // Row of a [B, T, H, ft, x] buffer.
  __device__ int64_t frame_row(int64_t b, int64_t n, int64_t h) const {
    const int64_t f = n / frame_tokens, j = n - f * frame_tokens;
    return ((b * frames + f) * heads + h) * frame_tokens + j;
  }
};

// One warp per row: y = (o nS + aL) / (nS + nL) and the saved statistics.
template <typename T>
__global__ void combine_forward_kernel(T* __restrict__ y, float* __restrict__ lse_joint, float* __restrict__ den_out,
                                       float* __restrict__ ratio, const T* __restrict__ o, const float* __restrict__ lse,
                                       const float* __restrict__ row_max, const float* __restrict__ a_lin, RowGeom g,
                                       int d, int w, float eps) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;  // (b, n, h)
  const int lane = threadIdx.x % 32;
  if (row >= g.batch * g.tokens * g.heads) return;
  const int64_t h = row % g.heads, n = (row / g.heads) % g.tokens, b = row / (g.heads * g.tokens);
  const int64_t s = g.stat(b, n, h);
  // Without a softmax part (o == nullptr: kind Linear) the denominator is nL + eps.
  const float c = o ? row_max[s] : 0.0f, ns = o ? expf(lse[s] - c) : 0.0f;
  const float* al = a_lin + g.frame_row(b, n, h) * w;
  const float den = ns + al[d] + (o ? 0.0f : eps);
  const float inv = 1.0f / den;
  for (int e = lane; e < d; e += 32)
    y[row * d + e] = from_f<T>(((o ? to_f(o[row * d + e]) * ns : 0.0f) + al[e]) * inv);
  if (lane == 0) {
    lse_joint[s] = c + logf(den);
    den_out[s] = den;
    ratio[s] = ns * inv;
  }
}

// One warp per row: ghat = [dy / den, -D / den], dc = -ratio (dy.o - D), D = dy.y.
template <typename T>
__global__ void prepare_backward_kernel(float* __restrict__ ghat, float* __restrict__ dc, const T* __restrict__ dy,
                                        const T* __restrict__ y, const T* __restrict__ o, const float* __restrict__ den,
                                        const float* __restrict__ ratio, RowGeom g, int d, int w) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= g.batch * g.tokens * g.heads) return;
  const int64_t h = row % g.heads, n = (row / g.heads) % g.tokens, b = row / (g.heads * g.tokens);
  const int64_t s = g.stat(b, n, h);
  float dyy = 0, dyo = 0;
  for (int e = lane; e < d; e += 32) {
    const float gy = to_f(dy[row * d + e]);
    dyy += gy * to_f(y[row * d + e]);
    if (o) dyo += gy * to_f(o[row * d + e]);  // no softmax part (Linear): dc unused
  }
  dyy = warp_sum(dyy);
  dyo = warp_sum(dyo);
  const float inv = 1.0f / den[s];
  float* gh = ghat + g.frame_row(b, n, h) * w;
  for (int e = lane; e < d; e += 32) gh[e] = to_f(dy[row * d + e]) * inv;
  if (lane < w - d - 1) gh[d + 1 + lane] = 0.f;
  if (lane == 0) {
    gh[d] = -dyy * inv;
    dc[s] = -ratio[s] * (dyo - dyy);
  }
}

// Arg-max of the scaled scores over each query row's softmax key range (chunked), by a
// wmma scan: 64 query rows per block (16 per warp), 64-key tiles staged in shared memory.
constexpr int kArgRows = 64, kArgKeys = 64;
template <typename T, int D>
__global__ void __launch_bounds__(128) row_argmax_kernel(int* __restrict__ argmax, const T* __restrict__ q,
                                                         const T* __restrict__ k, RowGeom g, int64_t chunk_frames,
                                                         int64_t overlap_frames) {
  using namespace nvcuda;
  __shared__ __align__(32) T qs[kArgRows][D + 8];
  __shared__ __align__(32) T ks[kArgKeys][D + 8];
  __shared__ __align__(32) float sc[4][16][kArgKeys + 4];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t bh = blockIdx.y, b = bh / g.heads, h = bh % g.heads;
  const int64_t row0 = int64_t(blockIdx.x) * kArgRows;
  const int64_t ld = g.heads * D;
  const T* qb = q + (b * g.tokens * g.heads + h) * D;
  const T* kb = k + (b * g.tokens * g.heads + h) * D;
  auto key_range = [&](int64_t n, int64_t& lo, int64_t& hi) {
    const int64_t t = (n / g.frame_tokens) / chunk_frames;
    lo = max(t * chunk_frames - overlap_frames, int64_t(0)) * g.frame_tokens;
    hi = min((t + 1) * chunk_frames, g.frames) * g.frame_tokens;
  };
  const int64_t last_row = min(row0 + kArgRows, g.tokens) - 1;
  int64_t lo0, hi0, lo1, hi1;
  key_range(row0, lo0, hi0);
  key_range(last_row, lo1, hi1);
  const int64_t key_lo = min(lo0, lo1), key_hi = max(hi0, hi1);
  for (int i = threadIdx.x; i < kArgRows * D; i += 128) {
    const int r = i / D, e = i % D;
    qs[r][e] = row0 + r < g.tokens ? qb[(row0 + r) * ld + e] : from_f<T>(0.0f);
  }
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[D / 16];
  for (int kk = 0; kk < D / 16; ++kk) wmma::load_matrix_sync(qf[kk], &qs[warp * 16][kk * 16], D + 8);
  // Lane pair (2 r, 2 r + 1) scans row r of the warp's 16, 32 key columns each.
  const int my_row = lane / 2, half = lane % 2;
  const int64_t n = row0 + warp * 16 + my_row;
  int64_t lo = 0, hi = 0;
  if (n < g.tokens) key_range(n, lo, hi);
  float best = -INFINITY;
  int best_j = -1;
  for (int64_t key0 = key_lo; key0 < key_hi; key0 += kArgKeys) {
    __syncthreads();
    for (int i = threadIdx.x; i < kArgKeys * D; i += 128) {
      const int r = i / D, e = i % D;
      ks[r][e] = key0 + r < key_hi ? kb[(key0 + r) * ld + e] : from_f<T>(0.0f);
    }
    __syncthreads();
    for (int nt = 0; nt < kArgKeys / 16; ++nt) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
        wmma::load_matrix_sync(kf, &ks[nt * 16][kk * 16], D + 8);
        wmma::mma_sync(acc, qf[kk], kf, acc);
      }
      wmma::store_matrix_sync(&sc[warp][0][nt * 16], acc, kArgKeys + 4, wmma::mem_row_major);
    }
    __syncwarp();
    for (int c = half * 32; c < half * 32 + 32; ++c) {
      const int64_t j = key0 + c;
      const float s = sc[warp][my_row][c];
      if (j >= lo && j < hi && s > best) {
        best = s;
        best_j = int(j);
      }
    }
    __syncwarp();
  }
  const float other = __shfl_xor_sync(0xffffffffu, best, 1);
  const int other_j = __shfl_xor_sync(0xffffffffu, best_j, 1);
  if (other > best || (other == best && other_j >= 0 && (best_j < 0 || other_j < best_j))) best_j = other_j;
  if (half == 0 && n < g.tokens) argmax[g.stat(b, n, h)] = best_j;
}

// dk_corr[a_i] += scale dc_i q_i (fp32 atomics); one warp per row.
template <typename T>
__global__ void scatter_row_max_kernel(float* __restrict__ dk_corr, const T* __restrict__ q, const int* __restrict__ argmax,
                                       const float* __restrict__ dc, RowGeom g, int d, float scale) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= g.batch * g.tokens * g.heads) return;
  const int64_t h = row % g.heads, n = (row / g.heads) % g.tokens, b = row / (g.heads * g.tokens);
  const int64_t s = g.stat(b, n, h);
  const float coef = scale * dc[s];
  const int64_t target = ((b * g.tokens + argmax[s]) * g.heads + h) * d;
  for (int e = lane; e < d; e += 32) atomicAdd(&dk_corr[target + e], coef * to_f(q[row * d + e]));
}

// dv += dv_lin (frame-major rows); one warp per row.
template <typename T>
__global__ void add_dv_kernel(T* __restrict__ dv, const float* __restrict__ dv_lin, RowGeom g, int d) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= g.batch * g.tokens * g.heads) return;
  const int64_t h = row % g.heads, n = (row / g.heads) % g.tokens, b = row / (g.heads * g.tokens);
  const float* dvl = dv_lin + g.frame_row(b, n, h) * d;
  for (int e = lane; e < d; e += 32) dv[row * d + e] = from_f<T>(to_f(dv[row * d + e]) + dvl[e]);
}

// Every R-th frame of a [B, T, X] tensor <-> a compact [B, Ns, X] one, Ns = ceil(T / R):
// gather copies frame g*R of `full` to frame g of `compact`; scatter copies back (the other
// frames of `full` are left alone).
template <typename T>
__global__ void strided_frames_kernel(T* __restrict__ full, T* __restrict__ compact, int64_t batch, int64_t frames,
                                      int64_t compact_frames, int64_t rate, int64_t x, bool gather) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= batch * compact_frames * x) return;
  const int64_t e = i % x, g = (i / x) % compact_frames, b = i / (x * compact_frames);
  const int64_t f = (b * frames + g * rate) * x + e;
  if (gather)
    compact[i] = full[f];
  else
    full[f] = compact[i];
}

// dq += scale dc k_a, dk += dk_corr, dv += dv_lin; one warp per row.
template <typename T>
__global__ void finalize_backward_kernel(T* __restrict__ dq, T* __restrict__ dk, T* __restrict__ dv,
                                         const T* __restrict__ k, const int* __restrict__ argmax,
                                         const float* __restrict__ dc, const float* __restrict__ dk_corr,
                                         const float* __restrict__ dv_lin, RowGeom g, int d, float scale) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= g.batch * g.tokens * g.heads) return;
  const int64_t h = row % g.heads, n = (row / g.heads) % g.tokens, b = row / (g.heads * g.tokens);
  const int64_t s = g.stat(b, n, h);
  const float coef = scale * dc[s];
  const T* ka = k + ((b * g.tokens + argmax[s]) * g.heads + h) * d;
  const float* dvl = dv_lin + g.frame_row(b, n, h) * d;
  for (int e = lane; e < d; e += 32) {
    const int64_t i = row * d + e;
    dq[i] = from_f<T>(to_f(dq[i]) + coef * to_f(ka[e]));
    dk[i] = from_f<T>(to_f(dk[i]) + dk_corr[i]);
    dv[i] = from_f<T>(to_f(dv[i]) + dvl[e]);
  }
}

constexpr int kRowWarps = 8;
unsigned row_blocks(int64_t rows) { return unsigned(ceil_div(rows, kRowWarps)); }

template <typename T>
const T* cptr(const Tensor& t) {
  return static_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mptr(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// Everything the backward needs (detached).
struct Saved {
  Tensor q, k, v, phi_q, phi_k;  // contiguous inputs
  Tensor o, y;                   // [B, N, H, d]
  Tensor lse_joint, den, ratio;  // [B, H, N] f32
  Tensor argmax;                 // [B, H, N] i32 from the flash forward (undefined: fallback scan)
  Tensor vhat;                   // [B, N, H, d+1] f32
  Tensor state_q;                // Sq [B, T, H, Dp, d+1] f32
  Tensor linear_mask;            // M [T, T] f32
  Tensor k_soft, v_soft;         // the softmax keys/values: k, v (Rehyat), compact (UniformHybrid), none (Linear)
  KeyRange keys;                 // the softmax key ranges over k_soft
  HybridOptions options;
  double scale;
};

// Frames 0, R, 2R, ... of t [B, N, H, d] as a compact contiguous [B, Ns*ft, H, d].
template <typename T>
Tensor gather_frames(const Tensor& t, int64_t frames, int64_t ft, int64_t rate) {
  const int64_t B = t.size(0), x = ft * t.size(2) * t.size(3), ns = (frames + rate - 1) / rate;
  Tensor out = Tensor::empty({B, ns * ft, t.size(2), t.size(3)}, t.dtype(), t.device());
  strided_frames_kernel<T><<<unsigned(ceil_div(B * ns * x, 256)), 256, 0, rehyat::cuda::stream(t.device())>>>(
      const_cast<T*>(static_cast<const T*>(t.data_ptr())), static_cast<T*>(out.data_ptr()), B, frames, ns, rate, x,
      true);
  CUDA_CHECK_LAUNCH();
  return out;
}
// The inverse: a zero [B, T*ft, H, d] with compact's frames at 0, R, 2R, ...
template <typename T>
Tensor scatter_frames(const Tensor& compact, int64_t frames, int64_t ft, int64_t rate) {
  const int64_t B = compact.size(0), x = ft * compact.size(2) * compact.size(3), ns = compact.size(1) / ft;
  Tensor out = Tensor::zeros({B, frames * ft, compact.size(2), compact.size(3)}, compact.dtype(), compact.device());
  strided_frames_kernel<T><<<unsigned(ceil_div(B * ns * x, 256)), 256, 0, rehyat::cuda::stream(compact.device())>>>(
      static_cast<T*>(out.data_ptr()), const_cast<T*>(static_cast<const T*>(compact.data_ptr())), B, frames, ns,
      rate, x, false);
  CUDA_CHECK_LAUNCH();
  return out;
}

// Frame f of a [B, N, H, x] tensor for batch b: [H, ft, x] (strides x, H*x, 1).
Tensor frame_rows(const Tensor& t, int64_t b, int64_t f, int64_t ft) {
  return t.select(0, b).slice(0, f * ft, (f + 1) * ft).permute({1, 0, 2});
}

// Operands of the GEMMs batched over (b, h, f) (dims of one frame):
//   tok(p, x): frame f's [ft, x] rows of head h in a token-major [B, N, H, x] tensor;
//   fm(p, r, x): the [r, x] block (b, f, h) of a frame-major [B, T, H, r, x] tensor.
struct Layout {
  int64_t N, H, T, ft;
  GemmOp tok(const float* p, int64_t x, bool transposed = false) const {
    return {p, H * x, transposed, ft * H * x, x, N * H * x};
  }
  GemmOp fm(const float* p, int64_t r, int64_t x, bool transposed = false) const {
    return {p, x, transposed, H * r * x, r * x, T * H * r * x};
  }
};

template <typename T>
Tensor forward_impl(Saved& s, const hybrid_detail::Dims& n) {
  const Tensor &q = s.q, &k = s.k, &v = s.v;
  const Device dev = q.device();
  const cudaStream_t stream = rehyat::cuda::stream(dev);
  const int64_t B = n.batch, N = n.tokens, H = n.heads, d = n.head_dim, Dp = n.feature_dim, T_ = n.frames;
  const int64_t ft = s.options.frame_tokens, W = ext_width(d);
  PhaseTimer timer("fwd", stream);
  Tensor lse, row_max;
  if (s.options.kind == AttentionKind::Rehyat) {
    s.k_soft = k;
    s.v_soft = v;
    s.keys.frame_tokens = ft;
    s.keys.chunk_frames = s.options.chunk_frames;
    s.keys.overlap_frames = s.options.overlap_frames;
  } else if (s.options.kind == AttentionKind::UniformHybrid) {
    s.k_soft = gather_frames<T>(k, T_, ft, s.options.rate);
    s.v_soft = gather_frames<T>(v, T_, ft, s.options.rate);
    s.keys = KeyRange{};  // every query sees every softmax key
  }
  if (s.k_soft.defined()) {
    s.o = Tensor::empty(q.shape(), q.dtype(), dev);
    lse = Tensor::empty({B, H, N}, DType::F32, dev);
    row_max = Tensor::empty({B, H, N}, DType::F32, dev);
    s.argmax = Tensor::empty({B, H, N}, DType::I32, dev);
    if (!softmax_attention_forward_argmax(s.o, lse, row_max, s.argmax, q, s.k_soft, s.v_soft, s.scale, s.keys)) {
      REHYAT_CHECK(s.options.kind == AttentionKind::Rehyat,
                   "hybrid_attention: the flash kernels did not take the uniform_hybrid problem q {}", q.str());
      s.argmax = Tensor();
      softmax_attention_forward(s.o, lse, row_max, q, s.k_soft, s.v_soft, s.scale, s.keys);
    }
  }
  timer.mark("flash");

  s.vhat = Tensor::empty({B, N, H, W}, DType::F32, dev);
  const int64_t rows = B * N * H;
  extend_values_kernel<T><<<unsigned(ceil_div(rows * W, 256)), 256, 0, stream>>>(mptr<float>(s.vhat), cptr<T>(v),
                                                                                  rows, int(d), int(W));
  CUDA_CHECK_LAUNCH();
  timer.mark("vhat");
  const Layout L{N, H, T_, ft};
  const float *pq = cptr<float>(s.phi_q), *pk = cptr<float>(s.phi_k);
  // Sf[b, f, h] = phi_k(f, h)^T vhat(f, h)   [Dp, W]
  Tensor state_f = Tensor::empty({B, T_, H, Dp, W}, DType::F32, dev);
  gemm_f32(stream, dev, Dp, W, ft, L.tok(pk, Dp, true), L.tok(cptr<float>(s.vhat), W),
           L.fm(cptr<float>(state_f), Dp, W), B, H, T_);
  timer.mark("Sf");
  s.state_q = Tensor::empty({B, T_, H * Dp * W}, DType::F32, dev);
  rehyat::kernels::matmul(s.state_q, s.linear_mask, state_f.view({B, T_, H * Dp * W}));
  s.state_q = s.state_q.view({B, T_, H, Dp, W});
  timer.mark("Sq");
  // aL[b, f, h] = phi_q(f, h) Sq[b, f, h]   [ft, W]
  Tensor a_lin = Tensor::empty({B, T_, H, ft, W}, DType::F32, dev);
  gemm_f32(stream, dev, ft, W, Dp, L.tok(pq, Dp), L.fm(cptr<float>(s.state_q), Dp, W), L.fm(cptr<float>(a_lin), ft, W),
           B, H, T_);
  timer.mark("aL");
  s.y = Tensor::empty(q.shape(), q.dtype(), dev);
  s.lse_joint = Tensor::empty({B, H, N}, DType::F32, dev);
  s.den = Tensor::empty({B, H, N}, DType::F32, dev);
  s.ratio = Tensor::empty({B, H, N}, DType::F32, dev);
  const RowGeom g{B, N, H, T_, ft};
  combine_forward_kernel<T><<<row_blocks(rows), kRowWarps * 32, 0, stream>>>(
      mptr<T>(s.y), mptr<float>(s.lse_joint), mptr<float>(s.den), mptr<float>(s.ratio),
      s.o.defined() ? cptr<T>(s.o) : nullptr, s.o.defined() ? cptr<float>(lse) : nullptr,
      s.o.defined() ? cptr<float>(row_max) : nullptr, cptr<float>(a_lin), g, int(d), int(W),
      float(s.options.linear_eps));
  CUDA_CHECK_LAUNCH();
  timer.mark("combine");
  return s.y;
}

template <typename T>
std::vector<Tensor> backward_impl(const Saved& s, const Tensor& dy_in, const hybrid_detail::Dims& n) {
  const Device dev = s.q.device();
  const cudaStream_t stream = rehyat::cuda::stream(dev);
  const int64_t B = n.batch, N = n.tokens, H = n.heads, d = n.head_dim, Dp = n.feature_dim, T_ = n.frames;
  const int64_t ft = s.options.frame_tokens, rows = B * N * H, W = ext_width(d);
  PhaseTimer timer("bwd", stream);
  Tensor dy = dy_in.dtype() == s.q.dtype() ? dy_in.contiguous() : dy_in.to(s.q.dtype()).contiguous();
  const bool softmax = s.k_soft.defined();
  const bool uniform = s.options.kind == AttentionKind::UniformHybrid;
  const RowGeom g{B, N, H, T_, ft};
  Tensor ghat = Tensor::empty({B, T_, H, ft, W}, DType::F32, dev);  // frame-major rows
  Tensor dc = Tensor::empty({B, H, N}, DType::F32, dev);
  prepare_backward_kernel<T><<<row_blocks(rows), kRowWarps * 32, 0, stream>>>(
      mptr<float>(ghat), mptr<float>(dc), cptr<T>(dy), cptr<T>(s.y), softmax ? cptr<T>(s.o) : nullptr,
      cptr<float>(s.den), cptr<float>(s.ratio), g, int(d), int(W));
  CUDA_CHECK_LAUNCH();
  timer.mark("prepare");
  // Softmax part (with the row-max correction folded in when the forward tracked the arg-max),
  // on the softmax keys; UniformHybrid's compact key gradients go back to their frames.
  Tensor dq, dk, dv;
  bool folded = true;
  if (softmax) {
    dq = Tensor::empty(s.q.shape(), s.q.dtype(), dev);
    dk = Tensor::empty(s.k_soft.shape(), s.q.dtype(), dev);
    dv = Tensor::empty(s.k_soft.shape(), s.q.dtype(), dev);
    folded = s.argmax.defined() && softmax_attention_backward_row_max(dq, dk, dv, dy, s.q, s.k_soft, s.v_soft, s.y,
                                                                      s.lse_joint, s.argmax, dc, s.scale, s.keys);
    if (!folded) softmax_attention_backward(dq, dk, dv, dy, s.q, s.k, s.v, s.y, s.lse_joint, s.scale, s.keys);
    if (uniform) {
      dk = scatter_frames<T>(dk, T_, ft, s.options.rate);
      dv = scatter_frames<T>(dv, T_, ft, s.options.rate);
    }
  } else {
    // Linear: q and k only enter through phi (computed outside): their gradient here is 0.
    dq = Tensor::zeros(s.q.shape(), s.q.dtype(), dev);
    dk = Tensor::zeros(s.q.shape(), s.q.dtype(), dev);
    dv = Tensor::zeros(s.q.shape(), s.q.dtype(), dev);
  }
  timer.mark("flash");

  // Linear part: per-(b, h) GEMMs batched over frames; dphi written in its [B, N, H, Dp] layout.
  const Layout L{N, H, T_, ft};
  const float *pq = cptr<float>(s.phi_q), *pk = cptr<float>(s.phi_k), *gh = cptr<float>(ghat);
  const float *sq = cptr<float>(s.state_q), *vh = cptr<float>(s.vhat);
  Tensor dphi_q = Tensor::empty({B, N, H, Dp}, DType::F32, dev);
  Tensor state_r = Tensor::empty({B, T_, H, Dp, W}, DType::F32, dev);
  // dphi_q(f, h) = ghat(f, h) Sq^T   [ft, Dp]
  gemm_f32(stream, dev, ft, Dp, W, L.fm(gh, ft, W), L.fm(sq, Dp, W, true), L.tok(cptr<float>(dphi_q), Dp), B, H, T_);
  timer.mark("dphi_q");
  // Rq(f, h) = phi_q(f, h)^T ghat(f, h)   [Dp, W]
  gemm_f32(stream, dev, Dp, W, ft, L.tok(pq, Dp, true), L.fm(gh, ft, W), L.fm(cptr<float>(state_r), Dp, W), B, H, T_);
  timer.mark("Rq");
  Tensor state_k = Tensor::empty({B, T_, H * Dp * W}, DType::F32, dev);
  rehyat::kernels::matmul(state_k, s.linear_mask.transpose(0, 1), state_r.view({B, T_, H * Dp * W}));
  const float* rk = cptr<float>(state_k);
  Tensor dphi_k = Tensor::empty({B, N, H, Dp}, DType::F32, dev);
  Tensor dv_lin = Tensor::empty({B, T_, H, ft, d}, DType::F32, dev);
  // dphi_k(f, h) = vhat(f, h) R^T   [ft, Dp]
  timer.mark("R");
  gemm_f32(stream, dev, ft, Dp, W, L.tok(vh, W), L.fm(rk, Dp, W, true), L.tok(cptr<float>(dphi_k), Dp), B, H, T_);
  timer.mark("dphi_k");
  // dv_lin(f, h) = phi_k(f, h) R[:, :d]   [ft, d]
  gemm_f32(stream, dev, ft, d, Dp, L.tok(pk, Dp), L.fm(rk, Dp, W), L.fm(cptr<float>(dv_lin), ft, d), B, H, T_);
  timer.mark("dv_lin");

  if (folded) {
    add_dv_kernel<T><<<row_blocks(rows), kRowWarps * 32, 0, stream>>>(mptr<T>(dv), cptr<float>(dv_lin), g, int(d));
    CUDA_CHECK_LAUNCH();
    timer.mark("add_dv");
    return {dq, dk, dv, dphi_q, dphi_k};
  }
  // Row max (fallback; Rehyat only: the forward insists on the flash kernels otherwise).
  Tensor argmax = Tensor::empty({B, H, N}, DType::I32, dev);
  const dim3 grid(unsigned(ceil_div(N, kArgRows)), unsigned(B * H));
  auto scan = d == 64 ? row_argmax_kernel<T, 64> : row_argmax_kernel<T, 128>;
  scan<<<grid, 128, 0, stream>>>(mptr<int>(argmax), cptr<T>(s.q), cptr<T>(s.k), g, s.options.chunk_frames,
                                 s.options.overlap_frames);
  CUDA_CHECK_LAUNCH();
  Tensor dk_corr = Tensor::zeros(s.q.shape(), DType::F32, dev);
  scatter_row_max_kernel<T><<<row_blocks(rows), kRowWarps * 32, 0, stream>>>(
      mptr<float>(dk_corr), cptr<T>(s.q), cptr<int>(argmax), cptr<float>(dc), g, int(d), float(s.scale));
  CUDA_CHECK_LAUNCH();
  finalize_backward_kernel<T><<<row_blocks(rows), kRowWarps * 32, 0, stream>>>(
      mptr<T>(dq), mptr<T>(dk), mptr<T>(dv), cptr<T>(s.k), cptr<int>(argmax), cptr<float>(dc), cptr<float>(dk_corr),
      cptr<float>(dv_lin), g, int(d), float(s.scale));
  CUDA_CHECK_LAUNCH();
  return {dq, dk, dv, dphi_q, dphi_k};
}
}  // namespace

bool hybrid_supported(const Tensor& q, const Tensor& phi_q, const HybridOptions& options) {
  return options.kind != AttentionKind::Softmax && (q.dtype() == DType::BF16 || q.dtype() == DType::F16) &&
         (q.size(3) == 64 || q.size(3) == 128) && phi_q.dtype() == DType::F32;
}

Tensor hybrid_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& phi_q, const Tensor& phi_k,
                        const HybridOptions& options) {
  const hybrid_detail::Dims n = hybrid_detail::check_inputs("hybrid_attention", q, k, v, phi_q, phi_k, options);
  rehyat::cuda::set_device(q.device().index);
  auto saved = std::make_shared<Saved>();
  Saved& s = *saved;
  s.q = q.detach().contiguous();
  s.k = k.detach().contiguous();
  s.v = v.detach().contiguous();
  s.phi_q = phi_q.detach().contiguous();
  s.phi_k = phi_k.detach().contiguous();
  s.options = options;
  s.scale = hybrid_detail::resolved_scale(options, n.head_dim);
  std::vector<double> mask(size_t(n.frames * n.frames));
  for (int64_t f = 0; f < n.frames; ++f)
    for (int64_t g = 0; g < n.frames; ++g)
      mask[size_t(f * n.frames + g)] = hybrid_detail::key_class(options, n.frames, f, g) == KeyClass::Linear;
  s.linear_mask = Tensor::from_vector(mask, {n.frames, n.frames}, DType::F32, q.device());
  const bool bf16 = q.dtype() == DType::BF16;
  Tensor y = bf16 ? forward_impl<__nv_bfloat16>(s, n) : forward_impl<__half>(s, n);
  y = y.detach();
  if (autograd::should_record({&q, &k, &v, &phi_q, &phi_k})) {
    autograd::record("hybrid_attention", y, {q, k, v, phi_q, phi_k}, [saved, n, bf16](const Tensor& g, const Node&) {
      return bf16 ? backward_impl<__nv_bfloat16>(*saved, g, n) : backward_impl<__half>(*saved, g, n);
    });
  } else {
    s.vhat = s.state_q = s.o = s.argmax = s.k_soft = s.v_soft = Tensor();
  }
  return y;
}

}  // namespace rehyat::attention::kernels::cuda
