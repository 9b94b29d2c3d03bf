// CUDA adapters of the kernels in core/ops/*.h, one per public function, same contract.
// The device-agnostic entry points (core/ops/*.cpp) validate shapes, dtypes and devices
// and then call these for CUDA tensors; each adapter turns tensors into raw pointers,
// sizes and strides and calls a launcher on the device's compute stream. Only compiled
// with REHYAT_CUDA.
#pragma once

#ifdef REHYAT_CUDA
#include "core/ops/elementwise.h"
#include "core/tensor.h"

namespace rehyat::kernels::cuda {

// elementwise.cu
void unary(UnaryOp op, Tensor& out, const Tensor& x, double alpha, double beta);
void binary(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b, double alpha);
void copy(Tensor& dst, const Tensor& src);
void fill(Tensor& dst, double value);
void random_uniform(Tensor& dst, uint64_t seed, uint64_t offset, double low, double high);
void random_normal(Tensor& dst, uint64_t seed, uint64_t offset, double mean, double stddev);

// reduce.cu
void sum_axis(Tensor& out, const Tensor& x, int64_t outer, int64_t n, int64_t inner, double scale);
void max_axis(Tensor& out, Tensor& argmax, const Tensor& x, int64_t outer, int64_t n, int64_t inner);

// index.cu
void gather(Tensor& out, const Tensor& x, int dim, const Tensor& index);
void scatter_add(Tensor& dst, int dim, const Tensor& index, const Tensor& src);

// norm.cu
void layernorm_forward(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor* weight,
                       const Tensor* bias, double eps);
void layernorm_backward(Tensor& dx, Tensor* dweight, Tensor* dbias, const Tensor& dy, const Tensor& x,
                        const Tensor& mean, const Tensor& rstd, const Tensor* weight);
void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor* weight, double eps);
void rmsnorm_backward(Tensor& dx, Tensor* dweight, const Tensor& dy, const Tensor& x, const Tensor& rstd,
                      const Tensor* weight);

// softmax.cu
void softmax_forward(Tensor& y, const Tensor& x);
void softmax_backward(Tensor& dx, const Tensor& dy, const Tensor& y);

// matmul.cu
void matmul(Tensor& c, const Tensor& a, const Tensor& b, double alpha, double beta);

}  // namespace rehyat::kernels::cuda
#endif
