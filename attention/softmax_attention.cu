// Softmax attention on CUDA (contract: attention/softmax_attention.h).
//
// Why this file looks the way it does:
// - The forward saves per (batch, head, query row) two fp32 statistics: lse (log-sum-exp
//   of the scaled scores over the row's key range) and row_max (the max of those scores,
//   the constant c of ReHyAt's hybrid attention). o, lse and row_max are assigned.
//   The flash forward keeps, per row, the running max m, the running denominator
//   l = sum exp(s - m) and the un-normalized numerator acc = sum exp(s - m) v in
//   registers; its epilogue (store_forward_rows) turns those into o = acc / l,
//   lse = m + log l, row_max = m. A hybrid variant needs (acc, l, m) un-normalized:
//   it replaces only that epilogue.
// - The backward recomputes P = exp(s - lse) tile by tile (nothing N x N is stored):
//   a preprocess assigns delta = rowsum(dO * o) [B, H, Nq] (fp32 scratch); the key-tile
//   kernel assigns dk and dv (accumulated in registers over the query tiles that see
//   the key tile, written once); dq is accumulated (+=) with fp32 reductions
//   (red.global.add.v2.f32) into an fp32 scratch [B, Nq, H, d] zeroed first, then
//   converted and assigned to dq. Five matrix products per tile pair, no separate dq pass.
// - Key ranges: a query tile loops over the union of its rows' key ranges and masks
//   entries outside each row's own range (chunk boundaries fall inside tiles); a key
//   tile loops over the union of the query rows that see any of its keys.
// - Fast path (bf16 / f16, head dim 64 or 128, 16-byte aligned rows; sm_90a): wgmma.
//   Tiles are copied with cp.async into the 128-byte-swizzled layout wgmma reads through
//   shared-memory descriptors; products with both operands in shared memory (Q K^T,
//   V dO^T, dS K) run shared x shared, and those whose left operand is a fresh
//   accumulator (P V, P^T dO, dS^T Q) take it from registers: a wgmma accumulator
//   fragment converted to bf16/f16 pairs is exactly the A-register fragment. Operands
//   stored row-major along the output dimension (V, dO, Q, K as right operands; dS^T as
//   the left one) are transposed by the descriptor, never in memory. Warp w of the CTA
//   owns accumulator rows [16 w, 16 w + 16); exp2-based online softmax on the SFU.
// - Generic path (f32, f64, other head dims, unaligned views): one warp per query row
//   (forward, dq) or per key row (dk, dv), exact online softmax in acc_t; slow, correct.
// Kernels never allocate: the adapters allocate scratch through Tensor::empty.
#include "core/ops/cuda_common.cuh"  // first: it configures fmt for nvcc

#include <cmath>

#include "attention/softmax_attention_cuda.h"

namespace rehyat::attention::kernels::cuda {

using rehyat::kernels::cuda::acc_t;
using rehyat::kernels::cuda::ceil_div;
using rehyat::kernels::cuda::from_acc;
using rehyat::kernels::cuda::kWarpSize;
using rehyat::kernels::cuda::ptr;
using rehyat::kernels::cuda::to_acc;
using rehyat::kernels::cuda::warp_sum;

namespace {

// --- key ranges on the device ---------------------------------------------------------------

struct DeviceKeyRange {
  int64_t frame_tokens = 0;  // 0: full attention
  int64_t chunk_frames = 0;
  int64_t overlap_frames = 0;
  int64_t num_keys = 0;
  int64_t num_queries = 0;

