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
//   the key tile, written once); dq is accumulated (+=) with fp32 atomics into an fp32
//   scratch [B, Nq, H, d] zeroed first, then converted and assigned to dq.
// - Key ranges: a query tile loops over the union of its rows' key ranges and masks
//   entries outside each row's own range (chunk boundaries fall inside tiles); a key
//   tile loops over the union of the query rows that see any of its keys.
// - Fast path (bf16 / f16, head dim 64 or 128, 16-byte aligned rows): mma.sync
//   m16n8k16 tensor-core tiles fed by ldmatrix from swizzled shared memory, cp.async
//   double buffering, exp2-based online softmax, fp32 accumulation.
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

// c += a (16x16, row) * b (16x8, col), fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
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

// Shared tiles are [rows][D] with the 16-byte chunks of a row XOR-swizzled by (row % 8),
// so the 8 row addresses of one ldmatrix hit 8 different bank groups.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Loads rows [row0, row0 + ROWS) of a strided [N, d] slab into a swizzled tile, zero-filling
// rows >= rows_total; all THREADS threads take part.
template <typename T, int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(T* tile, const T* base, int64_t row_stride, int64_t row0,
                                          int64_t rows_total) {
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int it = 0; it < ROWS * kChunks / THREADS; ++it) {
    const int idx = int(threadIdx.x) + it * THREADS;
    const int row = idx / kChunks, chunk = idx % kChunks;
    const int64_t token = row0 + row;
    const bool valid = token < rows_total;
    const T* src = base + (valid ? token * row_stride : 0) + chunk * 8;
    cp_async16(smem_u32(tile + swz<D>(row, chunk)), src, valid);
  }
}

// A fragments (16 rows x D) of the warp's rows [row0, row0 + 16) of a swizzled tile.
template <typename T, int D>
__device__ __forceinline__ void load_a_fragments(uint32_t (&frag)[D / 16][4], const T* tile, int row0) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(frag[kk], smem_u32(tile + swz<D>(row0 + (lane & 15), kk * 2 + (lane >> 4))));
}

// acc[NT][4] += A (16 x K, K/16 fragments in registers) * B^T where B is [NT*8 rows][K] in a
// swizzled tile (rows = output columns): S = Q K^T and dP = dO V^T.
template <typename T, int D, int NT>
__device__ __forceinline__ void mma_a_bt(float (&acc)[NT][4], const uint32_t (&a)[D / 16][4], const T* b_tile) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, smem_u32(b_tile + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1))));
      mma16816<T>(acc[2 * np], a[kk], b[0], b[1]);
      mma16816<T>(acc[2 * np + 1], a[kk], b[2], b[3]);
    }
  }
}

// acc[D/8][4] += P (16 x KR, accumulator layout, converted to T) * B where B is [KR rows][D]
// in a swizzled tile (rows = the reduction index): O += P V, dQ += dS K, dV += P^T dO.
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

// As mma_p_b with P already packed.
template <typename T, int D, int KR>
__device__ __forceinline__ void mma_packed_b(float (&acc)[D / 8][4], const uint32_t (&pa)[KR / 16][4],
                                             const T* b_tile) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int kk = 0; kk < KR / 16; ++kk) {
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, smem_u32(b_tile + swz<D>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4))));
      mma16816<T>(acc[2 * dp], pa[kk], b[0], b[1]);
      mma16816<T>(acc[2 * dp + 1], pa[kk], b[2], b[3]);
    }
  }
}

