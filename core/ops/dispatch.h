// Routing from the device-agnostic kernel entry points to the CUDA adapters.
#pragma once

#include "core/check.h"
#include "core/ops/cuda_ops.h"
#include "core/tensor.h"

#ifdef REHYAT_CUDA
// Runs the CUDA adapter and returns when `t` lives on a GPU.
#define REHYAT_ROUTE_CUDA(t, call) \
  if ((t).device().is_cuda()) {    \
    call;                          \
    return;                        \
  }
#else
#define REHYAT_ROUTE_CUDA(t, call) \
  REHYAT_CHECK(!(t).device().is_cuda(), "{} is on {} but rehyat was built without CUDA", (t).str(), (t).device().str())
#endif

namespace rehyat::kernels {

// Throws unless every tensor is defined and on `ref`'s device; `op` names the caller.
void check_same_device(const char* op, const Tensor& ref, std::initializer_list<const Tensor*> others);
// Throws unless every tensor has `ref`'s dtype.
void check_same_dtype(const char* op, const Tensor& ref, std::initializer_list<const Tensor*> others);
void check_same_shape(const char* op, const Tensor& ref, std::initializer_list<const Tensor*> others);

}  // namespace rehyat::kernels
