// RMS norm of float32 rows for AVX-512 CPUs, no torch: y = x / sqrt(mean(x^2) + eps) * w.
//
// torch's CPU rms_norm runs as six dispatched ops (pow, mean, add, rsqrt, mul, mul); at decode
// sizes (one 576-wide row, 61 norms per token) their overhead was ~1.5 ms of a 12 ms step.
// Each row is reduced in one fixed order, so a row's result does not depend on the batch.
#pragma once

#include <cmath>
#include <cstdint>

#include "int4_kernel.h"   // HASTELM_X86

namespace hastelm_norm {

#ifdef HASTELM_X86
#pragma GCC push_options
#pragma GCC target("avx512f")

// One row of D values (D a multiple of 16).
inline void rms_norm_row(const float* x, const float* w, int64_t D, float eps, float* y) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < D; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const float scale = 1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(D) + eps);
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < D; i += 16)
    _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), s), _mm512_loadu_ps(w + i)));
}

#pragma GCC pop_options
#endif  // HASTELM_X86

}  // namespace hastelm_norm