template <typename T, int D, int KR>
__device__ __forceinline__ void mma_p_b(float (&acc)[D / 8][4], const float (&p)[KR / 8][4], const T* b_tile) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int kk = 0; kk < KR / 16; ++kk) {
    const uint32_t a[4] = {pack2<T>(p[2 * kk][0], p[2 * kk][1]), pack2<T>(p[2 * kk][2], p[2 * kk][3]),
                           pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                           pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, smem_u32(b_tile + swz<D>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4))));
      mma16816<T>(acc[2 * dp], a, b[0], b[1]);
      mma16816<T>(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// Same as mma_a_bt but A is also read from a swizzled tile (rows [a_row0, a_row0 + 16)).
template <typename T, int D, int NT>
__device__ __forceinline__ void mma_tile_a_bt(float (&acc)[NT][4], const T* a_tile, int a_row0, const T* b_tile) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, smem_u32(a_tile + swz<D>(a_row0 + (lane & 15), kk * 2 + (lane >> 4))));
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, smem_u32(b_tile + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1))));
      mma16816<T>(acc[2 * np], a, b[0], b[1]);
      mma16816<T>(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

template <int D>
struct FlashForwardConfig {
  // Each warp owns kRowTiles x 16 query rows: K and V tiles are read from shared memory
  // once per 32 rows instead of once per 16 (shared-memory bandwidth is the limit of
  // mma.sync at 16 rows per warp); Q fragments are re-read from shared memory.
  static constexpr int kRowTiles = 2, kWarps = 4, kBlockM = kWarps * 16 * kRowTiles, kBlockN = D == 128 ? 32 : 64;
  static constexpr int kThreads = kWarps * 32;
  static constexpr size_t kSmemBytes = size_t(kBlockM + 4 * kBlockN) * D * 2;  // Q, K x2, V x2
};

// Forward epilogue: the per-row state of the online softmax (acc = sum exp(s - m) v,
// l = sum exp(s - m), m in log2 units of the scaled score) becomes o = acc / l,
// lse = (m + log2 l) ln 2, row_max = m ln 2. A hybrid-attention variant replaces this
// function to keep acc, l and m un-normalized.
template <typename T, int D>
__device__ __forceinline__ void store_forward_rows(const FlashArgs& a, int64_t b, int h, int64_t row,
                                                   const float (&acc)[D / 8][4], int half, float l, float m) {
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
  }
}