  // Key tokens [begin, end) seen by query token i (monotone non-decreasing in i).
  __host__ __device__ __forceinline__ void keys_of(int64_t i, int64_t& begin, int64_t& end) const {
    if (chunk_frames == 0) {
      begin = 0;
      end = num_keys;
      return;
    }
    const int64_t frames = num_keys / frame_tokens;
    const int64_t chunk = (i / frame_tokens) / chunk_frames;
    const int64_t first = chunk * chunk_frames - overlap_frames;
    const int64_t last = (chunk + 1) * chunk_frames;
    begin = (first > 0 ? first : 0) * frame_tokens;
    end = (last < frames ? last : frames) * frame_tokens;
  }
  // Query tokens [begin, end) that see key token j (monotone non-decreasing in j): the
  // chunks t with t*C - O <= f_j < (t+1)*C, i.e. t in [f_j / C, (f_j + O) / C].
  __host__ __device__ __forceinline__ void queries_of(int64_t j, int64_t& begin, int64_t& end) const {
    if (chunk_frames == 0) {
      begin = 0;
      end = num_queries;
      return;
    }
    const int64_t frames = num_queries / frame_tokens;
    const int64_t frame = j / frame_tokens;
    const int64_t first = frame / chunk_frames, last = (frame + overlap_frames) / chunk_frames + 1;
    begin = first * chunk_frames * frame_tokens;
    const int64_t end_frame = last * chunk_frames;
    end = (end_frame < frames ? end_frame : frames) * frame_tokens;
  }
};

DeviceKeyRange device_key_range(const KeyRange& keys, int64_t num_queries, int64_t num_keys) {
  DeviceKeyRange r;
  if (keys.chunked()) {
    r.frame_tokens = keys.frame_tokens;
    r.chunk_frames = keys.chunk_frames;
    r.overlap_frames = keys.overlap_frames;
  }
  r.num_keys = num_keys;
  r.num_queries = num_queries;
  return r;
}

// Strides (elements) of a [B, N, H, d] tensor with unit stride on d.
struct RowStrides {
  int64_t batch, token, head;
};
RowStrides row_strides(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// ============================================================================================
// Generic path: a warp per row, lanes over the head dim (at most kGenericMaxDim).
// ============================================================================================

constexpr int kGenericMaxDim = 256;
constexpr int kGenericPerLane = kGenericMaxDim / kWarpSize;
constexpr int kGenericWarps = 4;

// o, lse, row_max for one (batch, head, query) row per warp.
template <typename T>
__global__ void generic_forward_kernel(T* __restrict__ o, float* __restrict__ lse32, double* __restrict__ lse64,
                                       float* __restrict__ max32, double* __restrict__ max64,
                                       const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                       RowStrides qs, RowStrides ks, RowStrides vs, int64_t batch, int heads,
                                       int head_dim, acc_t<T> scale, DeviceKeyRange range) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kGenericWarps + threadIdx.x / kWarpSize;  // (b, h, i)
  if (row >= batch * heads * range.num_queries) return;
  const int64_t i = row % range.num_queries, bh = row / range.num_queries;
  const int h = int(bh % heads);
  const int64_t b = bh / heads;
  A qv[kGenericPerLane], acc[kGenericPerLane];
  const T* qi = q + b * qs.batch + i * qs.token + h * qs.head;
#pragma unroll
  for (int c = 0; c < kGenericPerLane; ++c) {
    const int e = lane + c * kWarpSize;
    qv[c] = e < head_dim ? to_acc(qi[e]) * scale : A(0);
    acc[c] = 0;
  }
  int64_t begin, end;
  range.keys_of(i, begin, end);
  A m = -INFINITY, l = 0;
  for (int64_t j = begin; j < end; ++j) {
    const T* kj = k + b * ks.batch + j * ks.token + h * ks.head;
    const T* vj = v + b * vs.batch + j * vs.token + h * vs.head;
    A dot = 0;
#pragma unroll
    for (int c = 0; c < kGenericPerLane; ++c) {
      const int e = lane + c * kWarpSize;
      if (e < head_dim) dot += qv[c] * to_acc(kj[e]);
    }
    const A s = warp_sum(dot);
    const A m_new = s > m ? s : m;
    const A correction = exp(m - m_new), p = exp(s - m_new);
    l = l * correction + p;
#pragma unroll
    for (int c = 0; c < kGenericPerLane; ++c) {
      const int e = lane + c * kWarpSize;
      if (e < head_dim) acc[c] = acc[c] * correction + p * to_acc(vj[e]);
    }
    m = m_new;
  }
  T* oi = o + ((b * range.num_queries + i) * heads + h) * int64_t(head_dim);
#pragma unroll
  for (int c = 0; c < kGenericPerLane; ++c) {
    const int e = lane + c * kWarpSize;
    if (e < head_dim) oi[e] = from_acc<T>(acc[c] / l);
  }
  if (lane == 0) {
    const int64_t stat = bh * range.num_queries + i;
    if (lse64) {
      lse64[stat] = double(m) + log(double(l));
      max64[stat] = double(m);
    } else {
      lse32[stat] = float(m) + logf(float(l));
      max32[stat] = float(m);
    }
  }
}

// delta[b, h, i] = dO_i . o_i (acc_t of T), one warp per row.
template <typename T>
__global__ void generic_delta_kernel(acc_t<T>* __restrict__ delta, const T* __restrict__ d_o, RowStrides dos,
                                     const T* __restrict__ o, int64_t batch, int heads, int64_t queries,
                                     int head_dim) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kGenericWarps + threadIdx.x / kWarpSize;
  if (row >= batch * heads * queries) return;
  const int64_t i = row % queries, bh = row / queries;
  const int h = int(bh % heads);
  const int64_t b = bh / heads;
  const T* doi = d_o + b * dos.batch + i * dos.token + h * dos.head;
  const T* oi = o + ((b * queries + i) * heads + h) * int64_t(head_dim);
  A dot = 0;
  for (int e = lane; e < head_dim; e += kWarpSize) dot += to_acc(doi[e]) * to_acc(oi[e]);
  dot = warp_sum(dot);
  if (lane == 0) delta[row] = dot;
}

// dq_i = scale * sum_j P_ij (dO_i.v_j - delta_i) k_j, one warp per query row (assigned).
template <typename T>
__global__ void generic_dq_kernel(T* __restrict__ dq, const T* __restrict__ d_o, RowStrides dos,
                                  const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                  RowStrides qs, RowStrides ks, RowStrides vs, const acc_t<T>* __restrict__ lse,
                                  const acc_t<T>* __restrict__ delta, int64_t batch, int heads, int head_dim,
                                  acc_t<T> scale, DeviceKeyRange range) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kGenericWarps + threadIdx.x / kWarpSize;
  if (row >= batch * heads * range.num_queries) return;
  const int64_t i = row % range.num_queries, bh = row / range.num_queries;
  const int h = int(bh % heads);
  const int64_t b = bh / heads;
  A qv[kGenericPerLane], dov[kGenericPerLane], acc[kGenericPerLane];
  const T* qi = q + b * qs.batch + i * qs.token + h * qs.head;
  const T* doi = d_o + b * dos.batch + i * dos.token + h * dos.head;
#pragma unroll
  for (int c = 0; c < kGenericPerLane; ++c) {
    const int e = lane + c * kWarpSize;
    qv[c] = e < head_dim ? to_acc(qi[e]) : A(0);
    dov[c] = e < head_dim ? to_acc(doi[e]) : A(0);
    acc[c] = 0;
  }
  const A lse_i = lse[row], delta_i = delta[row];
  int64_t begin, end;
  range.keys_of(i, begin, end);
  for (int64_t j = begin; j < end; ++j) {
    const T* kj = k + b * ks.batch + j * ks.token + h * ks.head;
    const T* vj = v + b * vs.batch + j * vs.token + h * vs.head;
    A dot = 0, dp = 0;
#pragma unroll
    for (int c = 0; c < kGenericPerLane; ++c) {
      const int e = lane + c * kWarpSize;
      if (e < head_dim) {
        dot += qv[c] * to_acc(kj[e]);
        dp += dov[c] * to_acc(vj[e]);
      }
    }
    dot = warp_sum(dot);
    dp = warp_sum(dp);
    const A ds = exp(dot * scale - lse_i) * (dp - delta_i);
#pragma unroll
    for (int c = 0; c < kGenericPerLane; ++c) {
      const int e = lane + c * kWarpSize;
      if (e < head_dim) acc[c] += ds * to_acc(kj[e]);
    }
  }
  T* dqi = dq + ((b * range.num_queries + i) * heads + h) * int64_t(head_dim);
#pragma unroll
  for (int c = 0; c < kGenericPerLane; ++c) {
    const int e = lane + c * kWarpSize;
    if (e < head_dim) dqi[e] = from_acc<T>(acc[c] * scale);
  }
}

// dk_j = scale * sum_i dS_ij q_i, dv_j = sum_i P_ij dO_i, one warp per key row (assigned).
template <typename T>
__global__ void generic_dkdv_kernel(T* __restrict__ dk, T* __restrict__ dv, const T* __restrict__ d_o,
                                    RowStrides dos, const T* __restrict__ q, const T* __restrict__ k,
                                    const T* __restrict__ v, RowStrides qs, RowStrides ks, RowStrides vs,
                                    const acc_t<T>* __restrict__ lse, const acc_t<T>* __restrict__ delta,
                                    int64_t batch, int heads, int head_dim, acc_t<T> scale, DeviceKeyRange range) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kGenericWarps + threadIdx.x / kWarpSize;
  if (row >= batch * heads * range.num_keys) return;
  const int64_t j = row % range.num_keys, bh = row / range.num_keys;
  const int h = int(bh % heads);
  const int64_t b = bh / heads;
  A kv[kGenericPerLane], vv[kGenericPerLane], gk[kGenericPerLane], gv[kGenericPerLane];
  const T* kj = k + b * ks.batch + j * ks.token + h * ks.head;
  const T* vj = v + b * vs.batch + j * vs.token + h * vs.head;
#pragma unroll
  for (int c = 0; c < kGenericPerLane; ++c) {
    const int e = lane + c * kWarpSize;
    kv[c] = e < head_dim ? to_acc(kj[e]) : A(0);
    vv[c] = e < head_dim ? to_acc(vj[e]) : A(0);
    gk[c] = gv[c] = 0;
  }
  int64_t begin, end;
  range.queries_of(j, begin, end);
  for (int64_t i = begin; i < end; ++i) {
    const T* qi = q + b * qs.batch + i * qs.token + h * qs.head;
    const T* doi = d_o + b * dos.batch + i * dos.token + h * dos.head;
    A dot = 0, dp = 0;
#pragma unroll
    for (int c = 0; c < kGenericPerLane; ++c) {
      const int e = lane + c * kWarpSize;
      if (e < head_dim) {
        dot += kv[c] * to_acc(qi[e]);
        dp += vv[c] * to_acc(doi[e]);
      }
    }
    dot = warp_sum(dot);
    dp = warp_sum(dp);
    const int64_t stat = bh * range.num_queries + i;
    const A p = exp(dot * scale - lse[stat]);
    const A ds = p * (dp - delta[stat]);
#pragma unroll
    for (int c = 0; c < kGenericPerLane; ++c) {
      const int e = lane + c * kWarpSize;
      if (e < head_dim) {
        gk[c] += ds * to_acc(qi[e]);
        gv[c] += p * to_acc(doi[e]);
      }
    }
  }
  const int64_t out = ((b * range.num_keys + j) * heads + h) * int64_t(head_dim);
