// Devices: the CPU and CUDA GPUs by index. cuda_device_count() never throws: it is 0 in
// a CPU-only build and on machines without a GPU, which is how GPU tests decide to skip.
#pragma once

#include <cstdint>
#include <string>

namespace rehyat {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && (is_cpu() || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;  // "cpu" or "cuda:N"
};

// Parses "cpu", "cuda", "cuda:N".
Device parse_device(const std::string& s);

bool built_with_cuda();
int cuda_device_count();
inline bool cuda_available() { return cuda_device_count() > 0; }

// Waits until the work queued on the device (its CUDA context's stream) is done, so a
// wall-clock time around it measures that work; nothing to wait for on the CPU.
void synchronize(Device device);

// The device as reports name it: "cpu", or the CUDA device's product name
// ("NVIDIA H100 80GB HBM3").
std::string device_name(Device device);

}  // namespace rehyat
