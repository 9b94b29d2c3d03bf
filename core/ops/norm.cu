// LayerNorm and RMSNorm on CUDA over a contiguous [rows, cols] view (contract: norm.h).
//
// Forward assigns y and saves rstd [rows] (and mean [rows] for LayerNorm): f32, f64 for
// f64 x. Backward assigns dx and, when asked, assigns dweight / dbias (=, never +=):
// blocks write per-block column sums to a scratch [blocks, sums, cols] (f32; f64 for f64)
// from the caching allocator, then a second kernel adds the blocks' rows in a fixed order
// (deterministic, no atomics).
//
// Register rows (bf16 / f16 / f32, cols a multiple of the 16-byte vector, every pointer
// 16-byte aligned, at most 16 vectors per lane: cols <= 4096 for bf16 / f16, <= 2048 for
// f32): one warp per row, the row held in registers as 16-byte vectors, lane l holding
// vectors l, l + 32, ... . Global memory is read once and written once, and both
// LayerNorm moments come from the registers (mean first, then sum((x - mean)^2)). The
// backward keeps each warp's dweight / dbias sums in a shared-memory slice of its own
// whose columns each belong to one lane, so accumulating needs no barrier; the block adds
// its warps' slices at the end.
//
// Generic rows (anything else, f64 included): one warp per row looping over the row in
// global memory (re-reading it per pass); the backward's column sums come from a separate
// column kernel that reads x and dy again.
#include "core/ops/cuda_common.cuh"  // first: it configures fmt for nvcc

#include <algorithm>
#include <initializer_list>

#include "core/ops/cuda_ops.h"
#include "core/ops/norm.h"
#include "core/ops/packed_vector.cuh"

namespace rehyat::kernels::cuda {

namespace {

enum class Norm { Layer, Rms };

constexpr int kRowWarps = 4;  // rows in flight per block of the row kernels
constexpr int kRowThreads = kRowWarps * kWarpSize;
constexpr int kMaxVecsPerLane = 16;
constexpr int kColumnTile = 32;   // columns per block of the column kernels (threadIdx.x)
constexpr int kColumnGroups = 8;  // row groups per block of the column kernels (threadIdx.y)
constexpr size_t kMaxSumsSharedBytes = 48 << 10;  // per-warp column sums: default smem limit

// Vectors per lane of the register-row kernel for a row of `cols` T elements (4, 8 or
// 16), or 0 when the row takes the generic path.
template <typename T>
int register_vecs_per_lane(int64_t cols, std::initializer_list<const void*> pointers) {
  if constexpr (std::is_same_v<T, double>) {
    return 0;
  } else {
    if (cols % kPackedElems<T> != 0) return 0;
    for (const void* p : pointers)
      if (p && !is_aligned(p, 16)) return 0;
    const int64_t per_lane = ceil_div(cols / kPackedElems<T>, kWarpSize);
    for (int v : {4, 8, kMaxVecsPerLane})
      if (per_lane <= v) return v;
    return 0;
  }
}

// --- forward ---------------------------------------------------------------------------

template <typename T, int kVecsPerLane, Norm kNorm>
__global__ void __launch_bounds__(kRowThreads)
    norm_forward_registers(T* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd,
                           const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                           int64_t rows, int cols, float eps) {
  constexpr int kVec = kPackedElems<T>;
  const int64_t row = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarpSize, vecs = cols / kVec;
  const Packed16* x_row = reinterpret_cast<const Packed16*>(x + row * cols);
  Packed16 xv[kVecsPerLane];  // vector lane + 32 i of the row
  load_row_vectors(xv, x_row, lane, vecs);

  float center = 0.f;
  if constexpr (kNorm == Norm::Layer) {
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i)
      if (lane + i * kWarpSize < vecs)
#pragma unroll
        for (int e = 0; e < kVec; ++e) sum += unpack<T>(xv[i], e);
    center = warp_sum(sum) / float(cols);
  }
  float squares = 0.f;
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i)
    if (lane + i * kWarpSize < vecs)
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float d = unpack<T>(xv[i], e) - center;
        squares += d * d;
      }
  const float rs = 1.f / sqrtf(warp_sum(squares) / float(cols) + eps);

  const Packed16* w_vec = reinterpret_cast<const Packed16*>(weight);
  const Packed16* b_vec = reinterpret_cast<const Packed16*>(bias);
  Packed16* y_row = reinterpret_cast<Packed16*>(y + row * cols);
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i) {
    const int j = lane + i * kWarpSize;
    if (j >= vecs) continue;
    Packed16 w, b;
    if (weight) w = w_vec[j];
    if (bias) b = b_vec[j];
    float out[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      out[e] = (unpack<T>(xv[i], e) - center) * rs;
      if (weight) out[e] *= unpack<T>(w, e);
      if (bias) out[e] += unpack<T>(b, e);
    }
    y_row[j] = pack<T>(out);
  }
  if (lane == 0) {
    if constexpr (kNorm == Norm::Layer) mean[row] = center;
    rstd[row] = rs;
  }
}

