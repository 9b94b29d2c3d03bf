// Philox4x32-10 counter-based RNG (Salmon et al., SC'11), identical on host and device.
// Value i of a stream (seed, offset) is word (offset+i) % 4 of philox(seed, (offset+i)/4).
// Uniforms use the top 24 bits; normals use Box-Muller built only from correctly rounded
// operations (+, *, fma) and our own log/sin/cos polynomials, so the CPU and CUDA give
// bit-identical results.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define REHYAT_HD __host__ __device__ __forceinline__
#else
#define REHYAT_HD inline
#endif

namespace rehyat::philox {

struct U4 {
  uint32_t v[4];
};

REHYAT_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  return uint32_t(p);
}

// 4 random words for block counter `ctr` under key `seed`.
REHYAT_HD U4 block(uint64_t seed, uint64_t ctr) {
  uint32_t c0 = uint32_t(ctr), c1 = uint32_t(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo(0xD2511F53u, c0, &hi0);
    uint32_t lo1 = mulhilo(0xCD9E8D57u, c2, &hi1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return U4{{c0, c1, c2, c3}};
}

REHYAT_HD uint32_t word(uint64_t seed, uint64_t index) {
  U4 b = block(seed, index >> 2);
  return b.v[index & 3];
}

// Exact float ops that nvcc will not contract into fma (host: plain IEEE ops).
#if defined(__CUDA_ARCH__)
REHYAT_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
REHYAT_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
REHYAT_HD float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
#else
REHYAT_HD float mul_rn(float a, float b) { return a * b; }
REHYAT_HD float add_rn(float a, float b) { return a + b; }
float fma_rn(float a, float b, float c);  // std::fma, defined in philox.cpp
#endif

// Uniform in (0, 1]: (top 24 bits + 1) * 2^-24, never 0 (safe for log).
REHYAT_HD float uniform_open0(uint32_t w) { return float((w >> 8) + 1u) * (1.0f / 16777216.0f); }
// Uniform in [0, 1).
REHYAT_HD float uniform(uint32_t w) { return float(w >> 8) * (1.0f / 16777216.0f); }

// ln(x) for x in (0, 1], max error a few ulp; only exact operations.
REHYAT_HD float log_exact(float x) {
  // x = m * 2^e with m in [sqrt(1/2), sqrt(2))
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(x);
#else
  __builtin_memcpy(&u, &x, 4);
#endif
  int e = int((u >> 23) & 0xff) - 127;
  uint32_t mu = (u & 0x007fffffu) | 0x3f800000u;  // m in [1, 2)
  float m;
#if defined(__CUDA_ARCH__)
  m = __uint_as_float(mu);
#else
  __builtin_memcpy(&m, &mu, 4);
#endif
  if (m > 1.41421356f) {
    m = mul_rn(m, 0.5f);
    e += 1;
  }
  // log(m) = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.1716
  float s = (m - 1.0f) / (m + 1.0f);
  float s2 = mul_rn(s, s);
  float p = 1.0f / 13.0f;
  p = fma_rn(p, s2, 1.0f / 11.0f);
  p = fma_rn(p, s2, 1.0f / 9.0f);
  p = fma_rn(p, s2, 1.0f / 7.0f);
  p = fma_rn(p, s2, 1.0f / 5.0f);
  p = fma_rn(p, s2, 1.0f / 3.0f);
  p = fma_rn(p, s2, 1.0f);
  float logm = mul_rn(mul_rn(2.0f, s), p);
  return fma_rn(float(e), 0.693147180559945f, logm);
}

// sin and cos of 2*pi*t for t in [0, 1); quadrant reduction on t is exact.
REHYAT_HD void sincos_2pi(float t, float* s_out, float* c_out) {
  float q4 = mul_rn(t, 4.0f);
  int quadrant = int(q4);
  float r = add_rn(q4, -float(quadrant));  // in [0, 1): exact
  float a = mul_rn(r, 1.57079632679489662f);  // angle in [0, pi/2)
  float a2 = mul_rn(a, a);
  // Taylor series to degree 13 / 12: error < 1e-8 on [0, pi/2]
  float sp = 1.0f / 6227020800.0f;
  sp = fma_rn(sp, a2, -1.0f / 39916800.0f);
  sp = fma_rn(sp, a2, 1.0f / 362880.0f);
  sp = fma_rn(sp, a2, -1.0f / 5040.0f);
  sp = fma_rn(sp, a2, 1.0f / 120.0f);
  sp = fma_rn(sp, a2, -1.0f / 6.0f);
  sp = fma_rn(sp, a2, 1.0f);
  float sn = mul_rn(sp, a);
  float cp = 1.0f / 479001600.0f;
  cp = fma_rn(cp, a2, -1.0f / 3628800.0f);
  cp = fma_rn(cp, a2, 1.0f / 40320.0f);
  cp = fma_rn(cp, a2, -1.0f / 720.0f);
  cp = fma_rn(cp, a2, 1.0f / 24.0f);
  cp = fma_rn(cp, a2, -0.5f);
  float cs = fma_rn(cp, a2, 1.0f);
  switch (quadrant & 3) {
    case 0: *s_out = sn; *c_out = cs; break;
    case 1: *s_out = cs; *c_out = -sn; break;
    case 2: *s_out = -sn; *c_out = -cs; break;
    default: *s_out = -cs; *c_out = sn; break;
  }
}

// Standard normal for stream index i: Box-Muller on the word pair (2*(i/2), 2*(i/2)+1);
// even i takes the cosine branch, odd i the sine branch.
REHYAT_HD float normal(uint64_t seed, uint64_t index) {
  uint64_t pair = index & ~uint64_t(1);
  U4 b = block(seed, pair >> 2);
  uint32_t w0 = b.v[pair & 3], w1 = b.v[(pair & 3) + 1];
  float u0 = uniform_open0(w0);
  float u1 = uniform(w1);
  float radius_sq = mul_rn(-2.0f, log_exact(u0));
#if defined(__CUDA_ARCH__)
  float radius = __fsqrt_rn(radius_sq);
#else
  float radius = __builtin_sqrtf(radius_sq);
#endif
  float s, c;
  sincos_2pi(u1, &s, &c);
  return mul_rn(radius, (index & 1) ? s : c);
}

}  // namespace rehyat::philox
