// The vector helpers both CPU kernels use: 16 fp32 lanes (one AVX-512 register, two AVX2 ones) as a GCC
// vector type, loads and stores at any alignment, a broadcast, and the explicit fused multiply-add (the kernels
// are built with implicit contraction off, so every multiply-add is this one or none).
#pragma once
#include <cstring>
#include <immintrin.h>

namespace workbench_vec {

constexpr int LANES = 16;
typedef float v16 __attribute__((vector_size(64)));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

// x in every lane (a plain broadcast: adding x to a vector of zeros would cost a scalar add the compiler may
// not drop, since 0 + -0 is +0)
inline v16 splat(float x) { return v16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }

// acc + a * b with one rounding: the same instruction wherever it is used
inline v16 fma16(v16 a, v16 b, v16 acc) {
#if defined(__AVX512F__)
  return (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#elif defined(__FMA__)
  __m256 a2[2], b2[2], c2[2];
  std::memcpy(a2, &a, 64);
  std::memcpy(b2, &b, 64);
  std::memcpy(c2, &acc, 64);
  c2[0] = _mm256_fmadd_ps(a2[0], b2[0], c2[0]);
  c2[1] = _mm256_fmadd_ps(a2[1], b2[1], c2[1]);
  v16 out;
  std::memcpy(&out, c2, 64);
  return out;
#else
  return acc + a * b;  // built with -ffp-contract=off: a multiply, then an add, everywhere
#endif
}

}  // namespace workbench_vec
