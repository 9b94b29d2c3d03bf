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

// Flash-only variants for the hybrid attention (attention/hybrid_attention.cu). Each
// returns false, doing nothing, when the flash kernels do not take the problem.
// Forward: as softmax_attention_forward (o contiguous) and argmax [B, H, Nq] i32 = each
// row's arg-max key over its key range (the first on ties), tracked in the online softmax.
bool softmax_attention_forward_argmax(Tensor& o, Tensor& lse, Tensor& row_max, Tensor& argmax, const Tensor& q,
                                      const Tensor& k, const Tensor& v, double scale, const KeyRange& keys);
// Backward: as softmax_attention_backward, plus the gradient of a per-row constant
// c_i = scale q_i . k_{argmax_i} with upstream dc [B, H, Nq] f32 (dq_i += scale dc_i
// k_argmax, dk_argmax += scale dc_i q_i), folded into the dS tile (no extra pass).
bool softmax_attention_backward_row_max(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& d_o, const Tensor& q,
                                        const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                                        const Tensor& argmax, const Tensor& dc, double scale, const KeyRange& keys);

}  // namespace rehyat::attention::kernels::cuda
#endif