#pragma unroll
  for (int c = 0; c < kGenericPerLane; ++c) {
    const int e = lane + c * kWarpSize;
    if (e < head_dim) {
      dk[out + e] = from_acc<T>(gk[c] * scale);
      dv[out + e] = from_acc<T>(gv[c]);
    }
  }
}

template <typename T>
void generic_forward(Tensor& o, Tensor& lse, Tensor& row_max, const Tensor& q, const Tensor& k, const Tensor& v,
                     double scale, const DeviceKeyRange& range, cudaStream_t stream) {
  REHYAT_CHECK(q.size(3) <= kGenericMaxDim, "softmax_attention: head dim {} > {} is not supported", q.size(3),
               kGenericMaxDim);
  const int64_t rows = q.size(0) * q.size(2) * q.size(1);
  const bool f64 = lse.dtype() == DType::F64;
  generic_forward_kernel<T><<<unsigned(ceil_div(rows, kGenericWarps)), kGenericWarps * kWarpSize, 0, stream>>>(
      ptr<T>(o), f64 ? nullptr : ptr<float>(lse), f64 ? ptr<double>(lse) : nullptr,
      f64 ? nullptr : ptr<float>(row_max), f64 ? ptr<double>(row_max) : nullptr, ptr<const T>(q), ptr<const T>(k),
      ptr<const T>(v), row_strides(q), row_strides(k), row_strides(v), q.size(0), int(q.size(2)), int(q.size(3)),
      acc_t<T>(scale), range);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void generic_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& d_o, const Tensor& q, const Tensor& k,
                      const Tensor& v, const Tensor& o, const Tensor& lse, double scale, const DeviceKeyRange& range,
                      cudaStream_t stream) {
  using A = acc_t<T>;
  REHYAT_CHECK(q.size(3) <= kGenericMaxDim, "softmax_attention_backward: head dim {} > {} is not supported",
               q.size(3), kGenericMaxDim);
  const int64_t batch = q.size(0);
  const int heads = int(q.size(2)), head_dim = int(q.size(3));
  // lse in A (f32 statistics for every dtype but f64, which has f64 ones).
  REHYAT_CHECK(lse.dtype() == (std::is_same_v<A, double> ? DType::F64 : DType::F32),
               "softmax_attention_backward: lse {} does not fit {}", lse.str(), q.str());
  Tensor delta = Tensor::empty(lse.shape(), lse.dtype(), lse.device());  // [B, H, Nq] scratch
  const int threads = kGenericWarps * kWarpSize;
  const int64_t query_rows = batch * heads * range.num_queries, key_rows = batch * heads * range.num_keys;
  generic_delta_kernel<T><<<unsigned(ceil_div(query_rows, kGenericWarps)), threads, 0, stream>>>(
      ptr<A>(delta), ptr<const T>(d_o), row_strides(d_o), ptr<const T>(o), batch, heads, range.num_queries,
      head_dim);
  CUDA_CHECK_LAUNCH();
  generic_dq_kernel<T><<<unsigned(ceil_div(query_rows, kGenericWarps)), threads, 0, stream>>>(
      ptr<T>(dq), ptr<const T>(d_o), row_strides(d_o), ptr<const T>(q), ptr<const T>(k), ptr<const T>(v),
      row_strides(q), row_strides(k), row_strides(v), ptr<const A>(lse), ptr<const A>(delta), batch, heads,
      head_dim, A(scale), range);
  CUDA_CHECK_LAUNCH();
  generic_dkdv_kernel<T><<<unsigned(ceil_div(key_rows, kGenericWarps)), threads, 0, stream>>>(
      ptr<T>(dk), ptr<T>(dv), ptr<const T>(d_o), row_strides(d_o), ptr<const T>(q), ptr<const T>(k),
      ptr<const T>(v), row_strides(q), row_strides(k), row_strides(v), ptr<const A>(lse), ptr<const A>(delta),
      batch, heads, head_dim, A(scale), range);
  CUDA_CHECK_LAUNCH();
}

// ============================================================================================
// Fast path: flash kernels on tensor cores (bf16 / f16, head dim 64 or 128).
// ============================================================================================

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct FlashArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* d_o;   // backward only
  void* o;           // forward: output; backward: the forward's o (delta preprocess)
  void* dq;
  void* dk;
  void* dv;
  float* lse;        // [B, H, Nq]
  float* row_max;    // [B, H, Nq], forward only
  int* argmax;       // [B, H, Nq], forward with kArgmax only: each row's arg-max key (first on ties)
  const int* row_argmax;  // [B, H, Nq], backward with kRowMax only: the forward's argmax
  const float* row_dc;    // [B, H, Nq], backward with kRowMax only: gradient of the row max
  const float* delta;  // [B, H, Nq], backward only
  RowStrides qs, ks, vs, dos;
  int heads;
  float scale, scale_log2;
  DeviceKeyRange range;
};

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

template <typename T>
__device__ __forceinline__ float unpack_lo(uint32_t bits) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __uint_as_float(bits << 16);
  else return __half2float(__ushort_as_half((unsigned short)(bits & 0xffffu)));
}
template <typename T>
__device__ __forceinline__ float unpack_hi(uint32_t bits) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __uint_as_float(bits & 0xffff0000u);
  else return __half2float(__ushort_as_half((unsigned short)(bits >> 16)));
}

// 2^x on the special-function unit (flushes denormals; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void cp_async16(uint32_t smem_addr, const void* gptr, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gptr),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

// Accumulator tiles (16 x KR, fp32) as A fragments in T.
template <typename T, int KR>
__device__ __forceinline__ void pack_a_fragments(uint32_t (&a)[KR / 16][4], const float (&p)[KR / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < KR / 16; ++kk) {
    a[kk][0] = pack2<T>(p[2 * kk][0], p[2 * kk][1]);
    a[kk][1] = pack2<T>(p[2 * kk][2], p[2 * kk][3]);
    a[kk][2] = pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[kk][3] = pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
  }
}

// Forward epilogue: the per-row state of the online softmax (acc = sum exp(s - m) v,
// l = sum exp(s - m), m in log2 units of the scaled score) becomes o = acc / l,
// lse = (m + log2 l) ln 2, row_max = m ln 2. A hybrid-attention variant replaces this
// function to keep acc, l and m un-normalized.
template <typename T, int D, bool kArgmax>
__device__ __forceinline__ void store_forward_rows(const FlashArgs& a, int64_t b, int h, int64_t row,
                                                   const float (&acc)[D / 8][4], int half, float l, float m,
                                                   int argmax) {
  const int lane = threadIdx.x % kWarpSize;
  if (row >= a.range.num_queries) return;
  const float inv = 1.f / l;
  T* out = static_cast<T*>(a.o) + ((b * a.range.num_queries + row) * a.heads + h) * D;
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt)
    *reinterpret_cast<uint32_t*>(out + nt * 8 + 2 * (lane & 3)) =
        pack2<T>(acc[nt][2 * half] * inv, acc[nt][2 * half + 1] * inv);
  if ((lane & 3) == 0) {
    const int64_t stat = (b * a.heads + h) * a.range.num_queries + row;
    a.lse[stat] = (m + log2f(l)) * kLn2;
    a.row_max[stat] = m * kLn2;
    if constexpr (kArgmax) a.argmax[stat] = argmax;
  }
}

