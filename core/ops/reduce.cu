// CUDA reductions over one axis (contract in reduce.h): x is contiguous and read as
// [outer, n, inner]; out (and argmax) are contiguous [outer * inner] and assigned (=).
//   sum_axis: out[o, i] = scale * sum_j x[o, j, i]
//   max_axis: out[o, i] = max_j x[o, j, i], argmax[o, i] = first j reaching it; NaN counts
//             as larger than everything, so the first NaN wins.
// Accumulation is fp32 for f32/bf16/f16 and fp64 for f64.
//
// One kernel shape serves every case. A block of kThreads threads handles `tile`
// consecutive outputs (flattened o * inner + i) with `lanes` threads per output walking n
// (tile * lanes == kThreads), each with kLoads loads in flight, then combines the lanes:
// - inner == 1 (rows): the lanes of a row are consecutive threads, one warp (fewer lanes
//   for short rows, several warps when there are too few rows to fill a block), so a
//   warp reads consecutive elements; combined by shuffles (and shared memory across warps).
// - inner > 1 (columns): consecutive threads take consecutive outputs (coalesced along
//   inner, up to 32 per block), the rest of the block splits n; combined in shared memory.
// When the outputs alone cannot fill the GPU, n is also split across blockIdx.y: pass 1
// writes per-split partials (fp32/fp64, with arg-max indices) to a scratch tensor the
// adapter allocates, and pass 2 reduces them with the same kernel (n = splits). Sums are
// therefore deterministic for a given shape and GPU model.
#include "core/ops/cuda_common.cuh"
#include "core/ops/cuda_ops.h"

namespace rehyat::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kLoads = 8;             // loads in flight per thread
constexpr int kMaxTileColumns = 32;   // outputs per block along a contiguous inner axis
constexpr int kMinPerThread = 8;      // elements per thread below which n is not split
constexpr int64_t kMaxSplits = 65535;  // gridDim.y limit

struct ReduceGeometry {
  int tile = 1;            // outputs per block
  int lanes = kThreads;    // threads per output
  bool n_fastest = false;  // a row's lanes are consecutive threads (inner == 1); else outputs
  int64_t chunk = 0;       // elements of n per blockIdx.y
};

struct ReducePlan {
  ReduceGeometry geometry;
  int64_t tiles = 0;   // gridDim.x
  int64_t splits = 1;  // gridDim.y; > 1 means partials and a second pass
};

inline int next_pow2(int64_t v) {
  int p = 1;
  while (p < v && p < kThreads) p *= 2;
  return p;
}

// Block shape and split for `outputs` reductions of length n with stride `inner`. `wave`
// is the number of blocks resident on the whole GPU; 0 forbids splitting.
ReducePlan plan_reduce(int64_t outputs, int64_t n, int64_t inner, int64_t wave) {
  ReducePlan plan;
  ReduceGeometry& g = plan.geometry;
  g.n_fastest = inner == 1;
  if (g.n_fastest) {  // a warp per row, more when too few rows would fill a block
    g.lanes = std::min(next_pow2(n), std::max(kWarpSize, kThreads / next_pow2(outputs)));
    g.tile = kThreads / g.lanes;
  } else {
    g.tile = std::min(next_pow2(inner), kMaxTileColumns);
    g.lanes = std::min(kThreads / g.tile, next_pow2(n));
    g.tile = kThreads / g.lanes;
  }
  plan.tiles = ceil_div(outputs, g.tile);
  if (wave > plan.tiles) {
    const int64_t by_occupancy = ceil_div(wave, plan.tiles);
    const int64_t by_work = std::max<int64_t>(1, n / (int64_t(g.lanes) * kMinPerThread));
    plan.splits = std::min({by_occupancy, by_work, kMaxSplits});
  }
  g.chunk = ceil_div(n, plan.splits);
  plan.splits = ceil_div(n, g.chunk);  // no empty splits
  return plan;
}

// This thread's output within the block and lane along n.
struct LanePosition {
  int output, lane, lane_stride;  // lane_stride: shared-memory distance between lanes
};