template <typename T, Norm kNorm>
__global__ void __launch_bounds__(kRowThreads)
    norm_forward_generic(T* __restrict__ y, acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ rstd,
                         const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                         int64_t rows, int64_t cols, acc_t<T> eps) {
  using A = acc_t<T>;
  const int64_t row = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarpSize;
  const T* x_row = x + row * cols;
  A center = 0;
  if constexpr (kNorm == Norm::Layer) {
    A sum = 0;
    for (int64_t c = lane; c < cols; c += kWarpSize) sum += to_acc(x_row[c]);
    center = warp_sum(sum) / A(cols);
  }
  A squares = 0;
  for (int64_t c = lane; c < cols; c += kWarpSize) {
    const A d = to_acc(x_row[c]) - center;
    squares += d * d;
  }
  const A rs = A(1) / sqrt(warp_sum(squares) / A(cols) + eps);
  T* y_row = y + row * cols;
  for (int64_t c = lane; c < cols; c += kWarpSize) {
    A o = (to_acc(x_row[c]) - center) * rs;
    if (weight) o *= to_acc(weight[c]);
    if (bias) o += to_acc(bias[c]);
    y_row[c] = from_acc<T>(o);
  }
  if (lane == 0) {
    if constexpr (kNorm == Norm::Layer) mean[row] = center;
    rstd[row] = rs;
  }
}

template <typename T, Norm kNorm>
void launch_norm_forward(T* y, acc_t<T>* mean, acc_t<T>* rstd, const T* x, const T* weight, const T* bias,
                         int64_t rows, int64_t cols, double eps, cudaStream_t stream) {
  const unsigned blocks = unsigned(ceil_div(rows, kRowWarps));
  if constexpr (!std::is_same_v<T, double>) {
    const int vecs_per_lane = register_vecs_per_lane<T>(cols, {y, x, weight, bias});
    if (vecs_per_lane) {
      auto kernel = vecs_per_lane == 4   ? norm_forward_registers<T, 4, kNorm>
                    : vecs_per_lane == 8 ? norm_forward_registers<T, 8, kNorm>
                                         : norm_forward_registers<T, kMaxVecsPerLane, kNorm>;
      kernel<<<blocks, kRowThreads, 0, stream>>>(y, mean, rstd, x, weight, bias, rows, int(cols), float(eps));
      CUDA_CHECK_LAUNCH();
      return;
    }
  }
  norm_forward_generic<T, kNorm>
      <<<blocks, kRowThreads, 0, stream>>>(y, mean, rstd, x, weight, bias, rows, cols, acc_t<T>(eps));
  CUDA_CHECK_LAUNCH();
}

// --- backward --------------------------------------------------------------------------
// xhat = (x - mean) * rstd (RMS: x * rstd), g = dy * weight (dy without weight):
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))   (RMS: no mean(g) term)
//   dweight = sum over rows of dy * xhat,  dbias = sum over rows of dy

