// Indexing along one axis, torch semantics.
//   gather:      out[i0..id..] = x[i0.. index[i0..id..] ..]    (index has out's shape)
//   scatter_add: dst[i0.. index[i0..id..] ..] += src[i0..id..] (index has src's shape)
// index may be strided (an expanded 1-D index gives index_select); x, src, out, dst are
// contiguous. Indices are checked to lie in [0, size) on the CPU; the CUDA kernel traps
// on an out-of-range index. scatter_add accumulates (+=) with atomics on CUDA.
#pragma once

#include "core/tensor.h"

namespace rehyat::kernels {

void gather(Tensor& out, const Tensor& x, int dim, const Tensor& index);
void scatter_add(Tensor& dst, int dim, const Tensor& index, const Tensor& src);

}  // namespace rehyat::kernels
