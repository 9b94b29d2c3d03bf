// 16-byte vectors kept packed in registers for the row kernels (norm.cu, softmax.cu):
// four 32-bit words holding 8 bf16 / f16 or 4 f32 elements, unpacked to float on use and
// packed again with one paired conversion per two elements. Packed words keep a held row
// at 4 registers per vector; an array of 8 __nv_bfloat16 tends to take one register per
// element, doubling the register footprint of a row held in registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace rehyat::kernels::cuda {

struct alignas(16) Packed16 {
  uint32_t w[4];
};

// Elements of T per packed vector (T is float, __nv_bfloat16 or __half).
template <typename T>
constexpr int kPackedElems = 16 / int(sizeof(T));

// Element e (a compile-time constant after unrolling) as float.
template <typename T>
__device__ __forceinline__ float unpack(const Packed16& p, int e) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>);
  if constexpr (std::is_same_v<T, float>) {
    return __uint_as_float(p.w[e]);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const uint32_t w = p.w[e / 2];
    return __uint_as_float(e % 2 ? w & 0xffff0000u : w << 16);
  } else {
    const uint32_t w = p.w[e / 2];
    return __half2float(__ushort_as_half(static_cast<unsigned short>(e % 2 ? w >> 16 : w & 0xffffu)));
  }
}

// Packs kPackedElems<T> floats, rounding to nearest even for bf16 / f16.
template <typename T>
__device__ __forceinline__ Packed16 pack(const float (&v)[kPackedElems<T>]) {
  Packed16 p;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if constexpr (std::is_same_v<T, float>) {
      p.w[k] = __float_as_uint(v[k]);
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      const __nv_bfloat162 pair = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
      memcpy(&p.w[k], &pair, sizeof(uint32_t));
    } else {
      const __half2 pair = __floats2half2_rn(v[2 * k], v[2 * k + 1]);
      memcpy(&p.w[k], &pair, sizeof(uint32_t));
    }
  }
  return p;
}

// Loads the 16-byte vectors of a row that one lane of a warp holds in registers
// (vector lane + 32 i); entries past the row's `vecs` vectors are left unset.
template <int kVecsPerLane>
__device__ __forceinline__ void load_row_vectors(Packed16 (&held)[kVecsPerLane], const Packed16* row, int lane,
                                                 int vecs) {
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i)
    if (lane + i * 32 < vecs) held[i] = row[lane + i * 32];
}

}  // namespace rehyat::kernels::cuda