__device__ __forceinline__ LanePosition lane_position(const ReduceGeometry& g) {
  const int t = threadIdx.x;
  if (g.n_fastest) return {t / g.lanes, t % g.lanes, 1};
  return {t % g.tile, t / g.tile, g.tile};
}

// fn(value, j) for j = first, first + step, ... below end, in order of j, with kLoads
// loads issued before their values are used (the last batch predicated); base is x[o, 0, i].
template <typename T, typename Fn>
__device__ __forceinline__ void walk(const T* base, int64_t inner, int64_t first, int64_t end, int64_t step, Fn fn) {
  int64_t j = first;
  for (; j + (kLoads - 1) * step < end; j += kLoads * step) {
    acc_t<T> v[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) v[u] = to_acc(base[(j + u * step) * inner]);
#pragma unroll
    for (int u = 0; u < kLoads; ++u) fn(v[u], j + u * step);
  }
  if (j < end) {  // fewer than kLoads left
    acc_t<T> v[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) v[u] = j + u * step < end ? to_acc(base[(j + u * step) * inner]) : acc_t<T>(0);
#pragma unroll
    for (int u = 0; u < kLoads; ++u)
      if (j + u * step < end) fn(v[u], j + u * step);
  }
}

// (value, index) state of the arg-max.
template <typename A>
struct Best {
  A value;
  int64_t index;
};

template <typename A>
__device__ __forceinline__ A shuffle_down(A v, int delta, int width) {
  return __shfl_down_sync(0xffffffffu, v, delta, width);
}
template <typename A>
__device__ __forceinline__ Best<A> shuffle_down(Best<A> b, int delta, int width) {
  return {__shfl_down_sync(0xffffffffu, b.value, delta, width), __shfl_down_sync(0xffffffffu, b.index, delta, width)};
}

// Combines the lanes of each output with combine(S, S) -> S; the result is valid in lane
// 0 of the output. Row lanes (consecutive threads) use shuffles within a warp and, for
// rows spanning several warps, one shared-memory step; column lanes a shared-memory tree.
// `scratch` is __shared__ S[kThreads]. Every thread of the block must call it.
template <typename S, typename Combine>
__device__ __forceinline__ S combine_lanes(S s, const ReduceGeometry& g, const LanePosition& pos, S* scratch,
                                           Combine combine) {
  if (g.n_fastest) {
    const int width = g.lanes < kWarpSize ? g.lanes : kWarpSize;
#pragma unroll
    for (int d = kWarpSize / 2; d > 0; d /= 2)
      if (d < width) s = combine(s, shuffle_down(s, d, width));
    if (g.lanes <= kWarpSize) return s;
    const int warp = threadIdx.x / kWarpSize;
    if (threadIdx.x % kWarpSize == 0) scratch[warp] = s;
    __syncthreads();
    if (pos.lane == 0)
      for (int w = 1; w < g.lanes / kWarpSize; ++w) s = combine(s, scratch[warp + w]);
    return s;
  }
  scratch[threadIdx.x] = s;
  __syncthreads();
  for (int d = g.lanes / 2; d > 0; d /= 2) {
    if (pos.lane < d) scratch[threadIdx.x] = combine(scratch[threadIdx.x], scratch[threadIdx.x + d * pos.lane_stride]);
    __syncthreads();
  }
  return scratch[threadIdx.x];
}

// --- sum ---------------------------------------------------------------------------------

// out[blockIdx.y * outputs + p] = scale * sum over this split's part of n, for the
// flattened outputs p = o * inner + i of x viewed [outputs / inner, n, inner].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sum_kernel(void* out, DType out_dtype, const T* x, int64_t outputs, int64_t n, int64_t inner,
               ReduceGeometry g, double scale) {
  using A = acc_t<T>;
  __shared__ A scratch[kThreads];
  const LanePosition pos = lane_position(g);
  const int64_t p = int64_t(blockIdx.x) * g.tile + pos.output;
  const int64_t begin = int64_t(blockIdx.y) * g.chunk;
  const int64_t end = std::min(n, begin + g.chunk);
  A acc = 0;
  if (p < outputs) {
    const int64_t o = p / inner;
    walk(x + (o * n) * inner + (p - o * inner), inner, begin + pos.lane, end, g.lanes,
         [&](A v, int64_t) { acc += v; });
  }
  acc = combine_lanes(acc, g, pos, scratch, [](A a, A b) { return a + b; });
  if (pos.lane == 0 && p < outputs)  // scaled in double like the CPU reference
    store_as(out_dtype, out, int64_t(blockIdx.y) * outputs + p, double(acc) * scale);
}

