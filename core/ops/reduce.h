// Reductions over one axis. x is contiguous and read as [outer, n, inner] where n is the
// reduced axis; out is contiguous [outer, inner] (any view of that element count).
// Sum multiplies the result by `scale` (mean = sum with scale 1/n). Max also writes the
// arg-max (first maximal index along the axis, i64) that its gradient needs.
// Accumulation is fp32 (fp64 for f64). Outputs are assigned.
#pragma once

#include "core/tensor.h"

namespace rehyat::kernels {

void sum_axis(Tensor& out, const Tensor& x, int64_t outer, int64_t n, int64_t inner, double scale = 1.0);
void max_axis(Tensor& out, Tensor& argmax, const Tensor& x, int64_t outer, int64_t n, int64_t inner);

}  // namespace rehyat::kernels