// --- wgmma (sm_90a) building blocks ---------------------------------------------------

// wgmma tiles: [rows][D] split into 64-column blocks ([D/64][rows][64]), each row 128 bytes
// with its 16-byte chunks XOR-swizzled by (row % 8): the 128-byte swizzle layout wgmma
// reads through a shared-memory descriptor (tile blocks 1024-byte aligned).
template <int ROWS>
__device__ __forceinline__ int wg_offset(int row, int chunk) {
  return (chunk >> 3) * ROWS * 64 + row * 64 + (((chunk & 7) ^ (row & 7)) << 3);
}

template <typename T, int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_wg_tile(T* tile, const T* base, int64_t row_stride, int64_t row0,
                                             int64_t rows_total) {
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int it = 0; it < ROWS * kChunks / THREADS; ++it) {
    const int idx = int(threadIdx.x) + it * THREADS;
    const int row = idx / kChunks, chunk = idx % kChunks;
    const int64_t token = row0 + row;
    const bool valid = token < rows_total;
    const T* src = base + (valid ? token * row_stride : 0) + chunk * 8;
    cp_async16(smem_u32(tile + wg_offset<ROWS>(row, chunk)), src, valid);
  }
}

// Shared-memory matrix descriptor, 128-byte swizzle. K-major operands: stride = byte
// distance between 8-row groups (1024). MN-major (transposed) operands: leading = byte
// distance between 64-element blocks along N, stride = between 8-row groups along K.
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t leading, uint32_t stride) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((leading & 0x3FFFF) >> 4) << 16) |
         (uint64_t((stride & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Pins accumulator registers in program order around asynchronous wgmma.
template <int N>
__device__ __forceinline__ void wg_fence_operands(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}

// d (64 x N) += A (64 x 16, smem, K-major) * B (N x 16, smem, K-major)^T.
template <typename T, int N>
__device__ void wgmma_ss(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b);
// d (64 x N) += A (64 x 16, registers) * B (16 x N, smem, N-major).
template <typename T, int N>
__device__ void wgmma_rs_tb(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b);

template <>
__device__ __forceinline__ void wgmma_ss<__nv_bfloat16, 64>(float (&d)[64/8][4], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(desc_a), "l"(desc_b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_rs_tb<__nv_bfloat16, 64>(float (&d)[64/8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_rs_tb<__nv_bfloat16, 128>(float (&d)[128/8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_ss<__half, 64>(float (&d)[64/8][4], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(desc_a), "l"(desc_b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_rs_tb<__half, 64>(float (&d)[64/8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_rs_tb<__half, 128>(float (&d)[128/8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

template <int D>
struct FlashForwardWgmmaConfig {
  // Two warpgroups of 64 query rows each; K/V tiles of 64 keys in a 3-deep ring.
  static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 8, kThreads = kWarps * 32, kStages = 3;
  static constexpr size_t kSmemBytes = size_t(kBlockM + 2 * kStages * kBlockN) * D * 2 + 1024;  // + alignment
};

// Forward on wgmma: one CTA per (128-query tile, batch * head), two warpgroups of 64
// rows. S = Q K^T with both operands in shared memory, O += P V with P from registers
// (the accumulator layout of S is the A-fragment layout) and V transposed by the
// descriptor. Warp w owns query rows [16 w, 16 w + 16).
// kArgmax: also track each row's arg-max key (thread-local over the tiles, reduced over the
// row's 4 lanes at the end) and store it in a.argmax; the plain instantiation is unchanged.
template <typename T, int D, bool kArgmax = false>
__global__ void __launch_bounds__(FlashForwardWgmmaConfig<D>::kThreads, 1)
    flash_forward_wgmma_kernel(const FlashArgs a) {
  using Cfg = FlashForwardWgmmaConfig<D>;
  constexpr int BM = Cfg::kBlockM, BN = Cfg::kBlockN, NT = BN / 8, THREADS = Cfg::kThreads;
  constexpr int kStages = Cfg::kStages;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - smem_u32(smem_raw) % 1024) % 1024);
  T* s_q = reinterpret_cast<T*>(smem);
  T* s_k = s_q + BM * D;              // [kStages][BN][D] (wgmma layout)
  T* s_v = s_k + kStages * BN * D;    // [kStages][BN][D]
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, group = warp / 4;
  const int64_t nq = a.range.num_queries;
  const int64_t q0 = int64_t(blockIdx.x) * BM;
  const int h = int(blockIdx.y % a.heads);
  const int64_t b = blockIdx.y / a.heads;
  const T* qg = static_cast<const T*>(a.q) + b * a.qs.batch + h * a.qs.head;
  const T* kg = static_cast<const T*>(a.k) + b * a.ks.batch + h * a.ks.head;
  const T* vg = static_cast<const T*>(a.v) + b * a.vs.batch + h * a.vs.head;

  const int64_t last_row = (q0 + BM < nq ? q0 + BM : nq) - 1;
  int64_t span_begin, first_end, last_begin, span_end;
  a.range.keys_of(q0, span_begin, first_end);
  a.range.keys_of(last_row, last_begin, span_end);
  const int num_tiles = int((span_end - span_begin + BN - 1) / BN);
  const int64_t row_lo = q0 + warp * 16 + lane / 4, row_hi = row_lo + 8;
  int64_t beg[2], end[2];
  a.range.keys_of(row_lo < nq ? row_lo : nq - 1, beg[0], end[0]);
  a.range.keys_of(row_hi < nq ? row_hi : nq - 1, beg[1], end[1]);

  auto load_kv = [&](int tile) {
    const int buf = tile % kStages;
    const int64_t n = span_begin + int64_t(tile) * BN;
    load_wg_tile<T, D, BN, THREADS>(s_k + buf * BN * D, kg, a.ks.token, n, span_end);
    load_wg_tile<T, D, BN, THREADS>(s_v + buf * BN * D, vg, a.vs.token, n, span_end);
  };
  load_wg_tile<T, D, BM, THREADS>(s_q, qg, a.qs.token, q0, nq);
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < num_tiles) load_kv(st);
    cp_async_commit();
  }

  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float best[2] = {-INFINITY, -INFINITY};  // kArgmax: thread-local max raw score and its key
  int best_j[2] = {-1, -1};
  const uint32_t q_addr = smem_u32(s_q) + group * 64 * 128;  // this warpgroup's 64 rows

  int buf = 0;
  for (int t = 0; t < num_tiles; ++t) {
    const int64_t n0 = span_begin + int64_t(t) * BN;
    cp_async_wait<kStages - 2>();
    fence_proxy_async();  // cp.async data -> visible to the wgmma (async proxy)
    __syncthreads();
    if (t + kStages - 1 < num_tiles) load_kv(t + kStages - 1);
    cp_async_commit();
    const uint32_t k_addr = smem_u32(s_k + buf * BN * D), v_addr = smem_u32(s_v + buf * BN * D);
    buf = buf + 1 == kStages ? 0 : buf + 1;

    float s[NT][4];
#pragma unroll
    for (int i = 0; i < NT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    wg_fence_operands(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t koff = (kk % 4) * 32;  // 16 elements = 32 bytes along K inside the 128-byte row
      wgmma_ss<T, BN>(s, wg_desc(q_addr + (kk / 4) * BM * 128 + koff, 16, 1024),
                      wg_desc(k_addr + (kk / 4) * BN * 128 + koff, 16, 1024));
    }
    wgmma_commit();
    wgmma_wait_all();
    wg_fence_operands(s);

    if (n0 < last_begin || n0 + BN > first_end) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t j = n0 + nt * 8 + 2 * (lane & 3) + (e & 1);
          const int r = e >> 1;
          if (j < beg[r] || j >= end[r]) s[nt][e] = -INFINITY;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float raw_max = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) raw_max = fmaxf(raw_max, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      if constexpr (kArgmax) {
        // The thread's max over this tile beats its running one (rare after the first
        // tiles): locate it, first position on ties; strict > keeps earlier tiles on ties.
        if (raw_max > best[r]) {
          int pos = 0;
#pragma unroll
          for (int nt = NT - 1; nt >= 0; --nt) {
            if (s[nt][2 * r + 1] == raw_max) pos = nt * 8 + 1;
            if (s[nt][2 * r] == raw_max) pos = nt * 8;
          }
          best[r] = raw_max;
          best_j[r] = int(n0) + pos + 2 * (lane & 3);
        }
      }
      raw_max = fmaxf(raw_max, __shfl_xor_sync(0xffffffffu, raw_max, 1));
      raw_max = fmaxf(raw_max, __shfl_xor_sync(0xffffffffu, raw_max, 2));
      const float mx = fmaxf(m[r], raw_max * a.scale_log2);
      const float base = mx == -INFINITY ? 0.f : mx;
      const float correction = fast_exp2(m[r] - base);
      m[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        s[nt][2 * r] = fast_exp2(fmaf(s[nt][2 * r], a.scale_log2, -base));
        s[nt][2 * r + 1] = fast_exp2(fmaf(s[nt][2 * r + 1], a.scale_log2, -base));
        sum += s[nt][2 * r] + s[nt][2 * r + 1];
      }
      l[r] = l[r] * correction + sum;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        acc[i][2 * r] *= correction;
        acc[i][2 * r + 1] *= correction;
      }
    }
    uint32_t pa[BN / 16][4];
    pack_a_fragments<T, BN>(pa, s);
    wg_fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      wgmma_rs_tb<T, D>(acc, pa[kk], wg_desc(v_addr + kk * 16 * 128, BN * 128, 1024));
    wgmma_commit();
    wgmma_wait_all();
    wg_fence_operands(acc);
  }
  cp_async_wait<0>();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  if constexpr (kArgmax) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best[r], off);
        const int oj = __shfl_xor_sync(0xffffffffu, best_j[r], off);
        if (ov > best[r] || (ov == best[r] && oj >= 0 && (best_j[r] < 0 || oj < best_j[r]))) {
          best[r] = ov;
          best_j[r] = oj;
        }
      }
  }
  store_forward_rows<T, D, kArgmax>(a, b, h, row_lo, acc, 0, l[0], m[0], best_j[0]);
  store_forward_rows<T, D, kArgmax>(a, b, h, row_hi, acc, 1, l[1], m[1], best_j[1]);
}

// delta[b, h, i] = dO_i . o_i in fp32 (backward preprocess), one warp per row.
template <typename T>
__global__ void flash_delta_kernel(const FlashArgs a, int64_t batch, int head_dim) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t nq = a.range.num_queries;
  const int64_t row = int64_t(blockIdx.x) * kGenericWarps + threadIdx.x / kWarpSize;  // (b, h, i)
  if (row >= batch * a.heads * nq) return;
  const int64_t i = row % nq, bh = row / nq;
  const int h = int(bh % a.heads);
  const int64_t b = bh / a.heads;
  const T* doi = static_cast<const T*>(a.d_o) + b * a.dos.batch + i * a.dos.token + h * a.dos.head;
  const T* oi = static_cast<const T*>(a.o) + ((b * nq + i) * a.heads + h) * int64_t(head_dim);
  float dot = 0;
  for (int e = 2 * lane; e < head_dim; e += 2 * kWarpSize)
    dot += to_acc(doi[e]) * to_acc(oi[e]) + to_acc(doi[e + 1]) * to_acc(oi[e + 1]);
  dot = warp_sum(dot);
  if (lane == 0) const_cast<float*>(a.delta)[row] = dot;
}

// v2 fp32 reduction into global memory (sm_90).
__device__ __forceinline__ void red_add_v2(float* addr, float x, float y) {
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(addr), "f"(x), "f"(y) : "memory");
}

// d (64 x N) += A (64 x 16, smem, M-major) * B (16 x N, smem, N-major): both transposed.
template <typename T, int N>
__device__ void wgmma_ss_tt(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b);
template <>
__device__ __forceinline__ void wgmma_ss_tt<__nv_bfloat16, 64>(float (&d)[64/8][4], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(desc_a), "l"(desc_b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_ss_tt<__half, 64>(float (&d)[64/8][4], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(desc_a), "l"(desc_b), "r"(1));
}

template <int D>
struct FlashBackwardWgmmaConfig {
  // Two warpgroups of 64 keys each; 64-query tiles double-buffered.
  static constexpr int kBlockN = 128, kBlockM = 64, kWarps = 8, kThreads = kWarps * 32;
  // K, V, Q x2, dO x2, dS^T [kBlockN][kBlockM]; then per-query lse2, delta, key begin, key end x2
  static constexpr size_t kTileBytes = size_t(2 * kBlockN + 4 * kBlockM) * D * 2 + size_t(kBlockN) * kBlockM * 2;
  // + per-query lse2, delta, key begin/end, row-max key and gradient (x2 buffers), + alignment
  static constexpr size_t kSmemBytes = kTileBytes + 2 * 6 * kBlockM * 4 + 1024;
};

// The backward on wgmma: dk, dv assigned; dq accumulated with fp32 reductions into dq_accum. Warpgroup g owns
// keys [64 g, 64 g + 64) of the CTA's 128; per 64-query tile:
//   S^T = K Q^T, dP^T = V dO^T (shared x shared), dV += P^T dO, dK += dS^T Q (P^T, dS^T
//   from registers, dO / Q transposed by the descriptor), dS^T to shared memory, then
//   dQ_tile = dS K (both transposed by the descriptor) reduced into dq_accum: for d = 128
//   warpgroup g computes head-dim half g over all 128 keys, for d = 64 all of d over its
//   own 64 keys (the reduction adds the two halves).
//
// kRowMax (hybrid attention): dS[i, a_i] += dc_i, with a_i = a.row_argmax[i] and dc_i =
// a.row_dc[i], i.e. the gradient of a per-row constant c_i = scaled score (i, a_i) folded
// into the dq and dk products (no extra pass); the plain instantiation is unchanged.
template <typename T, int D, bool kRowMax = false>
__global__ void __launch_bounds__(FlashBackwardWgmmaConfig<D>::kThreads, 1)
    flash_backward_wgmma_kernel(const FlashArgs a, float* dq_accum) {
  using Cfg = FlashBackwardWgmmaConfig<D>;
  constexpr int BN = Cfg::kBlockN, BM = Cfg::kBlockM, MT = BM / 8, THREADS = Cfg::kThreads;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - smem_u32(smem_raw) % 1024) % 1024);
  T* s_k = reinterpret_cast<T*>(smem);  // wgmma layout throughout
  T* s_v = s_k + BN * D;
  T* s_q = s_v + BN * D;        // [2][BM][D]
  T* s_do = s_q + 2 * BM * D;   // [2][BM][D]
  T* s_ds = s_do + 2 * BM * D;  // [BN][BM]
  float* s_lse2 = reinterpret_cast<float*>(smem + Cfg::kTileBytes);  // [2][BM]
  float* s_delta = s_lse2 + 2 * BM;                                  // [2][BM]
  int* s_beg = reinterpret_cast<int*>(s_delta + 2 * BM);             // [2][BM] (relative to k0)
  int* s_end = s_beg + 2 * BM;                                       // [2][BM]
  int* s_amax = s_end + 2 * BM;                                      // [2][BM] (relative to k0; kRowMax)
  float* s_dc = reinterpret_cast<float*>(s_amax + 2 * BM);           // [2][BM] (kRowMax)
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, group = warp / 4;
  const int64_t nq = a.range.num_queries, nk = a.range.num_keys;
  const int64_t k0 = int64_t(blockIdx.x) * BN;
  const int h = int(blockIdx.y % a.heads);
  const int64_t b = blockIdx.y / a.heads;
  const T* qg = static_cast<const T*>(a.q) + b * a.qs.batch + h * a.qs.head;
  const T* dog = static_cast<const T*>(a.d_o) + b * a.dos.batch + h * a.dos.head;
  const T* kg = static_cast<const T*>(a.k) + b * a.ks.batch + h * a.ks.head;
  const T* vg = static_cast<const T*>(a.v) + b * a.vs.batch + h * a.vs.head;
  const int64_t stat0 = (b * a.heads + h) * nq;

  const int64_t last_key = (k0 + BN < nk ? k0 + BN : nk) - 1;
  int64_t span_begin, unused, unused2, span_end;
  a.range.queries_of(k0, span_begin, unused);
  a.range.queries_of(last_key, unused2, span_end);
  const int num_tiles = span_end > span_begin ? int((span_end - span_begin + BM - 1) / BM) : 0;

  auto load_stats = [&](int buf, int64_t m0) {
    for (int c = threadIdx.x; c < BM; c += THREADS) {
      const int64_t i = m0 + c;
      int64_t kb = 0, ke = 0;
      float l2 = INFINITY, dl = 0.f;
      if (i < nq && i < span_end) {
        a.range.keys_of(i, kb, ke);
        l2 = a.lse[stat0 + i] * kLog2e;
        dl = a.delta[stat0 + i];
      }
      s_lse2[buf * BM + c] = l2;
      s_delta[buf * BM + c] = dl;
      const int64_t rb = kb - k0, re = ke - k0;
      s_beg[buf * BM + c] = int(rb < 0 ? 0 : (rb > BN ? BN : rb));
      s_end[buf * BM + c] = int(re < 0 ? 0 : (re > BN ? BN : re));
      if constexpr (kRowMax) {
        int am = -1;
        float dc = 0.f;
        if (i < nq && i < span_end) {
          const int64_t ra = int64_t(a.row_argmax[stat0 + i]) - k0;
          am = ra >= 0 && ra < BN ? int(ra) : -1;
          dc = a.row_dc[stat0 + i];
        }
        s_amax[buf * BM + c] = am;
        s_dc[buf * BM + c] = dc;
      }
    }
  };

  load_wg_tile<T, D, BN, THREADS>(s_k, kg, a.ks.token, k0, nk);
  load_wg_tile<T, D, BN, THREADS>(s_v, vg, a.vs.token, k0, nk);
  if (num_tiles > 0) {
    load_wg_tile<T, D, BM, THREADS>(s_q, qg, a.qs.token, span_begin, span_end);
    load_wg_tile<T, D, BM, THREADS>(s_do, dog, a.dos.token, span_begin, span_end);
    load_stats(0, span_begin);
  }
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  const int key_lo = warp * 16 + lane / 4;  // this thread's key rows (relative): key_lo, key_lo + 8
  const uint32_t k_addr = smem_u32(s_k), v_addr = smem_u32(s_v), ds_addr = smem_u32(s_ds);
  const uint32_t kv_rows = group * 64 * 128;  // byte offset of this warpgroup's 64 key rows

  for (int t = 0; t < num_tiles; ++t) {
    const int64_t m0 = span_begin + int64_t(t) * BM;
    if (t + 1 < num_tiles) {
      const int nb = (t + 1) & 1;
      load_wg_tile<T, D, BM, THREADS>(s_q + nb * BM * D, qg, a.qs.token, m0 + BM, span_end);
      load_wg_tile<T, D, BM, THREADS>(s_do + nb * BM * D, dog, a.dos.token, m0 + BM, span_end);
      load_stats(nb, m0 + BM);
    }
    cp_async_commit();
    cp_async_wait<1>();
    fence_proxy_async();
    __syncthreads();
    const int buf = t & 1;
    const uint32_t q_addr = smem_u32(s_q + buf * BM * D), do_addr = smem_u32(s_do + buf * BM * D);

    // S^T = K Q^T (this warpgroup's 64 keys x 64 queries).
    uint32_t pa[BM / 16][4];
    {
      float s[MT][4];
#pragma unroll
      for (int i = 0; i < MT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
      wg_fence_operands(s);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        wgmma_ss<T, BM>(s, wg_desc(k_addr + (kk / 4) * BN * 128 + kv_rows + (kk % 4) * 32, 16, 1024),
                        wg_desc(q_addr + (kk / 4) * BM * 128 + (kk % 4) * 32, 16, 1024));
      wgmma_commit();
      wgmma_wait_all();
      wg_fence_operands(s);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = mt * 8 + 2 * (lane & 3) + (e & 1);  // query column within the tile
          const int key = key_lo + 8 * (e >> 1);
          float p = fast_exp2(fmaf(s[mt][e], a.scale_log2, -s_lse2[buf * BM + c]));
          if (key < s_beg[buf * BM + c] || key >= s_end[buf * BM + c]) p = 0.f;
          s[mt][e] = p;
        }
      pack_a_fragments<T, BM>(pa, s);
    }
    // dV += P^T dO and dP^T = V dO^T in one batch.
    {
      float dp[MT][4];
#pragma unroll
      for (int i = 0; i < MT; ++i) dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
      wg_fence_operands(dv);
      wg_fence_operands(dp);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk)
        wgmma_rs_tb<T, D>(dv, pa[kk], wg_desc(do_addr + kk * 16 * 128, BM * 128, 1024));
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        wgmma_ss<T, BM>(dp, wg_desc(v_addr + (kk / 4) * BN * 128 + kv_rows + (kk % 4) * 32, 16, 1024),
                        wg_desc(do_addr + (kk / 4) * BM * 128 + (kk % 4) * 32, 16, 1024));
      wgmma_commit();
      wgmma_wait_all();
      wg_fence_operands(dv);
      wg_fence_operands(dp);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = mt * 8 + 2 * (lane & 3) + (e & 1);
          const uint32_t bits = pa[mt / 2][(mt & 1) * 2 + (e >> 1)];  // P^T as dV used it
          const float p = (e & 1) ? unpack_hi<T>(bits) : unpack_lo<T>(bits);
          dp[mt][e] = p * (dp[mt][e] - s_delta[buf * BM + c]);  // dS^T
          if constexpr (kRowMax)
            if (key_lo + 8 * (e >> 1) == s_amax[buf * BM + c]) dp[mt][e] += s_dc[buf * BM + c];
        }
      pack_a_fragments<T, BM>(pa, dp);  // pa now holds dS^T
    }
    // dS^T to shared memory (read by the dQ product through the async proxy).
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = key_lo + 8 * (r & 1), chunk = 2 * kk + (r >> 1);
        *reinterpret_cast<uint32_t*>(s_ds + wg_offset<BN>(row, chunk) + 2 * (lane & 3)) = pa[kk][r];
      }
    fence_proxy_async();
    __syncthreads();
    // dK += dS^T Q, and dQ_tile = dS K.
    {
      constexpr int kDqKeys = D == 128 ? BN : BN / 2;  // keys summed by this warpgroup
      const uint32_t dq_key0 = D == 128 ? 0 : group * 64;
      const uint32_t dq_col_bytes = D == 128 ? group * BN * 128 : 0;  // d-block g of the K tile
      float dq[8][4];
#pragma unroll
      for (int i = 0; i < 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
      wg_fence_operands(dk);
      wg_fence_operands(dq);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk)
        wgmma_rs_tb<T, D>(dk, pa[kk], wg_desc(q_addr + kk * 16 * 128, BM * 128, 1024));
#pragma unroll
      for (int kk = 0; kk < kDqKeys / 16; ++kk)
        wgmma_ss_tt<T, 64>(dq, wg_desc(ds_addr + (dq_key0 + kk * 16) * 128, BN * 128, 1024),
                           wg_desc(k_addr + dq_col_bytes + (dq_key0 + kk * 16) * 128, BN * 128, 1024));
      wgmma_commit();
      wgmma_wait_all();
      wg_fence_operands(dk);
      wg_fence_operands(dq);
      const int dq_col0 = D == 128 ? group * 64 : 0;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t row = m0 + (warp & 3) * 16 + lane / 4 + 8 * r;
        if (row < nq && row < span_end) {
          float* out = dq_accum + ((b * nq + row) * a.heads + h) * D + dq_col0 + 2 * (lane & 3);
#pragma unroll
          for (int nt = 0; nt < 8; ++nt) red_add_v2(out + nt * 8, dq[nt][2 * r], dq[nt][2 * r + 1]);
        }
      }
    }
    __syncthreads();  // Q / dO buffer, statistics and dS^T are rewritten next iteration
  }
  cp_async_wait<0>();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t key = k0 + key_lo + 8 * r;
    if (key >= nk) break;
    T* dk_out = static_cast<T*>(a.dk) + ((b * nk + key) * a.heads + h) * D;
    T* dv_out = static_cast<T*>(a.dv) + ((b * nk + key) * a.heads + h) * D;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
      const int col = nt * 8 + 2 * (lane & 3);
      *reinterpret_cast<uint32_t*>(dk_out + col) = pack2<T>(dk[nt][2 * r] * a.scale, dk[nt][2 * r + 1] * a.scale);
      *reinterpret_cast<uint32_t*>(dv_out + col) = pack2<T>(dv[nt][2 * r], dv[nt][2 * r + 1]);
    }
  }
}

