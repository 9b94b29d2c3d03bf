// CUDA kernels of the feature map's fused elementwise stages (contract and layouts:
// attention/feature_map_kernels.h; arguments are checked by the router in the .cpp).
//
// Why this shape: the stages are memory-bound maps over [H, R, C] tensors next to two
// cuBLAS products, so each one reads and writes its operands once, and the permute between
// the head-major product outputs and the token-major φ [B, N, H, Dp] happens inside the map
// (no copy). Threads run along the columns, which are contiguous in both layouts, so every
// load and store of a warp is coalesced. The backward maps also sum their output over the
// rows for the bias gradient: each block of rows writes one partial row of
// sums (accumulated in fixed order), and a second kernel adds the partial rows in order:
// deterministic, no atomics.
#include "core/ops/cuda_common.cuh"  // first: it configures fmt for nvcc

#include "attention/feature_map_kernels.h"
#include "attention/feature_map_math.h"
#include "core/cuda_context.h"

namespace rehyat::attention::kernels::cuda {
namespace {

using rehyat::kernels::cuda::acc_t;
using rehyat::kernels::cuda::ceil_div;
using rehyat::kernels::cuda::from_acc;
using rehyat::kernels::cuda::ptr;
using rehyat::kernels::cuda::to_acc;

constexpr int64_t kMinRowsPerBlock = 64;
constexpr int64_t kMaxRowBlocks = 128;  // bounds the partial sums the second pass adds per column
constexpr int kMaxThreads = 256;

struct Dims {
  int64_t heads, rows, cols;
};

Dims dims_of(const Tensor& head_major) { return {head_major.size(0), head_major.size(1), head_major.size(2)}; }

// Column-parallel launch: grid (row blocks, heads, column chunks), one thread per column,
// each block `rows` consecutive rows (at least kMinRowsPerBlock, and so many that there
// are at most kMaxRowBlocks row blocks).
struct ColumnLaunch {
  dim3 grid, block;
  int64_t row_blocks, rows;
};
ColumnLaunch column_launch(const Dims& n) {
  const int threads = int(std::min<int64_t>(kMaxThreads, ceil_div(n.cols, 32) * 32));
  const int64_t rows = std::max(kMinRowsPerBlock, ceil_div(n.rows, kMaxRowBlocks));
  const int64_t row_blocks = ceil_div(n.rows, rows);
  REHYAT_CHECK(row_blocks <= INT32_MAX && n.heads <= 65535 && ceil_div(n.cols, threads) <= 65535,
               "feature map kernels: {} rows x {} heads x {} columns exceed the launch grid", n.rows, n.heads, n.cols);
  return {dim3(unsigned(row_blocks), unsigned(n.heads), unsigned(ceil_div(n.cols, threads))), dim3(unsigned(threads)),
          row_blocks, rows};
}

template <typename G, typename F>
__global__ void hidden_forward_kernel(G* __restrict__ g, const G* __restrict__ a1, const F* __restrict__ b1,
                                      int64_t rows, int64_t cols, int64_t block_rows, FeatureActivation act) {
  using A = acc_t<G>;
  const int64_t c = int64_t(blockIdx.z) * blockDim.x + threadIdx.x, h = blockIdx.y;
  if (c >= cols) return;
  const A bias = A(b1[h * cols + c]);
  const int64_t r0 = int64_t(blockIdx.x) * block_rows, r1 = r0 + block_rows < rows ? r0 + block_rows : rows;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = (h * rows + r) * cols + c;
    g[i] = from_acc<G>(phi_math::activation(act, to_acc(a1[i]) + bias));
  }
}

template <typename G, typename F>
__global__ void hidden_backward_kernel(G* du, F* __restrict__ partial, const G* dg, const G* __restrict__ a1,
                                       const F* __restrict__ b1, int64_t rows, int64_t cols, int64_t block_rows,
                                       FeatureActivation act) {
  using A = acc_t<G>;
  const int64_t c = int64_t(blockIdx.z) * blockDim.x + threadIdx.x, h = blockIdx.y;
  if (c >= cols) return;
  const A bias = A(b1[h * cols + c]);
  const int64_t r0 = int64_t(blockIdx.x) * block_rows, r1 = r0 + block_rows < rows ? r0 + block_rows : rows;
  A sum = A(0);
  for (int64_t r = r0; r < r1; ++r) {  // du may be dg: each element is read before it is written
    const int64_t i = (h * rows + r) * cols + c;
    const A v = to_acc(dg[i]) * phi_math::activation_grad(act, to_acc(a1[i]) + bias);
    du[i] = from_acc<G>(v);
    sum += v;
  }
  partial[(h * gridDim.x + blockIdx.x) * cols + c] = F(sum);
}

template <typename F>
__global__ void features_forward_kernel(F* __restrict__ phi, const F* __restrict__ a2, const F* __restrict__ b2,
                                        int64_t rows, int64_t heads, int64_t cols, int64_t part, int64_t block_rows) {
  using A = F;
  const int64_t c = int64_t(blockIdx.z) * blockDim.x + threadIdx.x, h = blockIdx.y;
  if (c >= cols) return;
  const A bias = A(b2[h * cols + c]);
  const int power = int(c / part) + 1;
  const int64_t r0 = int64_t(blockIdx.x) * block_rows, r1 = r0 + block_rows < rows ? r0 + block_rows : rows;
  for (int64_t r = r0; r < r1; ++r)
    phi[(r * heads + h) * cols + c] = phi_math::feature(a2[(h * rows + r) * cols + c] + bias, power);
}

template <typename G, typename F>
__global__ void features_backward_kernel(G* __restrict__ dz, F* __restrict__ partial, const F* __restrict__ dphi,
                                         const F* __restrict__ a2, const F* __restrict__ b2, int64_t rows,
                                         int64_t heads, int64_t cols, int64_t part, int64_t block_rows) {
  using A = acc_t<G>;
  const int64_t c = int64_t(blockIdx.z) * blockDim.x + threadIdx.x, h = blockIdx.y;
  if (c >= cols) return;
  const A bias = A(b2[h * cols + c]);
  const int power = int(c / part) + 1;
  const int64_t r0 = int64_t(blockIdx.x) * block_rows, r1 = r0 + block_rows < rows ? r0 + block_rows : rows;
  A sum = A(0);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = (h * rows + r) * cols + c;
    const A v = A(dphi[(r * heads + h) * cols + c]) * phi_math::feature_grad(A(a2[i]) + bias, power);
    dz[i] = from_acc<G>(v);
    sum += v;
  }
  partial[(h * gridDim.x + blockIdx.x) * cols + c] = F(sum);
}

