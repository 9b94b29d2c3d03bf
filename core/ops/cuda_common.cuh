// Device helpers shared by the CUDA kernels in core/ops/*.cu.
//
// - Storage types: a dtype maps to float, double, __nv_bfloat16, __half, int32_t or int64_t
//   on the device; REHYAT_CUDA_DISPATCH_FLOAT binds `scalar_t` to one of the floating ones
//   and ptr<T>(tensor) checks the dtype before handing out the raw pointer.
// - Math type: acc_t<T> is double for f64 and float otherwise; to_acc / from_acc convert
//   (bf16 and f16 round to nearest even), store_as writes a value into a floating dtype
//   chosen at run time.
// - Vec<T, N>: an aligned register vector for 16-byte loads and stores (kVec16<T> elements).
// - OffsetCalculator<N>: element offsets of N strided operands for a row-major linear
//   index over a shared shape, after merging dims that are contiguous for every operand
//   and dropping size-1 dims (so contiguous operands need no division at all).
// - Launch geometry: ceil_div, sm_count, grid_stride_blocks (one full wave at the kernel's
//   occupancy, fewer blocks when the work is smaller).
// - Reductions: warp_sum / warp_max over a full warp, block_sum / block_max over a whole
//   block (blockDim.x a multiple of 32) with a 32-element shared scratch array.
#pragma once

// fmt 9 switches its constexpr support off under nvcc but still checks format strings in
// a consteval constructor, which then fails ("call to consteval function ... did not
// produce a valid constant expression"); nvcc 13 handles fmt's constexpr code, so turn it
// back on. Must precede the first fmt include: include this header first.
#ifndef FMT_USE_CONSTEXPR
#define FMT_USE_CONSTEXPR 1
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <type_traits>

#include "core/check.h"
#include "core/cuda_context.h"
#include "core/tensor.h"

namespace rehyat::kernels::cuda {

constexpr int kWarpSize = 32;
constexpr int kMaxDims = 8;  // rank limit of OffsetCalculator after merging dims

// --- storage types ---------------------------------------------------------------------

template <typename T>
struct DeviceDTypeOf;
template <> struct DeviceDTypeOf<float> { static constexpr DType value = DType::F32; };
template <> struct DeviceDTypeOf<double> { static constexpr DType value = DType::F64; };
template <> struct DeviceDTypeOf<__nv_bfloat16> { static constexpr DType value = DType::BF16; };
template <> struct DeviceDTypeOf<__half> { static constexpr DType value = DType::F16; };
template <> struct DeviceDTypeOf<int32_t> { static constexpr DType value = DType::I32; };
template <> struct DeviceDTypeOf<int64_t> { static constexpr DType value = DType::I64; };

// Address of element 0 of `t` as a device T*; throws when t's dtype is not T's.
template <typename T>
T* ptr(const Tensor& t) {
  REHYAT_CHECK(t.dtype() == DeviceDTypeOf<std::remove_const_t<T>>::value, "CUDA kernel expected {} but got {}",
               dtype_name(DeviceDTypeOf<std::remove_const_t<T>>::value), t.str());
  return static_cast<T*>(t.data_ptr());
}

// Binds `scalar_t` to the device storage type of a floating dtype and runs the body.
#define REHYAT_CUDA_DISPATCH_FLOAT(dtype, what, ...)                                                 \
  switch (dtype) {                                                                                   \
    REHYAT_DISPATCH_CASE(F32, float, __VA_ARGS__)                                                    \
    REHYAT_DISPATCH_CASE(F64, double, __VA_ARGS__)                                                   \
    REHYAT_DISPATCH_CASE(BF16, __nv_bfloat16, __VA_ARGS__)                                           \
    REHYAT_DISPATCH_CASE(F16, __half, __VA_ARGS__)                                                   \
    default: REHYAT_FAIL("{}: dtype {} is not a floating type", what, ::rehyat::dtype_name(dtype)); \
  }

// --- math type and conversions ---------------------------------------------------------

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else {
    return v;
  }
}

// base[i] = v converted to the floating `dtype` (double -> float -> bf16/f16 rounds twice,
// like the host's from_double).
template <typename A>
__device__ __forceinline__ void store_as(DType dtype, void* base, int64_t i, A v) {
  switch (dtype) {
    case DType::F32: static_cast<float*>(base)[i] = float(v); break;
    case DType::F64: static_cast<double*>(base)[i] = double(v); break;
    case DType::BF16: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(float(v)); break;
    case DType::F16: static_cast<__half*>(base)[i] = __float2half_rn(float(v)); break;
    default: break;  // integer dtypes are not produced by floating kernels
  }
}

// --- vectors ---------------------------------------------------------------------------

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};
// Elements per 16-byte access.
template <typename T>
constexpr int kVec16 = 16 / int(sizeof(T));

inline bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// --- strided offsets -------------------------------------------------------------------

