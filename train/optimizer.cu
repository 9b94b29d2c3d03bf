// CUDA AdamW update (contract in optimizer.h): one fused grid-stride pass that reads
// param, m, v, grad and writes param, m, v (all assigned, nothing accumulated). Every
// operation is an explicitly rounded intrinsic in the order of the CPU loop in
// optimizer.cpp, so nvcc cannot contract them into FMAs and both devices agree bit for
// bit.
#include "core/ops/cuda_common.cuh"
#include "train/optimizer.h"

namespace rehyat::train::cuda {
namespace {

constexpr int kThreads = 256;

// param, m, v, grad: [n] f32 contiguous.
__global__ void adamw_kernel(float* __restrict__ param, float* __restrict__ m, float* __restrict__ v,
                             const float* __restrict__ grad, int64_t n, AdamWCoefficients c) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = grad[i];
    const float p = __fmul_rn(param[i], c.decay);
    const float mi = __fadd_rn(__fmul_rn(c.beta1, m[i]), __fmul_rn(c.one_minus_beta1, g));
    const float vi = __fadd_rn(__fmul_rn(c.beta2, v[i]), __fmul_rn(c.one_minus_beta2, __fmul_rn(g, g)));
    const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), c.inv_sqrt_bias2), c.eps);
    m[i] = mi;
    v[i] = vi;
    param[i] = __fsub_rn(p, __fmul_rn(c.step_size, __fdiv_rn(mi, denom)));
  }
}

void launch_adamw(float* param, float* m, float* v, const float* grad, int64_t n, const AdamWCoefficients& c,
                  int device, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned blocks =
      kernels::cuda::grid_stride_blocks(adamw_kernel, device, kThreads, kernels::cuda::ceil_div(n, kThreads));
  adamw_kernel<<<blocks, kThreads, 0, stream>>>(param, m, v, grad, n, c);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void adamw_update(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, const AdamWCoefficients& c) {
  using kernels::cuda::ptr;
  const Device device = param.device();
  rehyat::cuda::set_device(device.index);
  launch_adamw(ptr<float>(param), ptr<float>(m), ptr<float>(v), ptr<const float>(grad), param.numel(), c,
               device.index, rehyat::cuda::stream(device));
}

}  // namespace rehyat::train::cuda
