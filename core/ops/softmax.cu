// Softmax over the last axis of a contiguous [rows, cols] view on CUDA (contract:
// softmax.h). Forward assigns y and saves nothing beyond y itself (the backward needs
// only y); backward assigns dx = y * (dy - sum(dy * y)). Math in fp32 (fp64 for f64).
//
// Register rows (bf16 / f16 / f32, cols a multiple of the 16-byte vector, pointers
// 16-byte aligned, at most 16 vectors per lane: cols <= 4096 for bf16 / f16, <= 2048 for
// f32): one warp per row held in registers, so global memory is read once and written
// once; max, sum of exponentials and output come from the registers.
//
// Generic rows (anything else, f64 included): a warp per row (cols <= kWarpRowCols) or a
// block per row (longer rows, e.g. 32760 columns), two passes over global memory: an
// online max / sum of exponentials, then the output.
#include "core/ops/cuda_common.cuh"  // first: it configures fmt for nvcc

#include <cmath>
#include <initializer_list>

#include "core/ops/cuda_ops.h"
#include "core/ops/packed_vector.cuh"

namespace rehyat::kernels::cuda {

namespace {

constexpr int kRowWarps = 4;  // rows per block of the warp-per-row kernels
constexpr int kRowThreads = kRowWarps * kWarpSize;
constexpr int kBlockRowThreads = 256;  // threads of the block-per-row kernels
constexpr int64_t kWarpRowCols = 1024;  // longer generic rows get a block each
constexpr int kMaxVecsPerLane = 16;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float exp_of(float d) { return exp2f(d * kLog2e); }
__device__ __forceinline__ double exp_of(double d) { return exp(d); }

// Vectors per lane of the register-row kernels (4, 8 or 16), or 0 for the generic path.
template <typename T>
int register_vecs_per_lane(int64_t cols, std::initializer_list<const void*> pointers) {
  if constexpr (std::is_same_v<T, double>) {
    return 0;
  } else {
    if (cols % kPackedElems<T> != 0) return 0;
    for (const void* p : pointers)
      if (!is_aligned(p, 16)) return 0;
    const int64_t per_lane = ceil_div(cols / kPackedElems<T>, kWarpSize);
    for (int v : {4, 8, kMaxVecsPerLane})
      if (per_lane <= v) return v;
    return 0;
  }
}

// Threads sharing one generic row: a warp, or the whole block.
template <bool kWholeBlock>
struct RowGroup {
  int64_t row;
  int first, step;
  __device__ RowGroup()
      : row(kWholeBlock ? int64_t(blockIdx.x) : int64_t(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize),
        first(kWholeBlock ? int(threadIdx.x) : int(threadIdx.x % kWarpSize)),
        step(kWholeBlock ? int(blockDim.x) : kWarpSize) {}
  template <typename A>
  __device__ A sum(A v, A* scratch) const {
    if constexpr (kWholeBlock) return block_sum(v, scratch);
    else return warp_sum(v);
  }
  template <typename A>
  __device__ A max(A v, A* scratch) const {
    if constexpr (kWholeBlock) return block_max(v, scratch);
    else return warp_max(v);
  }
};

// --- forward ---------------------------------------------------------------------------

template <typename T, int kVecsPerLane>
__global__ void __launch_bounds__(kRowThreads)
    softmax_forward_registers(T* __restrict__ y, const T* __restrict__ x, int64_t rows, int cols) {
  constexpr int kVec = kPackedElems<T>;
  const int64_t row = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarpSize, vecs = cols / kVec;
  const Packed16* x_row = reinterpret_cast<const Packed16*>(x + row * cols);
  Packed16 xv[kVecsPerLane];  // vector lane + 32 i of the row
  load_row_vectors(xv, x_row, lane, vecs);

  float row_max = -INFINITY;
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i)
    if (lane + i * kWarpSize < vecs)
#pragma unroll
      for (int e = 0; e < kVec; ++e) row_max = fmaxf(row_max, unpack<T>(xv[i], e));
  row_max = warp_max(row_max);
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i)
    if (lane + i * kWarpSize < vecs)
#pragma unroll
      for (int e = 0; e < kVec; ++e) total += exp_of(unpack<T>(xv[i], e) - row_max);
  const float inv_total = 1.f / warp_sum(total);