// Register rows, grid-stride over rows. `partial` is [gridDim.x, sums, cols] with sums =
// sum_weight + sum_bias (dweight's sums first); nullptr when neither is asked for.
// Dynamic shared memory: blockDim.x / 32 * sums * cols floats.
template <typename T, int kVecsPerLane, Norm kNorm>
__global__ void __launch_bounds__(kRowThreads)
    norm_backward_registers(T* __restrict__ dx, float* __restrict__ partial, const T* __restrict__ dy,
                            const T* __restrict__ x, const float* __restrict__ mean,
                            const float* __restrict__ rstd, const T* __restrict__ weight, int64_t rows, int cols,
                            bool sum_weight, bool sum_bias) {
  constexpr int kVec = kPackedElems<T>;
  constexpr int kQuads = kVec / 4;  // float4 of column sums per vector
  extern __shared__ float4 warp_sums[];  // [warps][sums][cols / 4]
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  const int vecs = cols / kVec, sums = int(sum_weight) + int(sum_bias);
  float4* dw_sum = warp_sums + warp * sums * (cols / 4);
  float4* db_sum = dw_sum + (sum_weight ? cols / 4 : 0);
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i) {
    const int j = lane + i * kWarpSize;
    if (j >= vecs) continue;
#pragma unroll
    for (int q = 0; q < kQuads; ++q) {
      if (sum_weight) dw_sum[j * kQuads + q] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (sum_bias) db_sum[j * kQuads + q] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }

  const Packed16* w_vec = reinterpret_cast<const Packed16*>(weight);
  for (int64_t row = int64_t(blockIdx.x) * warps + warp; row < rows; row += int64_t(gridDim.x) * warps) {
    const Packed16* x_row = reinterpret_cast<const Packed16*>(x + row * cols);
    const Packed16* dy_row = reinterpret_cast<const Packed16*>(dy + row * cols);
    Packed16 xv[kVecsPerLane], dyv[kVecsPerLane];
    load_row_vectors(xv, x_row, lane, vecs);
    load_row_vectors(dyv, dy_row, lane, vecs);
    const float center = kNorm == Norm::Layer ? mean[row] : 0.f;
    const float rs = rstd[row];
    float sum_g = 0.f, sum_gx = 0.f;
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i) {
      const int j = lane + i * kWarpSize;
      if (j >= vecs) continue;
      Packed16 w;
      if (weight) w = w_vec[j];
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float xhat = (unpack<T>(xv[i], e) - center) * rs;
        const float g = weight ? unpack<T>(dyv[i], e) * unpack<T>(w, e) : unpack<T>(dyv[i], e);
        sum_g += g;
        sum_gx += g * xhat;
      }
    }
    const float mean_g = kNorm == Norm::Layer ? warp_sum(sum_g) / float(cols) : 0.f;
    const float mean_gx = warp_sum(sum_gx) / float(cols);

    Packed16* dx_row = reinterpret_cast<Packed16*>(dx + row * cols);
#pragma unroll
    for (int i = 0; i < kVecsPerLane; ++i) {
      const int j = lane + i * kWarpSize;
      if (j >= vecs) continue;
      Packed16 w;
      if (weight) w = w_vec[j];
      float xhat[kVec], d[kVec], out[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        xhat[e] = (unpack<T>(xv[i], e) - center) * rs;
        d[e] = unpack<T>(dyv[i], e);
        const float g = weight ? d[e] * unpack<T>(w, e) : d[e];
        out[e] = rs * (g - mean_g - xhat[e] * mean_gx);
      }
      dx_row[j] = pack<T>(out);
#pragma unroll
      for (int q = 0; q < kQuads; ++q) {
        if (sum_weight) {
          float4 s = dw_sum[j * kQuads + q];
          s.x += d[4 * q] * xhat[4 * q];
          s.y += d[4 * q + 1] * xhat[4 * q + 1];
          s.z += d[4 * q + 2] * xhat[4 * q + 2];
          s.w += d[4 * q + 3] * xhat[4 * q + 3];
          dw_sum[j * kQuads + q] = s;
        }
        if (sum_bias) {
          float4 s = db_sum[j * kQuads + q];
          s.x += d[4 * q];
          s.y += d[4 * q + 1];
          s.z += d[4 * q + 2];
          s.w += d[4 * q + 3];
          db_sum[j * kQuads + q] = s;
        }
      }
    }
  }

  __syncthreads();
  const int per_warp = sums * cols;
  const float* all_sums = reinterpret_cast<const float*>(warp_sums);
  for (int idx = threadIdx.x; idx < per_warp; idx += blockDim.x) {
    float s = 0.f;
    for (int w = 0; w < warps; ++w) s += all_sums[w * per_warp + idx];
    partial[int64_t(blockIdx.x) * per_warp + idx] = s;
  }
}

