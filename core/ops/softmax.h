// Softmax over the last axis of a contiguous [rows, cols] view, fp32 math.
//   forward:  y = exp(x - max) / sum(exp(x - max))
//   backward: dx = y * (dy - sum(dy * y))   (assigned)
#pragma once

#include "core/tensor.h"

namespace rehyat::kernels {

void softmax_forward(Tensor& y, const Tensor& x);
void softmax_backward(Tensor& dx, const Tensor& dy, const Tensor& y);

}  // namespace rehyat::kernels