// One CTA per (kBlockM-query tile, batch * head); warp w owns kRowTiles 16-row tiles.
template <typename T, int D>
__global__ void __launch_bounds__(FlashForwardConfig<D>::kThreads, 2) flash_forward_kernel(const FlashArgs a) {
  using Cfg = FlashForwardConfig<D>;
  constexpr int BM = Cfg::kBlockM, BN = Cfg::kBlockN, NT = BN / 8, THREADS = Cfg::kThreads, MW = Cfg::kRowTiles;
  extern __shared__ __align__(128) unsigned char smem[];
  T* s_q = reinterpret_cast<T*>(smem);
  T* s_k = s_q + BM * D;       // [2][BN][D]
  T* s_v = s_k + 2 * BN * D;   // [2][BN][D]
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t nq = a.range.num_queries;
  const int64_t q0 = int64_t(blockIdx.x) * BM;
  const int h = int(blockIdx.y % a.heads);
  const int64_t b = blockIdx.y / a.heads;
  const T* qg = static_cast<const T*>(a.q) + b * a.qs.batch + h * a.qs.head;
  const T* kg = static_cast<const T*>(a.k) + b * a.ks.batch + h * a.ks.head;
  const T* vg = static_cast<const T*>(a.v) + b * a.vs.batch + h * a.vs.head;

  // Key span of the tile (union of its rows' ranges) and the part every row sees.
  const int64_t last_row = (q0 + BM < nq ? q0 + BM : nq) - 1;
  int64_t span_begin, first_end, last_begin, span_end;
  a.range.keys_of(q0, span_begin, first_end);
  a.range.keys_of(last_row, last_begin, span_end);
  const int num_tiles = int((span_end - span_begin + BN - 1) / BN);
  // This thread's rows (mt, half): warp_row0 + 16 mt + lane / 4 + 8 half; their key ranges.
  const int warp_row0 = warp * 16 * MW;
  // (int: the adapter checks that token counts fit 31 bits.)
  int beg[MW][2], end[MW][2];
#pragma unroll
  for (int mt = 0; mt < MW; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = q0 + warp_row0 + mt * 16 + lane / 4 + 8 * r;
      int64_t rb, re;
      a.range.keys_of(row < nq ? row : nq - 1, rb, re);
      beg[mt][r] = int(rb);
      end[mt][r] = int(re);
    }

  load_tile<T, D, BM, THREADS>(s_q, qg, a.qs.token, q0, nq);
  load_tile<T, D, BN, THREADS>(s_k, kg, a.ks.token, span_begin, span_end);
  load_tile<T, D, BN, THREADS>(s_v, vg, a.vs.token, span_begin, span_end);
  cp_async_commit();

  float acc[MW][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MW; ++mt)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.f;
  float m[MW][2], l[MW][2];
#pragma unroll
  for (int mt = 0; mt < MW; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.f;

  for (int t = 0; t < num_tiles; ++t) {
    const int64_t n0 = span_begin + int64_t(t) * BN;
    if (t + 1 < num_tiles) {
      const int buf = (t + 1) & 1;
      load_tile<T, D, BN, THREADS>(s_k + buf * BN * D, kg, a.ks.token, n0 + BN, span_end);
      load_tile<T, D, BN, THREADS>(s_v + buf * BN * D, vg, a.vs.token, n0 + BN, span_end);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* k_tile = s_k + (t & 1) * BN * D;
    const T* v_tile = s_v + (t & 1) * BN * D;

    // S = Q K^T: each K fragment feeds MW row tiles.
    float s[MW][NT][4];
#pragma unroll
    for (int mt = 0; mt < MW; ++mt)
#pragma unroll
      for (int i = 0; i < NT; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[MW][4];
#pragma unroll
      for (int mt = 0; mt < MW; ++mt)
        ldmatrix_x4(qa[mt], smem_u32(s_q + swz<D>(warp_row0 + mt * 16 + (lane & 15), kk * 2 + (lane >> 4))));
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t kb[4];
        ldmatrix_x4(kb, smem_u32(k_tile + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1))));
#pragma unroll
        for (int mt = 0; mt < MW; ++mt) {
          mma16816<T>(s[mt][2 * np], qa[mt], kb[0], kb[1]);
          mma16816<T>(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    const bool need_mask = n0 < last_begin || n0 + BN > first_end;
#pragma unroll
    for (int mt = 0; mt < MW; ++mt) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[mt][nt][e] * a.scale_log2;
          if (need_mask) {
            const int j = int(n0) + nt * 8 + 2 * (lane & 3) + (e & 1);
            const int r = e >> 1;
            if (j < beg[mt][r] || j >= end[mt][r]) x = -INFINITY;
          }
          s[mt][nt][e] = x;
        }
      // Online softmax (base 2) for the thread's two rows of this row tile.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = m[mt][r];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float base = mx == -INFINITY ? 0.f : mx;
        const float correction = exp2f(m[mt][r] - base);
        m[mt][r] = mx;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          s[mt][nt][2 * r] = exp2f(s[mt][nt][2 * r] - base);
          s[mt][nt][2 * r + 1] = exp2f(s[mt][nt][2 * r + 1] - base);
          sum += s[mt][nt][2 * r] + s[mt][nt][2 * r + 1];
        }
        l[mt][r] = l[mt][r] * correction + sum;
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
          acc[mt][i][2 * r] *= correction;
          acc[mt][i][2 * r + 1] *= correction;
        }
      }
    }
    // O += P V: each V fragment feeds MW row tiles.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t pa[MW][4];
#pragma unroll
      for (int mt = 0; mt < MW; ++mt) {
        pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, smem_u32(v_tile + swz<D>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4))));
