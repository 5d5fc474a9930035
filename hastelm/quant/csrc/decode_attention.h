// One-token (decode) attention for AVX-512 CPUs, no torch.
//
// out = softmax(scale * q . k_i) . v_i over one cached sequence's visible keys, for one query
// head. Scores and sums are fp32 over bf16 q/k/v, in one fixed order per (row, head), so a row's
// result does not depend on which other rows share the batch, their lengths, or the thread count:
// a request decodes the same tokens alone or in a continuous batch. Per call it replaces a
// thread-pool dispatch of the generic SDPA per row, which dominated small decode batches.
//
// Like int4_kernel.h, everything is compiled for AVX-512 under a target pragma and must only run
// after cpu_supported() said yes.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace hastelm_attention {

constexpr int kMaxHeadDim = 256;

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")

inline __m512 load_bf16(const uint16_t* p) {   // 16 bf16 values widened exactly to fp32
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// q [D]; key/value position i at k + i * ld, v + i * ld; `visible` (n flags) or null = all.
// `scores` is scratch for n floats; `out` receives D fp32 values. D is a multiple of 16.
inline void attend_one(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t ld, int64_t n,
                       const bool* visible, int D, float scale, float* scores, float* out) {
  const int C = D / 16;
  __m512 qv[kMaxHeadDim / 16];
  for (int c = 0; c < C; ++c) qv[c] = load_bf16(q + 16 * c);
  float best = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    if (visible != nullptr && !visible[i]) {
      scores[i] = -INFINITY;
      continue;
    }
    const uint16_t* ki = k + i * ld;
    __m512 acc = _mm512_mul_ps(qv[0], load_bf16(ki));
    for (int c = 1; c < C; ++c) acc = _mm512_fmadd_ps(qv[c], load_bf16(ki + 16 * c), acc);
    const float s = _mm512_reduce_add_ps(acc) * scale;
    scores[i] = s;
    best = s > best ? s : best;
  }
  float total = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float p = scores[i] == -INFINITY ? 0.0f : std::exp(scores[i] - best);
    scores[i] = p;
    total += p;
  }
  __m512 o[kMaxHeadDim / 16];
  for (int c = 0; c < C; ++c) o[c] = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; ++i) {
    if (scores[i] == 0.0f) continue;
    const __m512 p = _mm512_set1_ps(scores[i]);
    const uint16_t* vi = v + i * ld;
    for (int c = 0; c < C; ++c) o[c] = _mm512_fmadd_ps(p, load_bf16(vi + 16 * c), o[c]);
  }
  const __m512 inv = _mm512_set1_ps(total > 0.0f ? 1.0f / total : 0.0f);
  for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + 16 * c, _mm512_mul_ps(o[c], inv));
}

#pragma GCC pop_options

}  // namespace hastelm_attention
#endif