// dq = scale * dq_accum, converted to T (assigned); 4 elements per thread.
template <typename T>
__global__ void flash_dq_convert_kernel(T* __restrict__ dq, const float* __restrict__ dq_accum, int64_t n,
                                        float scale) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (i >= n) return;
  const float4 v = *reinterpret_cast<const float4*>(dq_accum + i);
  uint2 out;
  out.x = pack2<T>(v.x * scale, v.y * scale);
  out.y = pack2<T>(v.z * scale, v.w * scale);
  *reinterpret_cast<uint2*>(dq + i) = out;
}

// Whether the flash kernels take this problem: bf16/f16, head dim 64 or 128, every row
// 16-byte aligned (base pointers and strides multiples of 8 elements).
bool flash_supported(const Tensor& q, std::initializer_list<const Tensor*> others) {
  if (q.dtype() != DType::BF16 && q.dtype() != DType::F16) return false;
  if (q.size(3) != 64 && q.size(3) != 128) return false;
  auto aligned = [](const Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 &&
           t.stride(2) % 8 == 0;
  };
  if (!aligned(q)) return false;
  for (const Tensor* t : others)
    if (!aligned(*t)) return false;
  return true;
}

template <typename Kernel>
void launch_flash(Kernel kernel, dim3 grid, int threads, size_t smem, cudaStream_t stream, const FlashArgs& args) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, threads, smem, stream>>>(args);
  CUDA_CHECK_LAUNCH();
}

