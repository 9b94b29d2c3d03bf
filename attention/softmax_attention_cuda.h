// CUDA adapters of the raw softmax-attention kernels (attention/softmax_attention.cu),
// same contract as kernels::softmax_attention_forward / _backward, called by them for
// CUDA tensors after validation. Only compiled with REHYAT_CUDA.
#pragma once

#ifdef REHYAT_CUDA
#include "attention/softmax_attention.h"

namespace rehyat::attention::kernels::cuda {

void softmax_attention_forward(Tensor& o, Tensor& lse, Tensor& row_max, const Tensor& q, const Tensor& k,
                               const Tensor& v, double scale, const KeyRange& keys);
void softmax_attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& d_o, const Tensor& q,
                                const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                                double scale, const KeyRange& keys);

}  // namespace rehyat::attention::kernels::cuda
#endif
