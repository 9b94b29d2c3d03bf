// Memory for tensors. CUDA memory comes from a caching allocator (one pool per device,
// blocks reused by size on the device's single compute stream, so no events are needed);
// host memory is 64-byte aligned. Both keep current/peak byte counters that benchmarks
// and tests read.
//
// Debug guards (tests): every block gets 256 guard bytes on each side filled with a
// pattern, and the body is poisoned with 0xFF bytes (NaN for floating types) so that
// unwritten outputs show up. check_guards() verifies every live block and every block
// freed since the last check and reports which were overrun.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/device.h"

namespace rehyat {

struct MemoryStats {
  size_t current_bytes = 0;   // bytes handed out to tensors now
  size_t peak_bytes = 0;      // max of current_bytes since the last reset_peak
  size_t reserved_bytes = 0;  // bytes held from the driver (CUDA: in use + cached)
  size_t allocations = 0;     // number of allocate() calls
};

void* device_allocate(Device device, size_t bytes);
void device_free(Device device, void* ptr);

MemoryStats memory_stats(Device device);
void reset_peak_memory(Device device);
// Returns cached CUDA blocks to the driver.
void empty_cache(Device device);

void set_debug_guards(bool enabled);
bool debug_guards_enabled();
// Number of guard violations found since the last call (0 = clean).
size_t check_guards();

}  // namespace rehyat
