// CUDA elementwise kernels: unary maps, binary maps (with the gradient maps of the unary
// ops), dtype copies, fills and Philox random fills (contract in elementwise.h). Every
// output is assigned (=), never accumulated; out may alias an input element for element.
//
// Maps compute in fp32 for f32/bf16/f16 and in fp64 for f64, with accurate libm-style
// functions (expf, tanhf, log1pf, powf; no approximate intrinsics) and the formulas of the
// CPU reference in elementwise.cpp. The op is a run-time switch taken once per batch of
// values, so each map kernel is templated only on the storage type.
//
// Two paths per map:
// - contiguous: out and every input contiguous and 16-byte aligned. Each thread moves
//   kUnroll 16-byte vectors per grid-stride step (both loads issued before any math), the
//   grid is one wave of resident blocks, and the last numel % vector elements are done by
//   the first threads of the grid.
// - strided: any strides (stride 0 broadcasts), one element per thread and step, offsets
//   from an OffsetCalculator (a contiguous but misaligned view becomes one merged dim and
//   needs no division).
#include "core/ops/cuda_common.cuh"
#include "core/ops/cuda_ops.h"
#include "core/philox.h"

namespace rehyat::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 2;  // 16-byte vectors per thread in flight per grid-stride step

// --- math in the accumulation type ------------------------------------------------------

