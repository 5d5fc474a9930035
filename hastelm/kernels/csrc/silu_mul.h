// SwiGLU's gate for AVX-512 CPUs, no torch: y = silu(gate) * up, from the fused gate/up
// projection's float32 rows [gate | up]. torch ran it as three dispatched ops (chunk, silu, mul)
// over strided halves. Elementwise, so a row's result does not depend on the batch.
#pragma once

#include <cstdint>

#include "vec_math.h"   // exp16

namespace hastelm_act {

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

// One row: gate_up [2F], y [F] (F a multiple of 16). silu(g) = g / (1 + exp(-g)).
inline void silu_mul_row(const float* gate_up, int64_t F, float* y) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < F; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate_up + i);
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, hastelm_vec::exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_storeu_ps(y + i, _mm512_mul_ps(silu, _mm512_loadu_ps(gate_up + F + i)));
  }
}

#pragma GCC pop_options
#endif

}  // namespace hastelm_act
