// Element types. The dtype is a runtime attribute of a tensor; kernels are templated on
// the storage type and dispatched with REHYAT_DISPATCH_*. Host code stores bf16/f16 as
// raw 16-bit patterns (bf16_t / f16_t) and converts with round-to-nearest-even; CUDA
// code uses __nv_bfloat16 / __half with the same bit layout.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "core/check.h"

namespace rehyat {

enum class DType : uint8_t { F32, F64, BF16, F16, I32, I64 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "f32", "bf16", ...
// Parses our names and the safetensors names ("F32", "BF16", ...); throws naming `what`.
DType parse_dtype(std::string_view name, std::string_view what = "dtype");
inline bool is_floating(DType d) { return d == DType::F32 || d == DType::F64 || d == DType::BF16 || d == DType::F16; }

struct bf16_t {
  uint16_t bits;
};
struct f16_t {
  uint16_t bits;
};

inline float bf16_to_float(bf16_t v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline bf16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16_t{uint16_t(u >> 16)};
}
float f16_to_float(f16_t v);
f16_t float_to_f16(float f);

// Host-side conversions used by the CPU reference kernels.
template <typename T>
inline double to_double(T v) { return double(v); }
template <>
inline double to_double(bf16_t v) { return bf16_to_float(v); }
template <>
inline double to_double(f16_t v) { return f16_to_float(v); }

template <typename T>
inline T from_double(double v) { return T(v); }
template <>
inline bf16_t from_double(double v) { return float_to_bf16(float(v)); }
template <>
inline f16_t from_double(double v) { return float_to_f16(float(v)); }

template <typename T>
struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::F32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::F64; };
template <> struct DTypeOf<bf16_t> { static constexpr DType value = DType::BF16; };
template <> struct DTypeOf<f16_t> { static constexpr DType value = DType::F16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::I32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::I64; };

}  // namespace rehyat

// Host dispatch: binds `scalar_t` to the host storage type of `dtype` and runs the body.
#define REHYAT_DISPATCH_CASE(ENUM, TYPE, ...) \
  case ::rehyat::DType::ENUM: {               \
    using scalar_t = TYPE;                    \
    __VA_ARGS__;                              \
    break;                                    \
  }

#define REHYAT_DISPATCH_FLOAT(dtype, what, ...)                                              \
  switch (dtype) {                                                                           \
    REHYAT_DISPATCH_CASE(F32, float, __VA_ARGS__)                                            \
    REHYAT_DISPATCH_CASE(F64, double, __VA_ARGS__)                                           \
    REHYAT_DISPATCH_CASE(BF16, ::rehyat::bf16_t, __VA_ARGS__)                                \
    REHYAT_DISPATCH_CASE(F16, ::rehyat::f16_t, __VA_ARGS__)                                  \
    default: REHYAT_FAIL("{}: dtype {} is not a floating type", what, ::rehyat::dtype_name(dtype)); \
  }

#define REHYAT_DISPATCH_ALL(dtype, what, ...)                                                \
  switch (dtype) {                                                                           \
    REHYAT_DISPATCH_CASE(F32, float, __VA_ARGS__)                                            \
    REHYAT_DISPATCH_CASE(F64, double, __VA_ARGS__)                                           \
    REHYAT_DISPATCH_CASE(BF16, ::rehyat::bf16_t, __VA_ARGS__)                                \
    REHYAT_DISPATCH_CASE(F16, ::rehyat::f16_t, __VA_ARGS__)                                  \
    REHYAT_DISPATCH_CASE(I32, int32_t, __VA_ARGS__)                                          \
    REHYAT_DISPATCH_CASE(I64, int64_t, __VA_ARGS__)                                          \
    default: REHYAT_FAIL("{}: unknown dtype", what);                                         \
  }

#define REHYAT_DISPATCH_INDEX(dtype, what, ...)                                              \
  switch (dtype) {                                                                           \
    REHYAT_DISPATCH_CASE(I32, int32_t, __VA_ARGS__)                                          \
    REHYAT_DISPATCH_CASE(I64, int64_t, __VA_ARGS__)                                          \
    default: REHYAT_FAIL("{}: index dtype must be i32 or i64, got {}", what, ::rehyat::dtype_name(dtype)); \
  }