__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
__device__ __forceinline__ float log1p_acc(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_acc(double x) { return log1p(x); }
__device__ __forceinline__ float tanh_acc(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_acc(double x) { return tanh(x); }
__device__ __forceinline__ float sqrt_acc(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_acc(double x) { return sqrt(x); }
__device__ __forceinline__ float pow_acc(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double pow_acc(double x, double y) { return pow(x, y); }
__device__ __forceinline__ float abs_acc(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_acc(double x) { return fabs(x); }

template <typename A>
__device__ __forceinline__ A sigmoid(A x) {
  return A(1) / (A(1) + exp_acc(-x));
}

template <typename A, int N, typename Fn>
__device__ __forceinline__ void map_each(A (&v)[N], Fn fn) {
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] = fn(v[k]);
}

template <typename A, int N, typename Fn>
__device__ __forceinline__ void map_each(A (&a)[N], const A (&b)[N], Fn fn) {
#pragma unroll
  for (int k = 0; k < N; ++k) a[k] = fn(a[k], b[k]);
}

// v[k] = op(v[k]) for all k; one switch for the whole batch.
template <typename A, int N>
__device__ __forceinline__ void unary_map(UnaryOp op, A (&v)[N], A alpha, A beta) {
  constexpr A kC = A(0.7978845608028654);  // sqrt(2/pi)
  switch (op) {
    case UnaryOp::Neg: map_each(v, [](A x) { return -x; }); break;
    case UnaryOp::Exp: map_each(v, [](A x) { return exp_acc(x); }); break;
    case UnaryOp::Log: map_each(v, [](A x) { return log_acc(x); }); break;
    case UnaryOp::Sqrt: map_each(v, [](A x) { return sqrt_acc(x); }); break;
    case UnaryOp::Rsqrt: map_each(v, [](A x) { return A(1) / sqrt_acc(x); }); break;
    case UnaryOp::Square: map_each(v, [](A x) { return x * x; }); break;
    case UnaryOp::Abs: map_each(v, [](A x) { return abs_acc(x); }); break;
    case UnaryOp::Gelu:
      map_each(v, [=](A x) { return A(0.5) * x * (A(1) + tanh_acc(kC * (x + A(0.044715) * x * x * x))); });
      break;
    case UnaryOp::Silu: map_each(v, [](A x) { return x * sigmoid(x); }); break;
    case UnaryOp::Softplus: map_each(v, [](A x) { return x > A(20) ? x : log1p_acc(exp_acc(x)); }); break;
    case UnaryOp::Sigmoid: map_each(v, [](A x) { return sigmoid(x); }); break;
    case UnaryOp::Pow: map_each(v, [=](A x) { return pow_acc(x, alpha); }); break;
    case UnaryOp::Affine: map_each(v, [=](A x) { return alpha * x + beta; }); break;
  }
}

// a[k] = op(a[k], b[k]) for all k; b is the forward input (output for SigmoidGrad) in the
// gradient maps. One switch for the whole batch.
template <typename A, int N>
__device__ __forceinline__ void binary_map(BinaryOp op, A (&a)[N], const A (&b)[N], A alpha) {
  constexpr A kC = A(0.7978845608028654);  // sqrt(2/pi)
  switch (op) {
    case BinaryOp::Add: map_each(a, b, [](A x, A y) { return x + y; }); break;
    case BinaryOp::Sub: map_each(a, b, [](A x, A y) { return x - y; }); break;
    case BinaryOp::Mul: map_each(a, b, [](A x, A y) { return x * y; }); break;
    case BinaryOp::Div: map_each(a, b, [](A x, A y) { return x / y; }); break;
    case BinaryOp::Maximum: map_each(a, b, [](A x, A y) { return x > y || isnan(x) ? x : y; }); break;
    case BinaryOp::GeluGrad:
      map_each(a, b, [=](A g, A x) {
        const A inner = kC * (x + A(0.044715) * x * x * x);
        const A t = tanh_acc(inner);
        const A dinner = kC * (A(1) + A(3) * A(0.044715) * x * x);
        return g * (A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * dinner);
      });
      break;
    case BinaryOp::SiluGrad:
      map_each(a, b, [](A g, A x) {
        const A s = sigmoid(x);
        return g * s * (A(1) + x * (A(1) - s));
      });
      break;
    case BinaryOp::SoftplusGrad: map_each(a, b, [](A g, A x) { return x > A(20) ? g : g * sigmoid(x); }); break;
    case BinaryOp::SigmoidGrad: map_each(a, b, [](A g, A y) { return g * y * (A(1) - y); }); break;
    case BinaryOp::PowGrad: map_each(a, b, [=](A g, A x) { return g * alpha * pow_acc(x, alpha - A(1)); }); break;
  }
}

// --- register batches of kUnroll 16-byte vectors -----------------------------------------

template <typename T>
using Vec16 = Vec<T, kVec16<T>>;
template <typename T>
constexpr int kBatch = kUnroll * kVec16<T>;  // elements per thread per grid-stride step

template <typename T>
__device__ __forceinline__ void unpack(const Vec16<T> (&in)[kUnroll], acc_t<T> (&v)[kBatch<T>]) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
#pragma unroll
    for (int k = 0; k < kVec16<T>; ++k) v[u * kVec16<T> + k] = to_acc(in[u].v[k]);
}

// Rounds to T; bf16 and f16 convert two values per instruction.
template <typename T>
__device__ __forceinline__ void pack(const acc_t<T> (&v)[kBatch<T>], Vec16<T> (&out)[kUnroll]) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const acc_t<T>* src = v + u * kVec16<T>;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
#pragma unroll
      for (int k = 0; k < kVec16<T>; k += 2)
        reinterpret_cast<__nv_bfloat162*>(out[u].v)[k / 2] = __floats2bfloat162_rn(src[k], src[k + 1]);
    } else if constexpr (std::is_same_v<T, __half>) {
#pragma unroll
      for (int k = 0; k < kVec16<T>; k += 2)
        reinterpret_cast<__half2*>(out[u].v)[k / 2] = __floats2half2_rn(src[k], src[k + 1]);
    } else {
#pragma unroll
      for (int k = 0; k < kVec16<T>; ++k) out[u].v[k] = src[k];
    }
  }
}

// --- kernels ---------------------------------------------------------------------------

