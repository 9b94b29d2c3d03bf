// CUDA gather / scatter_add along one axis (contract and torch semantics in index.h).
//   gather:      out[..., j, ...] = x[..., index[..., j, ...], ...]     out is assigned (=)
//   scatter_add: dst[..., index[..., j, ...], ...] += src[..., j, ...]  dst accumulates (+=)
// x, src, out and dst are contiguous; index (i32 or i64, read through a run-time switch)
// may have any strides, stride 0 included (an expanded 1-D index is index_select). One
// thread per element of out (gather) or src (scatter_add): an OffsetCalculator over that
// shape gives the index element and the data offset off the indexed axis, the index value
// supplies the rest. An index outside [0, size) traps the kernel (the CUDA context is then
// unusable: the CPU path reports such errors, the GPU path only refuses to corrupt memory).
// scatter_add uses native atomicAdd (f32, f64, f16, bf16 on sm_90), so the order of
// additions into one element, and thus its rounding, is not deterministic.
#include "core/ops/cuda_common.cuh"
#include "core/ops/cuda_ops.h"

namespace rehyat::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// The indexed axis of the data tensor.
struct IndexedAxis {
  int64_t size;    // valid indices are [0, size)
  int64_t stride;  // element stride of the axis in the data tensor
};

__device__ __forceinline__ int64_t load_index(const void* index, bool index_is_i64, int64_t offset) {
  return index_is_i64 ? static_cast<const int64_t*>(index)[offset] : static_cast<const int32_t*>(index)[offset];
}

// out[i] = x[offsets[1] + index[offsets[0]] * axis.stride] for the n elements of out
// (operands of calc: index, x with the axis stride zeroed). U is an unsigned type of the
// element's size: gathering moves bits.
template <typename U>
__global__ void __launch_bounds__(kThreads) gather_kernel(U* out, const U* x, const void* index, bool index_is_i64,
                                                           int64_t n, OffsetCalculator<2> calc, IndexedAxis axis) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    int64_t off[2];
    calc.offsets(i, off);
    const int64_t k = load_index(index, index_is_i64, off[0]);
    if (k < 0 || k >= axis.size) __trap();
    out[i] = x[off[1] + k * axis.stride];
  }
}

// dst[offsets[1] + index[offsets[0]] * axis.stride] += src[i] for the n elements of src
// (operands of calc: index, dst with the axis stride zeroed).
template <typename T>
__global__ void __launch_bounds__(kThreads) scatter_add_kernel(T* dst, const T* src, const void* index,
                                                                bool index_is_i64, int64_t n, OffsetCalculator<2> calc,
                                                                IndexedAxis axis) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    int64_t off[2];
    calc.offsets(i, off);
    const int64_t k = load_index(index, index_is_i64, off[0]);
    if (k < 0 || k >= axis.size) __trap();
    atomicAdd(dst + off[1] + k * axis.stride, src[i]);
  }
}

// --- launchers -------------------------------------------------------------------------