// --- max ---------------------------------------------------------------------------------

// True when b beats a: larger, or NaN (NaN beats numbers), ties going to the smaller index.
template <typename A>
__device__ __forceinline__ bool beats(const Best<A>& b, const Best<A>& a) {
  if (isnan(b.value)) return !isnan(a.value) || b.index < a.index;
  if (isnan(a.value)) return false;
  return b.value > a.value || (b.value == a.value && b.index < a.index);
}

// As sum_kernel, with (value, index) pairs: values[...] = max, indices[...] = its j.
// in_index == nullptr: x holds the data and an element's index is its j; otherwise x and
// in_index are pass-1 partials laid out [splits, outputs] (inner == outputs).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    max_kernel(void* values, DType values_dtype, int64_t* indices, const T* x, const int64_t* in_index,
               int64_t outputs, int64_t n, int64_t inner, ReduceGeometry g) {
  using A = acc_t<T>;
  __shared__ Best<A> scratch[kThreads];
  const LanePosition pos = lane_position(g);
  const int64_t p = int64_t(blockIdx.x) * g.tile + pos.output;
  const int64_t begin = int64_t(blockIdx.y) * g.chunk;
  const int64_t end = std::min(n, begin + g.chunk);
  Best<A> best{A(-INFINITY), INT64_MAX};
  if (p < outputs) {
    const int64_t o = p / inner;
    const int64_t offset = (o * n) * inner + (p - o * inner);  // x[o, 0, i]
    walk(x + offset, inner, begin + pos.lane, end, g.lanes, [&](A v, int64_t j) {
      const Best<A> candidate{v, in_index ? in_index[offset + j * inner] : j};
      if (beats(candidate, best)) best = candidate;
    });
  }
  best = combine_lanes(best, g, pos, scratch, [](const Best<A>& a, const Best<A>& b) { return beats(b, a) ? b : a; });
  if (pos.lane == 0 && p < outputs) {
    const int64_t dst = int64_t(blockIdx.y) * outputs + p;
    store_as(values_dtype, values, dst, best.value);
    indices[dst] = best.index;
  }
}

// --- launchers -------------------------------------------------------------------------

dim3 reduce_grid(const ReducePlan& plan) {
  REHYAT_CHECK(plan.tiles <= INT32_MAX, "reduction over {} tiles is too large for one grid", plan.tiles);
  return dim3(unsigned(plan.tiles), unsigned(plan.splits));
}

template <typename T>
void launch_sum(void* out, DType out_dtype, const T* x, int64_t outputs, int64_t n, int64_t inner,
                const ReducePlan& plan, double scale, cudaStream_t stream) {
  sum_kernel<T><<<reduce_grid(plan), kThreads, 0, stream>>>(out, out_dtype, x, outputs, n, inner, plan.geometry,
                                                            scale);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_max(void* values, DType values_dtype, int64_t* indices, const T* x, const int64_t* in_index,
                int64_t outputs, int64_t n, int64_t inner, const ReducePlan& plan, cudaStream_t stream) {
  max_kernel<T><<<reduce_grid(plan), kThreads, 0, stream>>>(values, values_dtype, indices, x, in_index, outputs,
                                                            n, inner, plan.geometry);
  CUDA_CHECK_LAUNCH();
}

// --- adapter helpers -------------------------------------------------------------------

template <typename T>
constexpr DType kAccDType = std::is_same_v<T, double> ? DType::F64 : DType::F32;

void check_reduce(const char* op, const Tensor& out, const Tensor& x, int64_t outer, int64_t n, int64_t inner) {
  REHYAT_CHECK(x.is_contiguous() && out.is_contiguous() && out.dtype() == x.dtype(),
               "{}: needs contiguous tensors of one dtype ({} -> {})", op, x.str(), out.str());
  REHYAT_CHECK(outer >= 0 && n >= 0 && inner >= 0 && outer * n * inner == x.numel() && outer * inner == out.numel(),
               "{}: [{}, {}, {}] does not match {} -> {}", op, outer, n, inner, x.str(), out.str());
}

}  // namespace