// Generic rows: dx only (the column sums come from norm_column_partials).
template <typename T, Norm kNorm>
__global__ void __launch_bounds__(kRowThreads)
    norm_backward_generic(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                          const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                          const T* __restrict__ weight, int64_t rows, int64_t cols) {
  using A = acc_t<T>;
  const int64_t row = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarpSize;
  const T* x_row = x + row * cols;
  const T* dy_row = dy + row * cols;
  const A center = kNorm == Norm::Layer ? mean[row] : A(0);
  const A rs = rstd[row];
  A sum_g = 0, sum_gx = 0;
  for (int64_t c = lane; c < cols; c += kWarpSize) {
    const A g = weight ? to_acc(dy_row[c]) * to_acc(weight[c]) : to_acc(dy_row[c]);
    sum_g += g;
    sum_gx += g * (to_acc(x_row[c]) - center) * rs;
  }
  const A mean_g = kNorm == Norm::Layer ? warp_sum(sum_g) / A(cols) : A(0);
  const A mean_gx = warp_sum(sum_gx) / A(cols);
  T* dx_row = dx + row * cols;
  for (int64_t c = lane; c < cols; c += kWarpSize) {
    const A g = weight ? to_acc(dy_row[c]) * to_acc(weight[c]) : to_acc(dy_row[c]);
    const A xhat = (to_acc(x_row[c]) - center) * rs;
    dx_row[c] = from_acc<T>(rs * (g - mean_g - xhat * mean_gx));
  }
}