// out[h, c] = Σ_b partial[h, b, c], b in order.
template <typename F>
__global__ void column_sum_kernel(F* __restrict__ out, const F* __restrict__ partial, int64_t blocks,
                                  int64_t heads, int64_t cols) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= heads * cols) return;
  const int64_t h = i / cols, c = i - h * cols;
  double sum = 0;
#pragma unroll 4
  for (int64_t b = 0; b < blocks; ++b) sum += partial[(h * blocks + b) * cols + c];
  out[i] = F(sum);
}

// A backward map and its bias gradient: launch(l, partial, stream) runs the map over the
// rows (when there are any), writing [H, row blocks, C] partial sums into scratch in the
// high dtype F; their sum over the row blocks, in order, is assigned to bias_grad.
template <typename F, typename Launch>
void map_with_column_sums(Tensor& bias_grad, const Dims& n, Launch&& launch) {
  const ColumnLaunch l = column_launch(n);
  const cudaStream_t stream = rehyat::cuda::stream(bias_grad.device());
  Tensor partial = Tensor::empty({n.heads, l.row_blocks, n.cols}, bias_grad.dtype(), bias_grad.device());
  if (n.rows > 0) {
    launch(l, ptr<F>(partial), stream);
    CUDA_CHECK_LAUNCH();
  }
  column_sum_kernel<F><<<unsigned(ceil_div(n.heads * n.cols, 256)), 256, 0, stream>>>(
      ptr<F>(bias_grad), ptr<const F>(partial), l.row_blocks, n.heads, n.cols);
  CUDA_CHECK_LAUNCH();
}