template <int N>
struct OffsetCalculator {
  int rank = 0;         // merged dims; 0 for a single element
  bool narrow = false;  // every linear index and size fits 32 bits: divide in 32-bit
  int64_t sizes[kMaxDims] = {};       // innermost dim first
  int64_t strides[kMaxDims][N] = {};  // element strides per dim and operand

  // off[k] = element offset of operand k for the row-major linear index `linear`.
  __device__ __forceinline__ void offsets(int64_t linear, int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    if (narrow) {
      uint32_t rem = uint32_t(linear);
#pragma unroll
      for (int d = 0; d < kMaxDims; ++d) {
        if (d >= rank) break;
        uint32_t coord = rem;
        if (d < rank - 1) {
          const uint32_t size = uint32_t(sizes[d]);
          rem = coord / size;
          coord -= rem * size;
        }
#pragma unroll
        for (int k = 0; k < N; ++k) off[k] += int64_t(coord) * strides[d][k];
      }
    } else {
      int64_t rem = linear;
#pragma unroll
      for (int d = 0; d < kMaxDims; ++d) {
        if (d >= rank) break;
        int64_t coord = rem;
        if (d < rank - 1) {
          rem = coord / sizes[d];
          coord -= rem * sizes[d];
        }
#pragma unroll
        for (int k = 0; k < N; ++k) off[k] += coord * strides[d][k];
      }
    }
  }
};

// Calculator for `shape` with one stride list per operand (each of shape's rank).
template <int N>
OffsetCalculator<N> make_offset_calculator(const Shape& shape, const std::array<const Shape*, N>& strides) {
  OffsetCalculator<N> calc;
  for (int d = int(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    if (calc.rank > 0) {
      const int last = calc.rank - 1;
      bool mergeable = true;
      for (int k = 0; k < N; ++k)
        mergeable = mergeable && (*strides[k])[d] == calc.strides[last][k] * calc.sizes[last];
      if (mergeable) {
        calc.sizes[last] *= shape[d];
        continue;
      }
    }
    REHYAT_CHECK(calc.rank < kMaxDims, "CUDA strided kernel: shape {} has more than {} non-mergeable dims",
                 shape_str(shape), kMaxDims);
    calc.sizes[calc.rank] = shape[d];
    for (int k = 0; k < N; ++k) calc.strides[calc.rank][k] = (*strides[k])[d];
    ++calc.rank;
  }
  calc.narrow = shape_numel(shape) <= int64_t(UINT32_MAX);
  return calc;
}

// --- launch geometry -------------------------------------------------------------------

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int sm_count(int device) { return rehyat::cuda::context(device).props.multiProcessorCount; }

// Blocks of `threads` (and `dynamic_smem` bytes) of `kernel` resident on one SM; queried
// once per kernel, device and launch shape.
inline int resident_blocks_per_sm(const void* kernel, int device, int threads, size_t dynamic_smem = 0) {
  struct Key {
    const void* kernel;
    int device, threads;
    size_t dynamic_smem;
    bool operator<(const Key& o) const {
      if (kernel != o.kernel) return kernel < o.kernel;
      if (device != o.device) return device < o.device;
      if (threads != o.threads) return threads < o.threads;
      return dynamic_smem < o.dynamic_smem;
    }
  };
  static std::mutex mutex;
  static std::map<Key, int> cache;
  const Key key{kernel, device, threads, dynamic_smem};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int blocks = 0;
  rehyat::cuda::set_device(device);
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, dynamic_smem));
  REHYAT_CHECK(blocks > 0, "CUDA kernel cannot launch {} threads per block", threads);
  cache.emplace(key, blocks);
  return blocks;
}

// Grid for a grid-stride kernel that would need `blocks_needed` blocks to cover its work
// in one pass: at most one full wave of resident blocks, at least one block.
template <typename Kernel>
unsigned grid_stride_blocks(Kernel kernel, int device, int threads, int64_t blocks_needed,
                            size_t dynamic_smem = 0) {
  const int64_t wave =
      int64_t(resident_blocks_per_sm(reinterpret_cast<const void*>(kernel), device, threads, dynamic_smem)) *
      sm_count(device);
  return unsigned(std::max<int64_t>(1, std::min(blocks_needed, wave)));
}

// --- reductions ------------------------------------------------------------------------

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int mask = kWarpSize / 2; mask > 0; mask >>= 1) v += __shfl_xor_sync(0xffffffffu, v, mask);
  return v;
}

// Maximum over the warp; NaN propagates.
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int mask = kWarpSize / 2; mask > 0; mask >>= 1) {
    const A other = __shfl_xor_sync(0xffffffffu, v, mask);
    v = (other > v || other != other) ? other : v;
  }
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32;
// `scratch` is __shared__ A[32]. Safe to call repeatedly with the same scratch.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : A(0);
  return warp_sum(v);
}

// Maximum over the block (NaN propagates), returned to every thread; as block_sum.
template <typename A>
__device__ __forceinline__ A block_max(A v, A* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : scratch[0];
  return warp_max(v);
}

}  // namespace rehyat::kernels::cuda
