#include "core/cuda_context.h"

#include <memory>
#include <mutex>
#include <vector>

#include "core/check.h"

namespace rehyat::cuda {

namespace {
std::mutex g_mutex;
std::vector<std::unique_ptr<DeviceContext>> g_contexts;
constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;  // cuBLASLt recommends >= 32 MiB on Hopper
}  // namespace

void set_device(int device) {
  int current = -1;
  CUDA_CHECK(cudaGetDevice(&current));
  if (current != device) CUDA_CHECK(cudaSetDevice(device));
}

DeviceContext& context(int device) {
  REHYAT_CHECK(device >= 0 && device < cuda_device_count(), "cuda:{} does not exist ({} CUDA devices found)",
               device, cuda_device_count());
  set_device(device);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_contexts.size() <= size_t(device)) g_contexts.resize(device + 1);
  if (!g_contexts[device]) {
    auto ctx = std::make_unique<DeviceContext>();
    ctx->device = device;
    CUDA_CHECK(cudaGetDeviceProperties(&ctx->props, device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&ctx->cublas));
    CUBLAS_CHECK(cublasSetStream(ctx->cublas, ctx->stream));
    CUBLAS_CHECK(cublasLtCreate(&ctx->cublaslt));
    ctx->lt_workspace_bytes = kLtWorkspaceBytes;
    CUDA_CHECK(cudaMalloc(&ctx->lt_workspace, ctx->lt_workspace_bytes));
    CUBLAS_CHECK(cublasSetWorkspace(ctx->cublas, ctx->lt_workspace, ctx->lt_workspace_bytes));
    g_contexts[device] = std::move(ctx);
  }
  return *g_contexts[device];
}

void synchronize(Device d) { CUDA_CHECK(cudaStreamSynchronize(context(d).stream)); }

}  // namespace rehyat::cuda