FlashArgs flash_args(const Tensor& q, const Tensor& k, const Tensor& v, double scale, const DeviceKeyRange& range) {
  FlashArgs a{};
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.qs = row_strides(q);
  a.ks = row_strides(k);
  a.vs = row_strides(v);
  a.heads = int(q.size(2));
  a.scale = float(scale);
  a.scale_log2 = float(scale * 1.4426950408889634);
  a.range = range;
  return a;
}

template <typename T, int D>
void flash_forward(Tensor& o, Tensor& lse, Tensor& row_max, const Tensor& q, const Tensor& k, const Tensor& v,
                   double scale, const DeviceKeyRange& range, cudaStream_t stream, int* argmax = nullptr) {
  FlashArgs a = flash_args(q, k, v, scale, range);
  a.o = o.data_ptr();
  a.lse = ptr<float>(lse);
  a.row_max = ptr<float>(row_max);
  a.argmax = argmax;
  using Cfg = FlashForwardWgmmaConfig<D>;
  const dim3 grid(unsigned(ceil_div(range.num_queries, Cfg::kBlockM)), unsigned(q.size(0) * q.size(2)));
  launch_flash(argmax ? flash_forward_wgmma_kernel<T, D, true> : flash_forward_wgmma_kernel<T, D, false>, grid,
               Cfg::kThreads, Cfg::kSmemBytes, stream, a);
}