  Packed16* y_row = reinterpret_cast<Packed16*>(y + row * cols);
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i) {
    const int j = lane + i * kWarpSize;
    if (j >= vecs) continue;
    float out[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) out[e] = exp_of(unpack<T>(xv[i], e) - row_max) * inv_total;
    y_row[j] = pack<T>(out);
  }
}

template <typename T, bool kWholeBlock>
__global__ void __launch_bounds__(kWholeBlock ? kBlockRowThreads : kRowThreads)
    softmax_forward_generic(T* __restrict__ y, const T* __restrict__ x, int64_t rows, int64_t cols) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarpSize];
  const RowGroup<kWholeBlock> group;
  if (group.row >= rows) return;  // whole-warp exit; whole-block rows are all in range
  const T* x_row = x + group.row * cols;
  // Online max and sum of exp(x - max) over this thread's elements.
  A row_max = -INFINITY, total = 0;
  for (int64_t c = group.first; c < cols; c += group.step) {
    const A v = to_acc(x_row[c]);
    if (v > row_max) {
      total = total * exp_of(row_max - v) + A(1);
      row_max = v;
    } else if (v != A(-INFINITY)) {
      total += exp_of(v - row_max);
    }
  }
  const A group_max = group.max(row_max, scratch);
  const A inv_total = A(1) / group.sum(total * exp_of(row_max - group_max), scratch);
  T* y_row = y + group.row * cols;
  for (int64_t c = group.first; c < cols; c += group.step)
    y_row[c] = from_acc<T>(exp_of(to_acc(x_row[c]) - group_max) * inv_total);
}

template <typename T>
void launch_softmax_forward(T* y, const T* x, int64_t rows, int64_t cols, cudaStream_t stream) {
  const unsigned warp_row_blocks = unsigned(ceil_div(rows, kRowWarps));
  if constexpr (!std::is_same_v<T, double>) {
    const int vecs_per_lane = register_vecs_per_lane<T>(cols, {y, x});
    if (vecs_per_lane) {
      auto kernel = vecs_per_lane == 4   ? softmax_forward_registers<T, 4>
                    : vecs_per_lane == 8 ? softmax_forward_registers<T, 8>
                                         : softmax_forward_registers<T, kMaxVecsPerLane>;
      kernel<<<warp_row_blocks, kRowThreads, 0, stream>>>(y, x, rows, int(cols));
      CUDA_CHECK_LAUNCH();
      return;
    }
  }
  if (cols <= kWarpRowCols)
    softmax_forward_generic<T, false><<<warp_row_blocks, kRowThreads, 0, stream>>>(y, x, rows, cols);
  else
    softmax_forward_generic<T, true><<<unsigned(rows), kBlockRowThreads, 0, stream>>>(y, x, rows, cols);
  CUDA_CHECK_LAUNCH();
}

// --- backward --------------------------------------------------------------------------

template <typename T, int kVecsPerLane>
__global__ void __launch_bounds__(kRowThreads)
    softmax_backward_registers(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ y,
                               int64_t rows, int cols) {
  constexpr int kVec = kPackedElems<T>;
  const int64_t row = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarpSize, vecs = cols / kVec;
  const Packed16* y_row = reinterpret_cast<const Packed16*>(y + row * cols);
  const Packed16* dy_row = reinterpret_cast<const Packed16*>(dy + row * cols);
  Packed16 yv[kVecsPerLane], dyv[kVecsPerLane];
  load_row_vectors(yv, y_row, lane, vecs);
  load_row_vectors(dyv, dy_row, lane, vecs);
  float dot = 0.f;
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i)
    if (lane + i * kWarpSize < vecs)
#pragma unroll
      for (int e = 0; e < kVec; ++e) dot += unpack<T>(dyv[i], e) * unpack<T>(yv[i], e);
  dot = warp_sum(dot);

  Packed16* dx_row = reinterpret_cast<Packed16*>(dx + row * cols);
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i) {
    const int j = lane + i * kWarpSize;
    if (j >= vecs) continue;
    float out[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) out[e] = unpack<T>(yv[i], e) * (unpack<T>(dyv[i], e) - dot);
    dx_row[j] = pack<T>(out);
  }
}

