#include "core/device.h"

#include <fmt/format.h>

#include "core/check.h"

#ifdef REHYAT_CUDA
#include <cuda_runtime.h>

#include "core/cuda_context.h"
#endif

namespace rehyat {

std::string Device::str() const { return is_cpu() ? std::string("cpu") : fmt::format("cuda:{}", index); }

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    try {
      size_t pos = 0;
      int i = std::stoi(s.substr(5), &pos);
      if (pos == s.size() - 5 && i >= 0) return Device::cuda(i);
    } catch (...) {
    }
  }
  REHYAT_FAIL("unknown device '{}' (expected cpu, cuda or cuda:N)", s);
}

bool built_with_cuda() {
#ifdef REHYAT_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef REHYAT_CUDA
  static int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return 0;
    }
    return n;
  }();
  return count;
#else
  return 0;
#endif
}

void synchronize(Device device) {
#ifdef REHYAT_CUDA
  if (device.is_cuda()) cuda::synchronize(device);
#else
  REHYAT_CHECK(device.is_cpu(), "{}: rehyat was built without CUDA", device.str());
#endif
}

std::string device_name(Device device) {
  if (device.is_cpu()) return "cpu";
#ifdef REHYAT_CUDA
  return cuda::context(device.index).props.name;
#else
  REHYAT_FAIL("{}: rehyat was built without CUDA", device.str());
#endif
}

}  // namespace rehyat