#pragma unroll
        for (int mt = 0; mt < MW; ++mt) {
          mma16816<T>(acc[mt][2 * dp], pa[mt], vb[0], vb[1]);
          mma16816<T>(acc[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // the buffer is refilled next iteration
  }
  cp_async_wait<0>();
#pragma unroll
  for (int mt = 0; mt < MW; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float lt = l[mt][r];
      lt += __shfl_xor_sync(0xffffffffu, lt, 1);
      lt += __shfl_xor_sync(0xffffffffu, lt, 2);
      store_forward_rows<T, D>(a, b, h, q0 + warp_row0 + mt * 16 + lane / 4 + 8 * r, acc[mt], r, lt, m[mt][r]);
    }
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

template <int D>
struct FlashDqConfig {
  static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 8, kThreads = kWarps * 32;
  static constexpr size_t kSmemBytes = size_t(2 * kBlockM + 4 * kBlockN) * D * 2;  // Q, dO, K x2, V x2
};

// dq (assigned): one CTA per (128-query tile, batch * head), loop over the tile's key span:
// S = Q K^T, P = exp(S - lse), dP = dO V^T, dS = P (dP - delta), dQ += dS K.
template <typename T, int D>
__global__ void __launch_bounds__(FlashDqConfig<D>::kThreads, 1) flash_dq_kernel(const FlashArgs a) {
  using Cfg = FlashDqConfig<D>;
  constexpr int BM = Cfg::kBlockM, BN = Cfg::kBlockN, NT = BN / 8, THREADS = Cfg::kThreads;
  extern __shared__ __align__(128) unsigned char smem[];
  T* s_q = reinterpret_cast<T*>(smem);
  T* s_do = s_q + BM * D;
  T* s_k = s_do + BM * D;      // [2][BN][D]
  T* s_v = s_k + 2 * BN * D;   // [2][BN][D]
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t nq = a.range.num_queries, nk = a.range.num_keys;
  const int64_t q0 = int64_t(blockIdx.x) * BM;
  const int h = int(blockIdx.y % a.heads);
  const int64_t b = blockIdx.y / a.heads;
  const T* qg = static_cast<const T*>(a.q) + b * a.qs.batch + h * a.qs.head;
  const T* dog = static_cast<const T*>(a.d_o) + b * a.dos.batch + h * a.dos.head;
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
  const int64_t stat0 = (b * a.heads + h) * nq;
  float lse2[2], delta[2];
  lse2[0] = row_lo < nq ? a.lse[stat0 + row_lo] * kLog2e : INFINITY;
  lse2[1] = row_hi < nq ? a.lse[stat0 + row_hi] * kLog2e : INFINITY;
  delta[0] = row_lo < nq ? a.delta[stat0 + row_lo] : 0.f;
  delta[1] = row_hi < nq ? a.delta[stat0 + row_hi] : 0.f;

  load_tile<T, D, BM, THREADS>(s_q, qg, a.qs.token, q0, nq);
  load_tile<T, D, BM, THREADS>(s_do, dog, a.dos.token, q0, nq);
  load_tile<T, D, BN, THREADS>(s_k, kg, a.ks.token, span_begin, span_end);
  load_tile<T, D, BN, THREADS>(s_v, vg, a.vs.token, span_begin, span_end);
  cp_async_commit();

  uint32_t qf[D / 16][4], dof[D / 16][4];
  float dq[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  for (int t = 0; t < num_tiles; ++t) {
    const int64_t n0 = span_begin + int64_t(t) * BN;
    if (t + 1 < num_tiles) {
      const int buf = (t + 1) & 1;
      load_tile<T, D, BN, THREADS>(s_k + buf * BN * D, kg, a.ks.token, n0 + BN, span_end);
      load_tile<T, D, BN, THREADS>(s_v + buf * BN * D, vg, a.vs.token, n0 + BN, span_end);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (t == 0) {
      load_a_fragments<T, D>(qf, s_q, warp * 16);
      load_a_fragments<T, D>(dof, s_do, warp * 16);
    }
    const T* k_tile = s_k + (t & 1) * BN * D;
    const T* v_tile = s_v + (t & 1) * BN * D;
    float s[NT][4], dp[NT][4];
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
      dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
    }
    mma_a_bt<T, D, NT>(s, qf, k_tile);
    mma_a_bt<T, D, NT>(dp, dof, v_tile);
    const bool need_mask = n0 < last_begin || n0 + BN > first_end;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        float p = exp2f(s[nt][e] * a.scale_log2 - lse2[r]);
        if (need_mask) {
          const int64_t j = n0 + nt * 8 + 2 * (lane & 3) + (e & 1);
          if (j < beg[r] || j >= end[r]) p = 0.f;
        }
        s[nt][e] = p * (dp[nt][e] - delta[r]);  // dS
      }
    mma_p_b<T, D, BN>(dq, s, k_tile);
    __syncthreads();
  }
  cp_async_wait<0>();
  if (row_lo >= nq) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = r ? row_hi : row_lo;
    if (row >= nq) break;
    T* out = static_cast<T*>(a.dq) + ((b * nq + row) * a.heads + h) * D;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
      *reinterpret_cast<uint32_t*>(out + nt * 8 + 2 * (lane & 3)) =
          pack2<T>(dq[nt][2 * r] * a.scale, dq[nt][2 * r + 1] * a.scale);
  }
}

template <int D>
struct FlashDkdvConfig {
  static constexpr int kBlockN = 64, kBlockM = 64, kWarps = 4, kThreads = kWarps * 32;
  // K, V, Q x2, dO x2, then per-query lse2, delta, key begin, key end x2
  static constexpr size_t kTileBytes = size_t(2 * kBlockN + 4 * kBlockM) * D * 2;
  static constexpr size_t kSmemBytes = kTileBytes + 2 * 4 * kBlockM * 4;
};

// dk, dv (assigned): one CTA per (64-key tile, batch * head); warp w owns keys
// [16 w, 16 w + 16) and loops over the query rows that see any key of the tile:
// S^T = K Q^T, P^T = exp(S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - delta),
// dV += P^T dO, dK += dS^T Q.
template <typename T, int D>
__global__ void __launch_bounds__(FlashDkdvConfig<D>::kThreads, 2) flash_dkdv_kernel(const FlashArgs a) {
  using Cfg = FlashDkdvConfig<D>;
  constexpr int BN = Cfg::kBlockN, BM = Cfg::kBlockM, MT = BM / 8, THREADS = Cfg::kThreads;
  extern __shared__ __align__(128) unsigned char smem[];
  T* s_k = reinterpret_cast<T*>(smem);
  T* s_v = s_k + BN * D;
  T* s_q = s_v + BN * D;      // [2][BM][D]
  T* s_do = s_q + 2 * BM * D;  // [2][BM][D]
  float* s_lse2 = reinterpret_cast<float*>(smem + Cfg::kTileBytes);  // [2][BM]
  float* s_delta = s_lse2 + 2 * BM;                                  // [2][BM]
  int* s_beg = reinterpret_cast<int*>(s_delta + 2 * BM);             // [2][BM] (relative to k0)
  int* s_end = s_beg + 2 * BM;                                       // [2][BM]
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
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

  // Per-query statistics of the query tile starting at m0 into buffer `buf`.
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
      // Key bounds relative to k0, clamped to [0, BN] (fits int).
      const int64_t rb = kb - k0, re = ke - k0;
      s_beg[buf * BM + c] = int(rb < 0 ? 0 : (rb > BN ? BN : rb));
      s_end[buf * BM + c] = int(re < 0 ? 0 : (re > BN ? BN : re));
    }
  };

  load_tile<T, D, BN, THREADS>(s_k, kg, a.ks.token, k0, nk);
  load_tile<T, D, BN, THREADS>(s_v, vg, a.vs.token, k0, nk);
  if (num_tiles > 0) {
    load_tile<T, D, BM, THREADS>(s_q, qg, a.qs.token, span_begin, span_end);
    load_tile<T, D, BM, THREADS>(s_do, dog, a.dos.token, span_begin, span_end);
    load_stats(0, span_begin);
  }
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  const int key_lo = warp * 16 + lane / 4;  // this thread's key rows (relative): key_lo, key_lo + 8

  for (int t = 0; t < num_tiles; ++t) {
    const int64_t m0 = span_begin + int64_t(t) * BM;
    if (t + 1 < num_tiles) {
      const int buf = (t + 1) & 1;
      load_tile<T, D, BM, THREADS>(s_q + buf * BM * D, qg, a.qs.token, m0 + BM, span_end);
      load_tile<T, D, BM, THREADS>(s_do + buf * BM * D, dog, a.dos.token, m0 + BM, span_end);
      load_stats(buf, m0 + BM);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int buf = t & 1;
    const T* q_tile = s_q + buf * BM * D;
    const T* do_tile = s_do + buf * BM * D;
    // P^T first, consumed by dV while still packed in T (frees its fp32 registers before dP^T).
    uint32_t pa[BM / 16][4];
    {
      float s[MT][4];
#pragma unroll
      for (int i = 0; i < MT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
      mma_tile_a_bt<T, D, MT>(s, s_k, warp * 16, q_tile);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = mt * 8 + 2 * (lane & 3) + (e & 1);  // query column within the tile
          const int key = key_lo + 8 * (e >> 1);
          float p = exp2f(s[mt][e] * a.scale_log2 - s_lse2[buf * BM + c]);
          if (key < s_beg[buf * BM + c] || key >= s_end[buf * BM + c]) p = 0.f;
          s[mt][e] = p;
        }
      pack_a_fragments<T, BM>(pa, s);
    }
    mma_packed_b<T, D, BM>(dv, pa, do_tile);
    float dp[MT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i) dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
    mma_tile_a_bt<T, D, MT>(dp, s_v, warp * 16, do_tile);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = mt * 8 + 2 * (lane & 3) + (e & 1);
        // P^T back from its packed T copy (the value dV used).
        const uint32_t bits = pa[mt / 2][(mt & 1) * 2 + (e >> 1)];
        const float p = (e & 1) ? unpack_hi<T>(bits) : unpack_lo<T>(bits);
        dp[mt][e] = p * (dp[mt][e] - s_delta[buf * BM + c]);  // dS^T
      }
    mma_p_b<T, D, BM>(dk, dp, q_tile);
    __syncthreads();
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
                   double scale, const DeviceKeyRange& range, cudaStream_t stream) {
  using Cfg = FlashForwardConfig<D>;
  FlashArgs a = flash_args(q, k, v, scale, range);
  a.o = o.data_ptr();
  a.lse = ptr<float>(lse);
  a.row_max = ptr<float>(row_max);
  const dim3 grid(unsigned(ceil_div(range.num_queries, Cfg::kBlockM)), unsigned(q.size(0) * q.size(2)));
  launch_flash(flash_forward_kernel<T, D>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, a);
}