// out[i] = op(x[i]); out and x contiguous and 16-byte aligned, n elements.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    unary_contiguous_kernel(T* out, const T* x, int64_t n, UnaryOp op, acc_t<T> alpha, acc_t<T> beta) {
  using A = acc_t<T>;
  const Vec16<T>* xv = reinterpret_cast<const Vec16<T>*>(x);
  Vec16<T>* outv = reinterpret_cast<Vec16<T>*>(out);
  const int64_t vectors = n / kVec16<T>;
  const int64_t thread = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  // Step: vectors i, i + stride, ... (kUnroll of them), so each access is coalesced.
  for (int64_t i = thread; i < vectors; i += kUnroll * stride) {
    Vec16<T> in[kUnroll] = {};
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (i + u * stride < vectors) in[u] = xv[i + u * stride];
    A v[kBatch<T>];
    unpack<T>(in, v);
    unary_map(op, v, alpha, beta);
    pack<T>(v, in);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (i + u * stride < vectors) outv[i + u * stride] = in[u];
  }
  const int64_t tail = vectors * kVec16<T> + thread;
  if (tail < n) {
    A v[1] = {to_acc(x[tail])};
    unary_map(op, v, alpha, beta);
    out[tail] = from_acc<T>(v[0]);
  }
}

// out = op(x) over n elements at the calculator's offsets (operands: out, x).
template <typename T>
__global__ void __launch_bounds__(kThreads) unary_strided_kernel(T* out, const T* x, int64_t n,
                                                                  OffsetCalculator<2> calc, UnaryOp op,
                                                                  acc_t<T> alpha, acc_t<T> beta) {
  using A = acc_t<T>;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    int64_t off[2];
    calc.offsets(i, off);
    A v[1] = {to_acc(x[off[1]])};
    unary_map(op, v, alpha, beta);
    out[off[0]] = from_acc<T>(v[0]);
  }
}

// out[i] = op(a[i], b[i]); all contiguous and 16-byte aligned, n elements.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    binary_contiguous_kernel(T* out, const T* a, const T* b, int64_t n, BinaryOp op, acc_t<T> alpha) {
  using A = acc_t<T>;
  const Vec16<T>* av = reinterpret_cast<const Vec16<T>*>(a);
  const Vec16<T>* bv = reinterpret_cast<const Vec16<T>*>(b);
  Vec16<T>* outv = reinterpret_cast<Vec16<T>*>(out);
  const int64_t vectors = n / kVec16<T>;
  const int64_t thread = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = thread; i < vectors; i += kUnroll * stride) {
    Vec16<T> in_a[kUnroll] = {}, in_b[kUnroll] = {};
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (i + u * stride < vectors) {
        in_a[u] = av[i + u * stride];
        in_b[u] = bv[i + u * stride];
      }
    A va[kBatch<T>], vb[kBatch<T>];
    unpack<T>(in_a, va);
    unpack<T>(in_b, vb);
    binary_map(op, va, vb, alpha);
    pack<T>(va, in_a);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (i + u * stride < vectors) outv[i + u * stride] = in_a[u];
  }
  const int64_t tail = vectors * kVec16<T> + thread;
  if (tail < n) {
    A va[1] = {to_acc(a[tail])};
    const A vb[1] = {to_acc(b[tail])};
    binary_map(op, va, vb, alpha);
    out[tail] = from_acc<T>(va[0]);
  }
}

// out = op(a, b) over n elements at the calculator's offsets (operands: out, a, b).
template <typename T>
__global__ void __launch_bounds__(kThreads) binary_strided_kernel(T* out, const T* a, const T* b, int64_t n,
                                                                   OffsetCalculator<3> calc, BinaryOp op,
                                                                   acc_t<T> alpha) {
  using A = acc_t<T>;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    int64_t off[3];
    calc.offsets(i, off);
    A va[1] = {to_acc(a[off[1]])};
    const A vb[1] = {to_acc(b[off[2]])};
    binary_map(op, va, vb, alpha);
    out[off[0]] = from_acc<T>(va[0]);
  }
}

