// NVTX ranges for profilers (Nsight Systems / Compute). Compiled out without CUDA.
// Usage: { REHYAT_NVTX_RANGE("layernorm_fwd"); ... }
#pragma once

#ifdef REHYAT_CUDA
#include <nvtx3/nvToolsExt.h>
namespace rehyat {
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};
}  // namespace rehyat
#define REHYAT_NVTX_CONCAT2(a, b) a##b
#define REHYAT_NVTX_CONCAT(a, b) REHYAT_NVTX_CONCAT2(a, b)
#define REHYAT_NVTX_RANGE(name) ::rehyat::NvtxRange REHYAT_NVTX_CONCAT(rehyat_nvtx_, __LINE__)(name)
#else
#define REHYAT_NVTX_RANGE(name) ((void)0)
#endif
