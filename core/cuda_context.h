// Per-device CUDA state: one compute stream, cuBLAS and cuBLASLt handles and the
// cuBLASLt workspace. Created lazily on first use of a device, kept for the process.
// All rehyat kernels of a device run on its compute stream.
#pragma once

#ifdef REHYAT_CUDA
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/device.h"

namespace rehyat::cuda {

struct DeviceContext {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  cublasLtHandle_t cublaslt = nullptr;
  void* lt_workspace = nullptr;  // [lt_workspace_bytes]
  size_t lt_workspace_bytes = 0;
  cudaDeviceProp props{};
};

// Makes `device` current and returns its context.
DeviceContext& context(int device);
inline DeviceContext& context(Device d) { return context(d.index); }
inline cudaStream_t stream(Device d) { return context(d).stream; }

// Ensures the calling thread's current device is `device`.
void set_device(int device);
// Waits for every kernel on the device's stream.
void synchronize(Device d);

}  // namespace rehyat::cuda
#endif