template <typename T, int D>
void flash_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& d_o, const Tensor& q, const Tensor& k,
                    const Tensor& v, const Tensor& o, const Tensor& lse, double scale, const DeviceKeyRange& range,
                    cudaStream_t stream, const int* row_argmax = nullptr, const float* row_dc = nullptr) {
  Tensor delta = Tensor::empty(lse.shape(), DType::F32, lse.device());  // [B, H, Nq] scratch
  FlashArgs a = flash_args(q, k, v, scale, range);
  a.d_o = d_o.data_ptr();
  a.dos = row_strides(d_o);
  a.o = o.data_ptr();
  a.dq = dq.data_ptr();
  a.dk = dk.data_ptr();
  a.dv = dv.data_ptr();
  a.lse = ptr<float>(lse);
  a.delta = ptr<const float>(delta);
  a.row_argmax = row_argmax;
  a.row_dc = row_dc;
  const int64_t batch = q.size(0), bh = batch * q.size(2);
  const int64_t rows = bh * range.num_queries;
  if (rows > 0) {
    flash_delta_kernel<T><<<unsigned(ceil_div(rows, kGenericWarps)), kGenericWarps * kWarpSize, 0, stream>>>(
        a, batch, D);
    CUDA_CHECK_LAUNCH();
  }
  Tensor dq_accum = Tensor::empty(dq.shape(), DType::F32, dq.device());  // [B, Nq, H, d] fp32 scratch
  CUDA_CHECK(cudaMemsetAsync(dq_accum.data_ptr(), 0, dq_accum.nbytes(), stream));
  using Cfg = FlashBackwardWgmmaConfig<D>;
  auto kernel = row_argmax ? flash_backward_wgmma_kernel<T, D, true> : flash_backward_wgmma_kernel<T, D, false>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Cfg::kSmemBytes)));
  kernel<<<dim3(unsigned(ceil_div(range.num_keys, Cfg::kBlockN)), unsigned(bh)), Cfg::kThreads, Cfg::kSmemBytes,
           stream>>>(a, ptr<float>(dq_accum));
  CUDA_CHECK_LAUNCH();
  const int64_t n = dq.numel();
  if (n > 0) {
    flash_dq_convert_kernel<T><<<unsigned(ceil_div(n / 4, 256)), 256, 0, stream>>>(static_cast<T*>(dq.data_ptr()),
                                                                                 ptr<const float>(dq_accum), n,
                                                                                 float(scale));
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

// --- adapters ------------------------------------------------------------------------------

void softmax_attention_forward(Tensor& o, Tensor& lse, Tensor& row_max, const Tensor& q, const Tensor& k,
                               const Tensor& v, double scale, const KeyRange& keys) {
  if (o.numel() == 0) return;
  rehyat::cuda::set_device(q.device().index);
  const cudaStream_t stream = rehyat::cuda::stream(q.device());
  const DeviceKeyRange range = device_key_range(keys, q.size(1), k.size(1));
  if (flash_supported(q, {&k, &v})) {
    const bool bf16 = q.dtype() == DType::BF16;
    if (q.size(3) == 64)
      (bf16 ? flash_forward<__nv_bfloat16, 64> : flash_forward<__half, 64>)(o, lse, row_max, q, k, v, scale, range,
                                                                             stream, nullptr);
    else
      (bf16 ? flash_forward<__nv_bfloat16, 128> : flash_forward<__half, 128>)(o, lse, row_max, q, k, v, scale,
                                                                               range, stream, nullptr);
    return;
  }
  REHYAT_CUDA_DISPATCH_FLOAT(q.dtype(), "softmax_attention_forward",
                             generic_forward<scalar_t>(o, lse, row_max, q, k, v, scale, range, stream));
}

bool softmax_attention_forward_argmax(Tensor& o, Tensor& lse, Tensor& row_max, Tensor& argmax, const Tensor& q,
                                      const Tensor& k, const Tensor& v, double scale, const KeyRange& keys) {
  if (!flash_supported(q, {&k, &v}) || !o.is_contiguous()) return false;
  REHYAT_CHECK(argmax.dtype() == DType::I32 && argmax.shape() == lse.shape() && argmax.is_contiguous(),
               "softmax_attention_forward_argmax: argmax {} does not fit lse {}", argmax.str(), lse.str());
  if (o.numel() == 0) return true;
  rehyat::cuda::set_device(q.device().index);
  const cudaStream_t stream = rehyat::cuda::stream(q.device());
  const DeviceKeyRange range = device_key_range(keys, q.size(1), k.size(1));
  const bool bf16 = q.dtype() == DType::BF16;
  int* am = ptr<int>(argmax);
  if (q.size(3) == 64)
    (bf16 ? flash_forward<__nv_bfloat16, 64> : flash_forward<__half, 64>)(o, lse, row_max, q, k, v, scale, range,
                                                                           stream, am);
  else
    (bf16 ? flash_forward<__nv_bfloat16, 128> : flash_forward<__half, 128>)(o, lse, row_max, q, k, v, scale, range,
                                                                             stream, am);
  return true;
}

bool softmax_attention_backward_row_max(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& d_o, const Tensor& q,
                                        const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                                        const Tensor& argmax, const Tensor& dc, double scale, const KeyRange& keys) {
  if (!flash_supported(q, {&k, &v, &d_o})) return false;
  REHYAT_CHECK(argmax.dtype() == DType::I32 && dc.dtype() == DType::F32 && argmax.shape() == lse.shape() &&
                   dc.shape() == lse.shape() && argmax.is_contiguous() && dc.is_contiguous(),
               "softmax_attention_backward_row_max: argmax {} / dc {} do not fit lse {}", argmax.str(), dc.str(),
               lse.str());
  if (dq.numel() == 0 && dk.numel() == 0) return true;
  rehyat::cuda::set_device(q.device().index);
  const cudaStream_t stream = rehyat::cuda::stream(q.device());
  const DeviceKeyRange range = device_key_range(keys, q.size(1), k.size(1));
  const bool bf16 = q.dtype() == DType::BF16;
  const int* am = ptr<const int>(argmax);
  const float* g = ptr<const float>(dc);
  if (q.size(3) == 64)
    (bf16 ? flash_backward<__nv_bfloat16, 64> : flash_backward<__half, 64>)(dq, dk, dv, d_o, q, k, v, o, lse, scale,
                                                                             range, stream, am, g);
  else
    (bf16 ? flash_backward<__nv_bfloat16, 128> : flash_backward<__half, 128>)(dq, dk, dv, d_o, q, k, v, o, lse,
                                                                               scale, range, stream, am, g);
  return true;
}

void softmax_attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& d_o, const Tensor& q,
                                const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                                double scale, const KeyRange& keys) {
  if (dq.numel() == 0 && dk.numel() == 0) return;
  rehyat::cuda::set_device(q.device().index);
  const cudaStream_t stream = rehyat::cuda::stream(q.device());
  const DeviceKeyRange range = device_key_range(keys, q.size(1), k.size(1));
  if (flash_supported(q, {&k, &v, &d_o})) {
    const bool bf16 = q.dtype() == DType::BF16;
    if (q.size(3) == 64)
      (bf16 ? flash_backward<__nv_bfloat16, 64> : flash_backward<__half, 64>)(dq, dk, dv, d_o, q, k, v, o, lse, scale,
                                                                               range, stream, nullptr, nullptr);
    else
      (bf16 ? flash_backward<__nv_bfloat16, 128> : flash_backward<__half, 128>)(dq, dk, dv, d_o, q, k, v, o, lse,
                                                                                 scale, range, stream, nullptr, nullptr);
    return;
  }
  REHYAT_CUDA_DISPATCH_FLOAT(q.dtype(), "softmax_attention_backward",
                             generic_backward<scalar_t>(dq, dk, dv, d_o, q, k, v, o, lse, scale, range, stream));
}

}  // namespace rehyat::attention::kernels::cuda
