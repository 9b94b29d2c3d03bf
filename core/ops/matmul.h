// Matrix products through cuBLASLt (CUDA), CBLAS (CPU f32/f64 when built with OpenBLAS)
// or a plain loop (CPU otherwise; the oracle).
//   c[b] = alpha * a[b] @ b[b] + beta * c[b]
// a: [..., m, k], b: [..., k, n], c: [..., m, n] contiguous. The batch dims of a and b
// either match c's or are absent (broadcast). The two inner dims of a and b may be
// row-major or column-major (a transposed view costs no copy: it becomes a cuBLAS
// transpose flag); anything else is made contiguous first. a and b share a dtype, which is
// c's, or bf16 / f16 with an f32 c (the fp32 result of a low-precision product: weight
// gradients of bf16 layers; the CPU widens the operands exactly). bf16/f16 inputs accumulate
// in fp32; f32 uses fp32 (no TF32); f64 uses cublasDgemmStridedBatched.
#pragma once

#include <optional>

#include "core/tensor.h"

namespace rehyat::kernels {

// Elements between consecutive matrices of t's batch dims read as one flat index (size-1
// dims ignored, whatever their strides); 0 without batch dims or with only size-1 ones;
// nullopt when the batch dims do not collapse to one stride.
std::optional<int64_t> collapsed_batch_stride(const Tensor& t);

void matmul(Tensor& c, const Tensor& a, const Tensor& b, double alpha = 1.0, double beta = 0.0);

// Whether this build has the CBLAS path; set_cpu_blas(false) makes f32/f64 CPU products
// take the plain loop (tests compare the two). Returns the previous setting.
bool cpu_blas_available();
bool set_cpu_blas(bool enabled);

}  // namespace rehyat::kernels