// Binds scalar_t to the product dtype's device type and high_t to float (double for f64).
#define REHYAT_PHI_CUDA_DISPATCH(dtype, what, ...)                                             \
  REHYAT_CUDA_DISPATCH_FLOAT(dtype, what, {                                                    \
    using high_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;       \
    __VA_ARGS__;                                                                               \
  })

}  // namespace

void phi_hidden_forward(Tensor& g, const Tensor& a1, const Tensor& b1, FeatureActivation act) {
  const Dims n = dims_of(a1);
  if (n.heads * n.rows * n.cols == 0) return;
  const ColumnLaunch l = column_launch(n);
  const cudaStream_t stream = rehyat::cuda::stream(g.device());
  REHYAT_PHI_CUDA_DISPATCH(a1.dtype(), "phi_hidden_forward", {
    hidden_forward_kernel<scalar_t, high_t><<<l.grid, l.block, 0, stream>>>(
        ptr<scalar_t>(g), ptr<const scalar_t>(a1), ptr<const high_t>(b1), n.rows, n.cols, l.rows, act);
    CUDA_CHECK_LAUNCH();
  });
}

void phi_hidden_backward(Tensor& du, Tensor& db1, const Tensor& dg, const Tensor& a1, const Tensor& b1,
                         FeatureActivation act) {
  const Dims n = dims_of(a1);
  if (n.heads * n.cols == 0) return;
  REHYAT_PHI_CUDA_DISPATCH(a1.dtype(), "phi_hidden_backward", {
    map_with_column_sums<high_t>(db1, n, [&](const ColumnLaunch& l, high_t* partial, cudaStream_t stream) {
      hidden_backward_kernel<scalar_t, high_t><<<l.grid, l.block, 0, stream>>>(
          ptr<scalar_t>(du), partial, ptr<const scalar_t>(dg), ptr<const scalar_t>(a1), ptr<const high_t>(b1), n.rows,
          n.cols, l.rows, act);
    });
  });
}

void phi_features_forward(Tensor& phi, const Tensor& a2, const Tensor& b2, int64_t degree) {
  const Dims n = dims_of(a2);
  if (n.heads * n.rows * n.cols == 0) return;
  const ColumnLaunch l = column_launch(n);
  const cudaStream_t stream = rehyat::cuda::stream(phi.device());
  auto launch = [&](auto high) {
    using high_t = decltype(high);
    features_forward_kernel<high_t><<<l.grid, l.block, 0, stream>>>(
        ptr<high_t>(phi), ptr<const high_t>(a2), ptr<const high_t>(b2), n.rows, n.heads, n.cols, n.cols / degree, l.rows);
    CUDA_CHECK_LAUNCH();
  };
  if (a2.dtype() == DType::F64)
    launch(double{});
  else
    launch(float{});
}

void phi_features_backward(Tensor& dz, Tensor& db2, const Tensor& dphi, const Tensor& a2, const Tensor& b2,
                           int64_t degree) {
  const Dims n = dims_of(a2);
  if (n.heads * n.cols == 0) return;
  REHYAT_PHI_CUDA_DISPATCH(dz.dtype(), "phi_features_backward", {
    map_with_column_sums<high_t>(db2, n, [&](const ColumnLaunch& l, high_t* partial, cudaStream_t stream) {
      features_backward_kernel<scalar_t, high_t><<<l.grid, l.block, 0, stream>>>(
          ptr<scalar_t>(dz), partial, ptr<const high_t>(dphi), ptr<const high_t>(a2), ptr<const high_t>(b2), n.rows,
          n.heads, n.cols, n.cols / degree, l.rows);
    });
  });
}

}  // namespace rehyat::attention::kernels::cuda
