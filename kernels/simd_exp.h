// exp for 16 floats at once, shared by the AVX-512 kernels. Internal to the kernels; include
// only from files that compile functions with the AVX-512 target attribute.
#pragma once

#include <immintrin.h>

namespace w8a8::kernels::internal {

// Computes exp(x) as 2^n * p(r), with x = n ln2 + r, |r| <= ln2 / 2 and p the Taylor
// polynomial of degree 7, whose truncation error is below 6e-9 relative. With the rounding of
// the FMAs this is an estimated few units in the last place. Inputs are clamped to [-87, 88],
// so exp(-100) returns exp(-87) and exp(100) returns exp(88). `static` gives every file its
// own copy, compiled with that file's target attributes.
[[maybe_unused]] __attribute__((target("avx512f"))) static inline __m512 ExpAvx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln 2 split so that n * kLn2High is exact for |n| <= 128.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

}  // namespace w8a8::kernels::internal