// dst[i] = v converted to `dtype` like the CPU reference: same dtype copies the value,
// integer -> integer converts directly, everything else goes through double
// (float -> integer truncates toward zero).
template <typename S>
__device__ __forceinline__ void store_converted(DType dtype, void* dst, int64_t i, S v) {
  if (dtype == DeviceDTypeOf<S>::value) {
    static_cast<S*>(dst)[i] = v;
    return;
  }
  if constexpr (std::is_integral_v<S>) {
    switch (dtype) {
      case DType::I32: static_cast<int32_t*>(dst)[i] = int32_t(v); break;
      case DType::I64: static_cast<int64_t*>(dst)[i] = int64_t(v); break;
      default: store_as(dtype, dst, i, double(v)); break;
    }
  } else {
    const auto a = to_acc(v);
    switch (dtype) {
      case DType::I32: static_cast<int32_t*>(dst)[i] = int32_t(a); break;
      case DType::I64: static_cast<int64_t*>(dst)[i] = int64_t(a); break;
      default: store_as(dtype, dst, i, a); break;
    }
  }
}

// dst = src converted to dst_dtype over n elements (operands: dst, src).
template <typename S>
__global__ void __launch_bounds__(kThreads)
    copy_kernel(void* dst, DType dst_dtype, const S* src, int64_t n, OffsetCalculator<2> calc) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    int64_t off[2];
    calc.offsets(i, off);
    store_converted(dst_dtype, dst, off[0], src[off[1]]);
  }
}

// dst = bits over n elements (operand: dst); U is the unsigned type of the element size.
template <typename U>
__global__ void __launch_bounds__(kThreads) fill_kernel(U* dst, U bits, int64_t n, OffsetCalculator<1> calc) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    int64_t off[1];
    calc.offsets(i, off);
    dst[off[0]] = bits;
  }
}

enum class Distribution : uint8_t { Uniform, Normal };

// out[i] = sample(offset + i) * scale + shift, computed in float with correctly rounded
// operations exactly like the CPU reference, then rounded to T; out contiguous.
template <typename T>
__global__ void __launch_bounds__(kThreads) random_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset,
                                                           Distribution dist, float scale, float shift) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const uint64_t index = offset + uint64_t(i);
    const float sample = dist == Distribution::Uniform ? philox::uniform(philox::word(seed, index))
                                                       : philox::normal(seed, index);
    const float v = philox::add_rn(philox::mul_rn(sample, scale), shift);
    out[i] = from_acc<T>(acc_t<T>(v));
  }
}

// --- launchers -------------------------------------------------------------------------