// --- adapters --------------------------------------------------------------------------

void sum_axis(Tensor& out, const Tensor& x, int64_t outer, int64_t n, int64_t inner, double scale) {
  check_reduce("sum", out, x, outer, n, inner);
  const int64_t outputs = outer * inner;
  if (outputs == 0) return;
  const int device = out.device().index;
  cudaStream_t stream = rehyat::cuda::context(device).stream;
  if (n == 0) {  // empty sums are +0 in every floating dtype
    CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, out.nbytes(), stream));
    return;
  }
  REHYAT_CUDA_DISPATCH_FLOAT(x.dtype(), "sum", {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = ptr<const scalar_t>(x);
    const int64_t wave = int64_t(resident_blocks_per_sm(reinterpret_cast<const void*>(sum_kernel<scalar_t>), device,
                                                        kThreads)) * sm_count(device);
    const ReducePlan plan = plan_reduce(outputs, n, inner, wave);
    if (plan.splits == 1) {
      launch_sum(out.data_ptr(), out.dtype(), xp, outputs, n, inner, plan, scale, stream);
    } else {
      Tensor partial = Tensor::empty({plan.splits, outputs}, kAccDType<scalar_t>, out.device());  // [splits, outputs]
      launch_sum(partial.data_ptr(), partial.dtype(), xp, outputs, n, inner, plan, 1.0, stream);
      const ReducePlan final_plan = plan_reduce(outputs, plan.splits, outputs, 0);
      launch_sum(out.data_ptr(), out.dtype(), ptr<const A>(partial), outputs, plan.splits, outputs, final_plan,
                 scale, stream);
    }
  });
}

void max_axis(Tensor& out, Tensor& argmax, const Tensor& x, int64_t outer, int64_t n, int64_t inner) {
  check_reduce("max", out, x, outer, n, inner);
  REHYAT_CHECK(argmax.dtype() == DType::I64 && argmax.is_contiguous() && argmax.numel() == out.numel(),
               "max: arg-max must be contiguous i64 with {} elements, got {}", out.numel(), argmax.str());
  const int64_t outputs = outer * inner;
  if (outputs == 0) return;
  REHYAT_CHECK(n > 0, "max over an empty axis of {}", x.str());
  const int device = out.device().index;
  cudaStream_t stream = rehyat::cuda::context(device).stream;
  int64_t* indices = ptr<int64_t>(argmax);
  REHYAT_CUDA_DISPATCH_FLOAT(x.dtype(), "max", {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = ptr<const scalar_t>(x);
    const int64_t wave = int64_t(resident_blocks_per_sm(reinterpret_cast<const void*>(max_kernel<scalar_t>), device,
                                                        kThreads)) * sm_count(device);
    const ReducePlan plan = plan_reduce(outputs, n, inner, wave);
    if (plan.splits == 1) {
      launch_max(out.data_ptr(), out.dtype(), indices, xp, nullptr, outputs, n, inner, plan, stream);
    } else {
      Tensor partial = Tensor::empty({plan.splits, outputs}, kAccDType<scalar_t>, out.device());  // [splits, outputs]
      Tensor partial_index = Tensor::empty({plan.splits, outputs}, DType::I64, out.device());     // [splits, outputs]
      launch_max(partial.data_ptr(), partial.dtype(), ptr<int64_t>(partial_index), xp, nullptr, outputs, n, inner,
                 plan, stream);
      const ReducePlan final_plan = plan_reduce(outputs, plan.splits, outputs, 0);
      launch_max(out.data_ptr(), out.dtype(), indices, ptr<const A>(partial), ptr<const int64_t>(partial_index),
                 outputs, plan.splits, outputs, final_plan, stream);
    }
  });
}

}  // namespace rehyat::kernels::cuda