template <typename T, int D>
void flash_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& d_o, const Tensor& q, const Tensor& k,
                    const Tensor& v, const Tensor& o, const Tensor& lse, double scale, const DeviceKeyRange& range,
                    cudaStream_t stream) {
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
  const int64_t batch = q.size(0), bh = batch * q.size(2);
  const int64_t rows = bh * range.num_queries;
  if (rows > 0) {
    flash_delta_kernel<T><<<unsigned(ceil_div(rows, kGenericWarps)), kGenericWarps * kWarpSize, 0, stream>>>(
        a, batch, D);
    CUDA_CHECK_LAUNCH();
    using Dq = FlashDqConfig<D>;
    launch_flash(flash_dq_kernel<T, D>, dim3(unsigned(ceil_div(range.num_queries, Dq::kBlockM)), unsigned(bh)),
                 Dq::kThreads, Dq::kSmemBytes, stream, a);
  }
  using Dkdv = FlashDkdvConfig<D>;
  launch_flash(flash_dkdv_kernel<T, D>, dim3(unsigned(ceil_div(range.num_keys, Dkdv::kBlockN)), unsigned(bh)),
               Dkdv::kThreads, Dkdv::kSmemBytes, stream, a);
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
                                                                             stream);
    else
      (bf16 ? flash_forward<__nv_bfloat16, 128> : flash_forward<__half, 128>)(o, lse, row_max, q, k, v, scale,
                                                                               range, stream);
    return;
  }
  REHYAT_CUDA_DISPATCH_FLOAT(q.dtype(), "softmax_attention_forward",
                             generic_forward<scalar_t>(o, lse, row_max, q, k, v, scale, range, stream));
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
                                                                               range, stream);
    else
      (bf16 ? flash_backward<__nv_bfloat16, 128> : flash_backward<__half, 128>)(dq, dk, dv, d_o, q, k, v, o, lse,
                                                                                 scale, range, stream);
    return;
  }
  REHYAT_CUDA_DISPATCH_FLOAT(q.dtype(), "softmax_attention_backward",
                             generic_backward<scalar_t>(dq, dk, dv, d_o, q, k, v, o, lse, scale, range, stream));
}

}  // namespace rehyat::attention::kernels::cuda