template <typename T>
void launch_unary_contiguous(T* out, const T* x, int64_t n, UnaryOp op, acc_t<T> alpha, acc_t<T> beta, int device,
                             cudaStream_t stream) {
  const int64_t blocks_needed = ceil_div(n / kVec16<T>, int64_t(kThreads) * kUnroll);
  const unsigned grid = grid_stride_blocks(unary_contiguous_kernel<T>, device, kThreads, blocks_needed);
  unary_contiguous_kernel<T><<<grid, kThreads, 0, stream>>>(out, x, n, op, alpha, beta);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_unary_strided(T* out, const T* x, int64_t n, const OffsetCalculator<2>& calc, UnaryOp op,
                          acc_t<T> alpha, acc_t<T> beta, int device, cudaStream_t stream) {
  const unsigned grid = grid_stride_blocks(unary_strided_kernel<T>, device, kThreads, ceil_div(n, kThreads));
  unary_strided_kernel<T><<<grid, kThreads, 0, stream>>>(out, x, n, calc, op, alpha, beta);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_binary_contiguous(T* out, const T* a, const T* b, int64_t n, BinaryOp op, acc_t<T> alpha, int device,
                              cudaStream_t stream) {
  const int64_t blocks_needed = ceil_div(n / kVec16<T>, int64_t(kThreads) * kUnroll);
  const unsigned grid = grid_stride_blocks(binary_contiguous_kernel<T>, device, kThreads, blocks_needed);
  binary_contiguous_kernel<T><<<grid, kThreads, 0, stream>>>(out, a, b, n, op, alpha);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_binary_strided(T* out, const T* a, const T* b, int64_t n, const OffsetCalculator<3>& calc, BinaryOp op,
                           acc_t<T> alpha, int device, cudaStream_t stream) {
  const unsigned grid = grid_stride_blocks(binary_strided_kernel<T>, device, kThreads, ceil_div(n, kThreads));
  binary_strided_kernel<T><<<grid, kThreads, 0, stream>>>(out, a, b, n, calc, op, alpha);
  CUDA_CHECK_LAUNCH();
}

template <typename S>
void launch_copy(void* dst, DType dst_dtype, const S* src, int64_t n, const OffsetCalculator<2>& calc, int device,
                 cudaStream_t stream) {
  const unsigned grid = grid_stride_blocks(copy_kernel<S>, device, kThreads, ceil_div(n, kThreads));
  copy_kernel<S><<<grid, kThreads, 0, stream>>>(dst, dst_dtype, src, n, calc);
  CUDA_CHECK_LAUNCH();
}

template <typename U>
void launch_fill(U* dst, U bits, int64_t n, const OffsetCalculator<1>& calc, int device, cudaStream_t stream) {
  const unsigned grid = grid_stride_blocks(fill_kernel<U>, device, kThreads, ceil_div(n, kThreads));
  fill_kernel<U><<<grid, kThreads, 0, stream>>>(dst, bits, n, calc);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_random(T* out, int64_t n, uint64_t seed, uint64_t offset, Distribution dist, float scale, float shift,
                   int device, cudaStream_t stream) {
  const unsigned grid = grid_stride_blocks(random_kernel<T>, device, kThreads, ceil_div(n, kThreads));
  random_kernel<T><<<grid, kThreads, 0, stream>>>(out, n, seed, offset, dist, scale, shift);
  CUDA_CHECK_LAUNCH();
}

// --- adapter helpers -------------------------------------------------------------------

bool vectorizable(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (!t->is_contiguous() || !is_aligned(t->data_ptr(), 16)) return false;
  return true;
}

void random_fill(Tensor& dst, uint64_t seed, uint64_t offset, Distribution dist, float scale, float shift) {
  REHYAT_CHECK(dst.is_contiguous(), "random fill: needs a contiguous tensor, got {}", dst.str());
  const int64_t n = dst.numel();
  if (n == 0) return;
  const int device = dst.device().index;
  cudaStream_t stream = rehyat::cuda::context(device).stream;
  REHYAT_CUDA_DISPATCH_FLOAT(dst.dtype(), "random fill", {
    launch_random(ptr<scalar_t>(dst), n, seed, offset, dist, scale, shift, device, stream);
  });
}

}  // namespace

// --- adapters --------------------------------------------------------------------------

void unary(UnaryOp op, Tensor& out, const Tensor& x, double alpha, double beta) {
  REHYAT_CHECK(out.shape() == x.shape(), "{}: shape mismatch ({} and {})", unary_op_name(op), out.str(), x.str());
  const int64_t n = out.numel();
  if (n == 0) return;
  const int device = out.device().index;
  cudaStream_t stream = rehyat::cuda::context(device).stream;
  REHYAT_CUDA_DISPATCH_FLOAT(out.dtype(), unary_op_name(op), {
    using A = acc_t<scalar_t>;
    scalar_t* o = ptr<scalar_t>(out);
    const scalar_t* xp = ptr<const scalar_t>(x);
    if (vectorizable({&out, &x})) {
      launch_unary_contiguous(o, xp, n, op, A(alpha), A(beta), device, stream);
    } else {
      const auto calc = make_offset_calculator<2>(out.shape(), {&out.strides(), &x.strides()});
      launch_unary_strided(o, xp, n, calc, op, A(alpha), A(beta), device, stream);
    }
  });
}

void binary(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b, double alpha) {
  REHYAT_CHECK(out.shape() == a.shape() && out.shape() == b.shape(), "{}: shape mismatch ({}, {}, {})",
               binary_op_name(op), out.str(), a.str(), b.str());
  const int64_t n = out.numel();
  if (n == 0) return;
  const int device = out.device().index;
  cudaStream_t stream = rehyat::cuda::context(device).stream;
  REHYAT_CUDA_DISPATCH_FLOAT(out.dtype(), binary_op_name(op), {
    using A = acc_t<scalar_t>;
    scalar_t* o = ptr<scalar_t>(out);
    const scalar_t* ap = ptr<const scalar_t>(a);
    const scalar_t* bp = ptr<const scalar_t>(b);
    if (vectorizable({&out, &a, &b})) {
      launch_binary_contiguous(o, ap, bp, n, op, A(alpha), device, stream);
    } else {
      const auto calc =
          make_offset_calculator<3>(out.shape(), {&out.strides(), &a.strides(), &b.strides()});
      launch_binary_strided(o, ap, bp, n, calc, op, A(alpha), device, stream);
    }
  });
}

void copy(Tensor& dst, const Tensor& src) {
  REHYAT_CHECK(dst.shape() == src.shape(), "copy: shape mismatch ({} and {})", dst.str(), src.str());
  const int64_t n = dst.numel();
  if (n == 0) return;
  const int device = dst.device().index;
  cudaStream_t stream = rehyat::cuda::context(device).stream;
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), dst.nbytes(), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  const auto calc = make_offset_calculator<2>(dst.shape(), {&dst.strides(), &src.strides()});
  void* d = dst.data_ptr();
  switch (src.dtype()) {
    case DType::F32: launch_copy(d, dst.dtype(), ptr<const float>(src), n, calc, device, stream); break;
    case DType::F64: launch_copy(d, dst.dtype(), ptr<const double>(src), n, calc, device, stream); break;
    case DType::BF16: launch_copy(d, dst.dtype(), ptr<const __nv_bfloat16>(src), n, calc, device, stream); break;
    case DType::F16: launch_copy(d, dst.dtype(), ptr<const __half>(src), n, calc, device, stream); break;
    case DType::I32: launch_copy(d, dst.dtype(), ptr<const int32_t>(src), n, calc, device, stream); break;
    case DType::I64: launch_copy(d, dst.dtype(), ptr<const int64_t>(src), n, calc, device, stream); break;
  }
}

void fill(Tensor& dst, double value) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  const int device = dst.device().index;
  cudaStream_t stream = rehyat::cuda::context(device).stream;
  // The element's bit pattern, converted on the host exactly like the CPU reference.
  uint64_t bits = 0;
  REHYAT_DISPATCH_ALL(dst.dtype(), "fill", {
    const scalar_t v = from_double<scalar_t>(value);
    std::memcpy(&bits, &v, sizeof v);
  });
  if (bits == 0 && dst.is_contiguous()) {
    CUDA_CHECK(cudaMemsetAsync(dst.data_ptr(), 0, dst.nbytes(), stream));
    return;
  }
  const auto calc = make_offset_calculator<1>(dst.shape(), {&dst.strides()});
  switch (dtype_size(dst.dtype())) {
    case 2: launch_fill(static_cast<uint16_t*>(dst.data_ptr()), uint16_t(bits), n, calc, device, stream); break;
    case 4: launch_fill(static_cast<uint32_t*>(dst.data_ptr()), uint32_t(bits), n, calc, device, stream); break;
    case 8: launch_fill(static_cast<uint64_t*>(dst.data_ptr()), bits, n, calc, device, stream); break;
    default: REHYAT_FAIL("fill: unsupported element size of {}", dst.str());
  }
}

void random_uniform(Tensor& dst, uint64_t seed, uint64_t offset, double low, double high) {
  random_fill(dst, seed, offset, Distribution::Uniform, float(high - low), float(low));
}

void random_normal(Tensor& dst, uint64_t seed, uint64_t offset, double mean, double stddev) {
  random_fill(dst, seed, offset, Distribution::Normal, float(stddev), float(mean));
}

}  // namespace rehyat::kernels::cuda