template <typename T, bool kWholeBlock>
__global__ void __launch_bounds__(kWholeBlock ? kBlockRowThreads : kRowThreads)
    softmax_backward_generic(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ y, int64_t rows,
                             int64_t cols) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarpSize];
  const RowGroup<kWholeBlock> group;
  if (group.row >= rows) return;  // whole-warp exit; whole-block rows are all in range
  const T* y_row = y + group.row * cols;
  const T* dy_row = dy + group.row * cols;
  A dot = 0;
  for (int64_t c = group.first; c < cols; c += group.step) dot += to_acc(dy_row[c]) * to_acc(y_row[c]);
  dot = group.sum(dot, scratch);
  T* dx_row = dx + group.row * cols;
  for (int64_t c = group.first; c < cols; c += group.step)
    dx_row[c] = from_acc<T>(to_acc(y_row[c]) * (to_acc(dy_row[c]) - dot));
}

template <typename T>
void launch_softmax_backward(T* dx, const T* dy, const T* y, int64_t rows, int64_t cols, cudaStream_t stream) {
  const unsigned warp_row_blocks = unsigned(ceil_div(rows, kRowWarps));
  if constexpr (!std::is_same_v<T, double>) {
    const int vecs_per_lane = register_vecs_per_lane<T>(cols, {dx, dy, y});
    if (vecs_per_lane) {
      auto kernel = vecs_per_lane == 4   ? softmax_backward_registers<T, 4>
                    : vecs_per_lane == 8 ? softmax_backward_registers<T, 8>
                                         : softmax_backward_registers<T, kMaxVecsPerLane>;
      kernel<<<warp_row_blocks, kRowThreads, 0, stream>>>(dx, dy, y, rows, int(cols));
      CUDA_CHECK_LAUNCH();
      return;
    }
  }
  if (cols <= kWarpRowCols)
    softmax_backward_generic<T, false><<<warp_row_blocks, kRowThreads, 0, stream>>>(dx, dy, y, rows, cols);
  else
    softmax_backward_generic<T, true><<<unsigned(rows), kBlockRowThreads, 0, stream>>>(dx, dy, y, rows, cols);
  CUDA_CHECK_LAUNCH();
}

// --- adapters --------------------------------------------------------------------------

struct RowShape {
  int64_t rows = 0, cols = 0;
};

RowShape check_rows(const char* op, const Tensor& ref, std::initializer_list<const Tensor*> others) {
  REHYAT_CHECK(ref.dim() >= 1 && ref.is_contiguous(), "{}: {} must be contiguous with at least one dim", op,
               ref.str());
  for (const Tensor* t : others)
    REHYAT_CHECK(t->dtype() == ref.dtype() && t->is_contiguous() && t->numel() == ref.numel(),
                 "{}: {} must be a contiguous {} tensor like {}", op, t->str(), dtype_name(ref.dtype()), ref.str());
  RowShape s{0, ref.size(-1)};
  s.rows = s.cols ? ref.numel() / s.cols : 0;
  REHYAT_CHECK(s.rows <= int64_t(INT32_MAX), "{}: {} rows exceed the grid limit", op, s.rows);
  return s;
}

}  // namespace

void softmax_forward(Tensor& y, const Tensor& x) {
  const RowShape s = check_rows("softmax", x, {&y});
  if (x.numel() == 0) return;
  const cudaStream_t stream = rehyat::cuda::stream(x.device());
  REHYAT_CUDA_DISPATCH_FLOAT(x.dtype(), "softmax", {
    launch_softmax_forward<scalar_t>(ptr<scalar_t>(y), ptr<const scalar_t>(x), s.rows, s.cols, stream);
  });
}

void softmax_backward(Tensor& dx, const Tensor& dy, const Tensor& y) {
  const RowShape s = check_rows("softmax_backward", y, {&dy, &dx});
  if (y.numel() == 0) return;
  const cudaStream_t stream = rehyat::cuda::stream(y.device());
  REHYAT_CUDA_DISPATCH_FLOAT(y.dtype(), "softmax_backward", {
    launch_softmax_backward<scalar_t>(ptr<scalar_t>(dx), ptr<const scalar_t>(dy), ptr<const scalar_t>(y), s.rows,
                                      s.cols, stream);
  });
}

}  // namespace rehyat::kernels::cuda