// Column sums of dy * xhat and dy over the rows of chunk blockIdx.y, into
// partial[blockIdx.y, sums, cols]. Block (kColumnTile, kColumnGroups).
template <typename T, Norm kNorm>
__global__ void __launch_bounds__(kColumnTile * kColumnGroups)
    norm_column_partials(acc_t<T>* __restrict__ partial, const T* __restrict__ dy, const T* __restrict__ x,
                         const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd, int64_t rows,
                         int64_t cols, int64_t rows_per_chunk, bool sum_weight, bool sum_bias) {
  using A = acc_t<T>;
  __shared__ A tile[2][kColumnGroups][kColumnTile + 1];
  const int64_t c = int64_t(blockIdx.x) * kColumnTile + threadIdx.x;
  const int64_t first = int64_t(blockIdx.y) * rows_per_chunk;
  const int64_t last = min(rows, first + rows_per_chunk);
  A sw = 0, sb = 0;
  if (c < cols)
    for (int64_t r = first + threadIdx.y; r < last; r += kColumnGroups) {
      const A d = to_acc(dy[r * cols + c]);
      const A center = kNorm == Norm::Layer ? mean[r] : A(0);
      sw += d * (to_acc(x[r * cols + c]) - center) * rstd[r];
      sb += d;
    }
  tile[0][threadIdx.y][threadIdx.x] = sw;
  tile[1][threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  A total_w = 0, total_b = 0;
  for (int g = 0; g < kColumnGroups; ++g) {
    total_w += tile[0][g][threadIdx.x];
    total_b += tile[1][g][threadIdx.x];
  }
  A* out = partial + int64_t(blockIdx.y) * (int64_t(sum_weight) + int64_t(sum_bias)) * cols;
  if (sum_weight) out[c] = total_w;
  if (sum_bias) out[(sum_weight ? cols : 0) + c] = total_b;
}

// dweight[c] / dbias[c] = sum over b of partial[b, s, c] (s = 0: dweight when present,
// else dbias; s = 1: dbias), added in block order. Grid (cols / kColumnTile, sums).
template <typename T, typename A>
__global__ void __launch_bounds__(kColumnTile * kColumnGroups)
    sum_column_partials(T* __restrict__ dweight, T* __restrict__ dbias, const A* __restrict__ partial,
                        int64_t blocks, int64_t cols) {
  __shared__ A tile[kColumnGroups][kColumnTile + 1];
  const int64_t c = int64_t(blockIdx.x) * kColumnTile + threadIdx.x;
  const int64_t stride = int64_t(gridDim.y) * cols;
  A s = 0;
  if (c < cols)
    for (int64_t b = threadIdx.y; b < blocks; b += kColumnGroups) s += partial[b * stride + blockIdx.y * cols + c];
  tile[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  A total = 0;
  for (int g = 0; g < kColumnGroups; ++g) total += tile[g][threadIdx.x];
  T* out = (blockIdx.y == 0 && dweight) ? dweight : dbias;
  out[c] = from_acc<T>(total);
}

template <typename T, typename A>
void launch_sum_column_partials(T* dweight, T* dbias, const A* partial, int64_t blocks, int64_t cols,
                                cudaStream_t stream) {
  const dim3 grid(unsigned(ceil_div(cols, kColumnTile)), unsigned(int(dweight != nullptr) + int(dbias != nullptr)));
  sum_column_partials<T, A><<<grid, dim3(kColumnTile, kColumnGroups), 0, stream>>>(dweight, dbias, partial, blocks,
                                                                                   cols);
  CUDA_CHECK_LAUNCH();
}

// Register-row backward: warps per block chosen so the per-warp column sums fit the
// default 48 KB of shared memory; one wave of blocks grid-strides over the rows.
struct RegisterBackwardGeometry {
  int threads = kRowThreads;
  size_t shared_bytes = 0;
};
inline RegisterBackwardGeometry register_backward_geometry(int64_t cols, int sums) {
  RegisterBackwardGeometry g;
  const size_t per_warp = size_t(sums) * size_t(cols) * sizeof(float);
  const int warps = per_warp ? int(std::clamp<size_t>(kMaxSumsSharedBytes / per_warp, 1, kRowWarps)) : kRowWarps;
  g.threads = warps * kWarpSize;
  g.shared_bytes = size_t(warps) * per_warp;
  return g;
}

// How the backward runs: the register kernel variant (0: generic) and the rows of its
// partial column sums (blocks of the register kernel, row chunks of the column kernel).
struct BackwardPlan {
  int vecs_per_lane = 0;
  int64_t partial_rows = 0;
  int64_t rows_per_chunk = 0;  // generic column kernel
  RegisterBackwardGeometry geometry;
};

template <typename T, Norm kNorm>
auto register_backward_kernel(int vecs_per_lane) {
  return vecs_per_lane == 4   ? norm_backward_registers<T, 4, kNorm>
         : vecs_per_lane == 8 ? norm_backward_registers<T, 8, kNorm>
                              : norm_backward_registers<T, kMaxVecsPerLane, kNorm>;
}

template <typename T, Norm kNorm>
BackwardPlan plan_norm_backward(const T* dx, const T* dy, const T* x, const T* weight, int64_t rows, int64_t cols,
                                int sums, int device) {
  BackwardPlan plan;
  plan.vecs_per_lane = register_vecs_per_lane<T>(cols, {dx, dy, x, weight});
  if constexpr (!std::is_same_v<T, double>) {
    if (plan.vecs_per_lane) {
      plan.geometry = register_backward_geometry(cols, sums);
      const int warps = plan.geometry.threads / kWarpSize;
      plan.partial_rows = grid_stride_blocks(register_backward_kernel<T, kNorm>(plan.vecs_per_lane), device,
                                             plan.geometry.threads, ceil_div(rows, warps), plan.geometry.shared_bytes);
      return plan;
    }
  }
  const int64_t column_tiles = ceil_div(cols, kColumnTile);
  const int64_t chunks = std::clamp<int64_t>(ceil_div(4 * int64_t(sm_count(device)), column_tiles), 1,
                                             std::min<int64_t>(ceil_div(rows, kColumnGroups), 65535));
  plan.rows_per_chunk = ceil_div(rows, chunks);
  plan.partial_rows = ceil_div(rows, plan.rows_per_chunk);
  return plan;
}

template <typename T, Norm kNorm>
void launch_norm_backward(T* dx, T* dweight, T* dbias, acc_t<T>* scratch, const BackwardPlan& plan, const T* dy,
                          const T* x, const acc_t<T>* mean, const acc_t<T>* rstd, const T* weight, int64_t rows,
                          int64_t cols, cudaStream_t stream) {
  const bool sum_weight = dweight != nullptr, sum_bias = dbias != nullptr;
  if constexpr (!std::is_same_v<T, double>) {
    if (plan.vecs_per_lane) {
      register_backward_kernel<T, kNorm>(plan.vecs_per_lane)
          <<<unsigned(plan.partial_rows), plan.geometry.threads, plan.geometry.shared_bytes, stream>>>(
              dx, scratch, dy, x, mean, rstd, weight, rows, int(cols), sum_weight, sum_bias);
      CUDA_CHECK_LAUNCH();
      if (sum_weight || sum_bias) launch_sum_column_partials(dweight, dbias, scratch, plan.partial_rows, cols, stream);
      return;
    }
  }
  norm_backward_generic<T, kNorm>
      <<<unsigned(ceil_div(rows, kRowWarps)), kRowThreads, 0, stream>>>(dx, dy, x, mean, rstd, weight, rows, cols);
  CUDA_CHECK_LAUNCH();
  if (!sum_weight && !sum_bias) return;
  const dim3 grid(unsigned(ceil_div(cols, kColumnTile)), unsigned(plan.partial_rows));
  norm_column_partials<T, kNorm><<<grid, dim3(kColumnTile, kColumnGroups), 0, stream>>>(
      scratch, dy, x, mean, rstd, rows, cols, plan.rows_per_chunk, sum_weight, sum_bias);
  CUDA_CHECK_LAUNCH();
  launch_sum_column_partials(dweight, dbias, scratch, plan.partial_rows, cols, stream);
}

// --- adapters --------------------------------------------------------------------------

struct RowShape {
  int64_t rows = 0, cols = 0;
};

// Checks what the kernels rely on: contiguous tensors, one dtype for data and
// parameters, statistics of the statistics dtype with one element per row.
RowShape check_rows(const char* op, const Tensor& x, std::initializer_list<const Tensor*> data,
                    std::initializer_list<const Tensor*> stats, std::initializer_list<const Tensor*> params) {
  REHYAT_CHECK(x.dim() >= 1 && x.is_contiguous(), "{}: x {} must be contiguous with at least one dim", op, x.str());
  RowShape s{0, x.size(-1)};
  s.rows = s.cols ? x.numel() / s.cols : 0;
  REHYAT_CHECK(s.rows <= int64_t(INT32_MAX), "{}: {} rows exceed the grid limit", op, s.rows);
  for (const Tensor* t : data)
    REHYAT_CHECK(t->dtype() == x.dtype() && t->is_contiguous() && t->numel() == x.numel(),
                 "{}: {} must be a contiguous {} tensor like x {}", op, t->str(), dtype_name(x.dtype()), x.str());
  for (const Tensor* t : stats)
    REHYAT_CHECK(t->dtype() == norm_stats_dtype(x.dtype()) && t->is_contiguous() && t->numel() == s.rows,
                 "{}: statistics {} must be contiguous {} with {} elements", op, t->str(),
                 dtype_name(norm_stats_dtype(x.dtype())), s.rows);
  for (const Tensor* t : params)
    if (t)
      REHYAT_CHECK(t->dtype() == x.dtype() && t->is_contiguous() && t->numel() == s.cols,
                   "{}: parameter {} must be contiguous {} with {} elements", op, t->str(), dtype_name(x.dtype()),
                   s.cols);
  return s;
}

template <typename T>
T* ptr_or_null(const Tensor* t) {
  return t ? ptr<T>(*t) : nullptr;
}

template <Norm kNorm>
void norm_forward(Tensor& y, Tensor* mean, Tensor& rstd, const Tensor& x, const Tensor* weight, const Tensor* bias,
                  double eps, const RowShape& s) {
  if (x.numel() == 0) return;
  const cudaStream_t stream = rehyat::cuda::stream(x.device());
  REHYAT_CUDA_DISPATCH_FLOAT(x.dtype(), kNorm == Norm::Layer ? "layer_norm" : "rms_norm", {
    using A = acc_t<scalar_t>;
    launch_norm_forward<scalar_t, kNorm>(ptr<scalar_t>(y), ptr_or_null<A>(mean), ptr<A>(rstd),
                                         ptr<const scalar_t>(x), ptr_or_null<const scalar_t>(weight),
                                         ptr_or_null<const scalar_t>(bias), s.rows, s.cols, eps, stream);
  });
}

template <Norm kNorm>
void norm_backward(Tensor& dx, Tensor* dweight, Tensor* dbias, const Tensor& dy, const Tensor& x,
                   const Tensor* mean, const Tensor& rstd, const Tensor* weight, const RowShape& s) {
  if (s.rows == 0 || s.cols == 0) {  // column sums over no rows are zero
    if (s.cols > 0)
      for (Tensor* t : {dweight, dbias})
        if (t) kernels::cuda::fill(*t, 0.0);
    return;
  }
  const int sums = int(dweight != nullptr) + int(dbias != nullptr);
  const Device device = x.device();
  const cudaStream_t stream = rehyat::cuda::stream(device);
  REHYAT_CUDA_DISPATCH_FLOAT(x.dtype(), kNorm == Norm::Layer ? "layer_norm_backward" : "rms_norm_backward", {
    using A = acc_t<scalar_t>;
    const BackwardPlan plan = plan_norm_backward<scalar_t, kNorm>(
        ptr<scalar_t>(dx), ptr<const scalar_t>(dy), ptr<const scalar_t>(x), ptr_or_null<const scalar_t>(weight),
        s.rows, s.cols, sums, device.index);
    Tensor scratch;  // [partial_rows, sums, cols] column sums, reduced into dweight / dbias
    if (sums) scratch = Tensor::empty({plan.partial_rows, sums, s.cols}, norm_stats_dtype(x.dtype()), device);
    launch_norm_backward<scalar_t, kNorm>(
        ptr<scalar_t>(dx), ptr_or_null<scalar_t>(dweight), ptr_or_null<scalar_t>(dbias),
        sums ? ptr<A>(scratch) : nullptr, plan, ptr<const scalar_t>(dy), ptr<const scalar_t>(x),
        ptr_or_null<const A>(mean), ptr<const A>(rstd), ptr_or_null<const scalar_t>(weight), s.rows, s.cols, stream);
  });
}

}  // namespace

void layernorm_forward(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor* weight,
                       const Tensor* bias, double eps) {
  const RowShape s = check_rows("layer_norm", x, {&y}, {&mean, &rstd}, {weight, bias});
  norm_forward<Norm::Layer>(y, &mean, rstd, x, weight, bias, eps, s);
}

void layernorm_backward(Tensor& dx, Tensor* dweight, Tensor* dbias, const Tensor& dy, const Tensor& x,
                        const Tensor& mean, const Tensor& rstd, const Tensor* weight) {
  const RowShape s = check_rows("layer_norm_backward", x, {&dx, &dy}, {&mean, &rstd}, {weight, dweight, dbias});
  norm_backward<Norm::Layer>(dx, dweight, dbias, dy, x, &mean, rstd, weight, s);
}

void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor* weight, double eps) {
  const RowShape s = check_rows("rms_norm", x, {&y}, {&rstd}, {weight});
  norm_forward<Norm::Rms>(y, nullptr, rstd, x, weight, nullptr, eps, s);
}

void rmsnorm_backward(Tensor& dx, Tensor* dweight, const Tensor& dy, const Tensor& x, const Tensor& rstd,
                      const Tensor* weight) {
  const RowShape s = check_rows("rms_norm_backward", x, {&dx, &dy}, {&rstd}, {weight, dweight});
  norm_backward<Norm::Rms>(dx, dweight, nullptr, dy, x, nullptr, rstd, weight, s);
}

}  // namespace rehyat::kernels::cuda