template <typename U>
void launch_gather(U* out, const U* x, const void* index, bool index_is_i64, int64_t n,
                   const OffsetCalculator<2>& calc, IndexedAxis axis, int device, cudaStream_t stream) {
  const unsigned grid = grid_stride_blocks(gather_kernel<U>, device, kThreads, ceil_div(n, kThreads));
  gather_kernel<U><<<grid, kThreads, 0, stream>>>(out, x, index, index_is_i64, n, calc, axis);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_scatter_add(T* dst, const T* src, const void* index, bool index_is_i64, int64_t n,
                        const OffsetCalculator<2>& calc, IndexedAxis axis, int device, cudaStream_t stream) {
  const unsigned grid = grid_stride_blocks(scatter_add_kernel<T>, device, kThreads, ceil_div(n, kThreads));
  scatter_add_kernel<T><<<grid, kThreads, 0, stream>>>(dst, src, index, index_is_i64, n, calc, axis);
  CUDA_CHECK_LAUNCH();
}

// --- adapter helpers -------------------------------------------------------------------

// Checks what the kernels rely on: `data` (indexed along dim) and `pattern` (the shape
// iterated, = index's shape) contiguous, same rank, equal off dim; index i32 or i64.
void check_index(const char* op, const Tensor& data, int dim, const Tensor& index, const Tensor& pattern) {
  REHYAT_CHECK(data.is_contiguous() && pattern.is_contiguous(), "{}: data tensors must be contiguous ({}, {})", op,
               data.str(), pattern.str());
  REHYAT_CHECK(index.dtype() == DType::I32 || index.dtype() == DType::I64, "{}: index must be i32 or i64, got {}",
               op, index.str());
  REHYAT_CHECK(index.shape() == pattern.shape() && data.dim() == pattern.dim() && dim >= 0 && dim < data.dim(),
               "{}: dim {} for {}, index {} and {}", op, dim, data.str(), index.str(), pattern.str());
  for (int d = 0; d < data.dim(); ++d)
    REHYAT_CHECK(d == dim || data.size(d) == pattern.size(d), "{}: {} and {} differ in dim {}", op, data.str(),
                 pattern.str(), d);
}

// Offsets over pattern's shape of (index, data off the indexed axis).
OffsetCalculator<2> index_calculator(const Tensor& data, int dim, const Tensor& index) {
  Shape data_strides = contiguous_strides(data.shape());
  data_strides[dim] = 0;  // the index supplies this coordinate
  return make_offset_calculator<2>(index.shape(), {&index.strides(), &data_strides});
}

}  // namespace

// --- adapters --------------------------------------------------------------------------

void gather(Tensor& out, const Tensor& x, int dim, const Tensor& index) {
  check_index("gather", x, dim, index, out);
  REHYAT_CHECK(out.dtype() == x.dtype(), "gather: dtype mismatch ({} and {})", out.str(), x.str());
  const int64_t n = out.numel();
  if (n == 0) return;
  if (x.size(dim) == 0) REHYAT_FAIL("gather: index into the empty dim {} of {}", dim, x.str());
  const int device = out.device().index;
  cudaStream_t stream = rehyat::cuda::context(device).stream;
  const auto calc = index_calculator(x, dim, index);
  const IndexedAxis axis{x.size(dim), x.stride(dim)};
  const bool i64 = index.dtype() == DType::I64;
  switch (dtype_size(x.dtype())) {
    case 2:
      launch_gather(static_cast<uint16_t*>(out.data_ptr()), static_cast<const uint16_t*>(x.data_ptr()),
                    index.data_ptr(), i64, n, calc, axis, device, stream);
      break;
    case 4:
      launch_gather(static_cast<uint32_t*>(out.data_ptr()), static_cast<const uint32_t*>(x.data_ptr()),
                    index.data_ptr(), i64, n, calc, axis, device, stream);
      break;
    case 8:
      launch_gather(static_cast<uint64_t*>(out.data_ptr()), static_cast<const uint64_t*>(x.data_ptr()),
                    index.data_ptr(), i64, n, calc, axis, device, stream);
      break;
    default: REHYAT_FAIL("gather: unsupported element size of {}", x.str());
  }
}

void scatter_add(Tensor& dst, int dim, const Tensor& index, const Tensor& src) {
  check_index("scatter_add", dst, dim, index, src);
  const int64_t n = src.numel();
  if (n == 0) return;
  if (dst.size(dim) == 0) REHYAT_FAIL("scatter_add: index into the empty dim {} of {}", dim, dst.str());
  const int device = dst.device().index;
  cudaStream_t stream = rehyat::cuda::context(device).stream;
  const auto calc = index_calculator(dst, dim, index);
  const IndexedAxis axis{dst.size(dim), dst.stride(dim)};
  const bool i64 = index.dtype() == DType::I64;
  REHYAT_CUDA_DISPATCH_FLOAT(dst.dtype(), "scatter_add", {
    launch_scatter_add(ptr<scalar_t>(dst), ptr<const scalar_t>(src), index.data_ptr(), i64, n, calc, axis, device,
                       stream);
  });
}

}  // namespace rehyat::kernels::cuda
