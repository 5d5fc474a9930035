// RoPE and the KV-cache write of a fused q/k/v projection row for AVX-512 CPUs, no torch.
//
// One row of qkv (float32: nq query heads, then nkv key heads, then nkv value heads, each of D
// values in llama.cpp's interleaved-pair layout) is rotated by its position's (cos, sin) pairs;
// q goes out as bf16, k and v are written as bf16 into the cache. In torch this was ~20
// dispatched ops per layer (views, a complex multiply, casts, slice assignments): at decode
// sizes, more time than the arithmetic. Per element, so a row's result does not depend on the batch.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace hastelm_rope {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

// D values (8 pairs per vector) rotated by rot = (cos0, sin0, cos1, sin1, ...), stored as bf16:
// (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin).
inline void rotate_head(const float* x, const float* rot, int D, uint16_t* out) {
  for (int i = 0; i < D; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i), cs = _mm512_loadu_ps(rot + i);
    const __m512 c = _mm512_moveldup_ps(cs), s = _mm512_movehdup_ps(cs);
    const __m512 swapped = _mm512_permute_ps(v, 0xB1);          // (x1, x0, x3, x2, ...)
    const __m512 r = _mm512_fmaddsub_ps(v, c, _mm512_mul_ps(swapped, s));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)_mm512_cvtneps_pbh(r));
  }
}

inline void to_bf16(const float* x, int D, uint16_t* out) {
  for (int i = 0; i < D; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
}

// One row: q_out [nq, D]; k_dst / v_dst: this row's cache entry [nkv, D] for keys and values.
inline void rope_row(const float* qkv, const float* rot, int nq, int nkv, int D, uint16_t* q_out,
                     uint16_t* k_dst, uint16_t* v_dst) {
  for (int h = 0; h < nq; ++h) rotate_head(qkv + h * D, rot, D, q_out + h * D);
  for (int h = 0; h < nkv; ++h) {
    rotate_head(qkv + (nq + h) * D, rot, D, k_dst + h * D);
    to_bf16(qkv + (nq + nkv + h) * D, D, v_dst + h * D);
  }
}

#pragma GCC pop_options

}  // namespace hastelm_rope
#endif
