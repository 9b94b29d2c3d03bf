#include "core/allocator.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/check.h"
#include "core/log.h"

#ifdef REHYAT_CUDA
#include "core/cuda_context.h"
#endif

namespace rehyat {

namespace {

constexpr size_t kGuardBytes = 256;
constexpr uint8_t kGuardByte = 0xA5;
constexpr uint8_t kPoisonByte = 0xFF;
constexpr size_t kRound = 512;

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

struct Block {
  void* base = nullptr;  // what the driver / malloc returned
  size_t size = 0;       // rounded size of base's allocation
  size_t user_bytes = 0; // bytes the caller asked for
  bool guarded = false;
};

// One pool per device (index 0 = CPU, 1 + i = cuda:i).
struct Pool {
  std::mutex mutex;
  std::unordered_map<void*, Block> live;        // user pointer -> block
  std::multimap<size_t, void*> cached;          // size -> base (CUDA only)
  MemoryStats stats;
};

std::mutex g_pools_mutex;
std::vector<std::unique_ptr<Pool>> g_pools;
bool g_debug_guards = false;
std::atomic<size_t> g_guard_violations{0};

Pool& pool_for(Device d) {
  size_t idx = d.is_cpu() ? 0 : 1 + size_t(d.index);
  std::lock_guard<std::mutex> lock(g_pools_mutex);
  if (g_pools.size() <= idx) g_pools.resize(idx + 1);
  if (!g_pools[idx]) g_pools[idx] = std::make_unique<Pool>();
  return *g_pools[idx];
}

void* raw_alloc(Device d, size_t bytes) {
  if (d.is_cpu()) {
    void* p = std::aligned_alloc(64, round_up(bytes, 64));
    REHYAT_CHECK(p != nullptr, "host allocation of {} bytes failed", bytes);
    return p;
  }
#ifdef REHYAT_CUDA
  cuda::set_device(d.index);
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return p;
#else
  REHYAT_FAIL("cannot allocate on {}: rehyat was built without CUDA", d.str());
#endif
}

void raw_free(Device d, void* p) {
  if (d.is_cpu()) {
    std::free(p);
    return;
  }
#ifdef REHYAT_CUDA
  cuda::set_device(d.index);
  CUDA_CHECK(cudaFree(p));
#endif
}

void fill_bytes(Device d, void* p, uint8_t value, size_t n) {
  if (n == 0) return;
  if (d.is_cpu()) {
    std::memset(p, value, n);
    return;
  }
#ifdef REHYAT_CUDA
  CUDA_CHECK(cudaMemsetAsync(p, value, n, cuda::stream(d)));
#endif
}

bool guards_intact(Device d, const Block& b) {
  const size_t tail_bytes = b.size - kGuardBytes - b.user_bytes;
  std::vector<uint8_t> head(kGuardBytes), tail(tail_bytes);
  const uint8_t* base = static_cast<const uint8_t*>(b.base);
  if (d.is_cpu()) {
    std::memcpy(head.data(), base, kGuardBytes);
    std::memcpy(tail.data(), base + kGuardBytes + b.user_bytes, tail_bytes);
  } else {
#ifdef REHYAT_CUDA
    cudaStream_t s = cuda::stream(d);
    CUDA_CHECK(cudaMemcpyAsync(head.data(), base, kGuardBytes, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaMemcpyAsync(tail.data(), base + kGuardBytes + b.user_bytes, tail_bytes,
                               cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
#endif
  }
  for (uint8_t v : head) if (v != kGuardByte) return false;
  for (uint8_t v : tail) if (v != kGuardByte) return false;
  return true;
}

}  // namespace

void* device_allocate(Device d, size_t bytes) {
  Pool& pool = pool_for(d);
  const bool guarded = g_debug_guards;
  const size_t user = bytes == 0 ? 1 : bytes;
  const size_t size = guarded ? round_up(user + 2 * kGuardBytes, kRound) : round_up(user, kRound);
  Block b;
  {
    std::lock_guard<std::mutex> lock(pool.mutex);
    if (d.is_cuda()) {
      // Best fit among cached blocks no more than 2x the request.
      auto it = pool.cached.lower_bound(size);
      if (it != pool.cached.end() && it->first <= 2 * size) {
        b.base = it->second;
        b.size = it->first;
        pool.cached.erase(it);
      }
    }
  }
  if (!b.base) {
    b.base = raw_alloc(d, size);
    if (!b.base) {  // out of device memory: return the cache to the driver and retry once
      empty_cache(d);
      b.base = raw_alloc(d, size);
      REHYAT_CHECK(b.base != nullptr, "out of memory on {}: cannot allocate {} bytes ({} in use)", d.str(),
                   size, memory_stats(d).current_bytes);
    }
    b.size = size;
    std::lock_guard<std::mutex> lock(pool.mutex);
    pool.stats.reserved_bytes += size;
  }
  b.user_bytes = user;
  b.guarded = guarded;
  uint8_t* user_ptr = static_cast<uint8_t*>(b.base) + (guarded ? kGuardBytes : 0);
  if (guarded) {
    fill_bytes(d, b.base, kGuardByte, kGuardBytes);
    fill_bytes(d, user_ptr, kPoisonByte, user);
    fill_bytes(d, user_ptr + user, kGuardByte, b.size - kGuardBytes - user);
  }
  std::lock_guard<std::mutex> lock(pool.mutex);
  pool.live[user_ptr] = b;
  pool.stats.current_bytes += user;
  pool.stats.allocations += 1;
  if (pool.stats.current_bytes > pool.stats.peak_bytes) pool.stats.peak_bytes = pool.stats.current_bytes;
  return user_ptr;
}

void device_free(Device d, void* ptr) {
  Pool& pool = pool_for(d);
  Block b;
  {
    std::lock_guard<std::mutex> lock(pool.mutex);
    auto it = pool.live.find(ptr);
    if (it == pool.live.end()) {
      log::error("device_free: {} was not allocated by rehyat on {}", ptr, d.str());
      return;
    }
    b = it->second;
    pool.live.erase(it);
    pool.stats.current_bytes -= b.user_bytes;
  }
  if (b.guarded) {
    if (!guards_intact(d, b)) {
      ++g_guard_violations;
      log::error("guard region of a {}-byte block on {} was overwritten", b.user_bytes, d.str());
    }
  }
  if (d.is_cpu()) {
    raw_free(d, b.base);
    std::lock_guard<std::mutex> lock(pool.mutex);
    pool.stats.reserved_bytes -= b.size;
    return;
  }
  std::lock_guard<std::mutex> lock(pool.mutex);
  pool.cached.emplace(b.size, b.base);
}

MemoryStats memory_stats(Device d) {
  Pool& pool = pool_for(d);
  std::lock_guard<std::mutex> lock(pool.mutex);
  return pool.stats;
}

void reset_peak_memory(Device d) {
  Pool& pool = pool_for(d);
  std::lock_guard<std::mutex> lock(pool.mutex);
  pool.stats.peak_bytes = pool.stats.current_bytes;
}

void empty_cache(Device d) {
  if (d.is_cpu()) return;
  Pool& pool = pool_for(d);
  std::multimap<size_t, void*> cached;
  {
    std::lock_guard<std::mutex> lock(pool.mutex);
    cached.swap(pool.cached);
  }
#ifdef REHYAT_CUDA
  CUDA_CHECK(cudaDeviceSynchronize());
#endif
  for (auto& [size, base] : cached) {
    raw_free(d, base);
    std::lock_guard<std::mutex> lock(pool.mutex);
    pool.stats.reserved_bytes -= size;
  }
}

void set_debug_guards(bool enabled) { g_debug_guards = enabled; }
bool debug_guards_enabled() { return g_debug_guards; }

size_t check_guards() {
  size_t violations = 0;
  std::vector<std::pair<Device, Block>> live;
  {
    std::lock_guard<std::mutex> lock(g_pools_mutex);
    for (size_t i = 0; i < g_pools.size(); ++i) {
      if (!g_pools[i]) continue;
      Device d = i == 0 ? Device::cpu() : Device::cuda(int(i - 1));
      std::lock_guard<std::mutex> plock(g_pools[i]->mutex);
      for (auto& [ptr, b] : g_pools[i]->live)
        if (b.guarded) live.emplace_back(d, b);
    }
  }
  for (auto& [d, b] : live)
    if (!guards_intact(d, b)) ++violations;
  return violations + g_guard_violations.exchange(0);
}

}  // namespace rehyat
