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

#include "vec_math.h"   // load_bf16, exp16

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace hastelm_attention {

using hastelm_vec::exp16;
using hastelm_vec::load_bf16;

constexpr int kMaxHeadDim = 256;

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

// The 16 horizontal sums of a[0..15] as one vector (lane j = sum of a[j]'s lanes), by pairwise
// unpacks and 128-bit shuffles: a fixed order, cheaper than 16 separate reductions.
inline __m512 sum16(__m512* a) {
  __m512 b[8], c[4];
  for (int i = 0; i < 8; ++i)
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
    c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const __m512 e01 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 e23 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(e01, e23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(e01, e23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// q [D]; key/value position i at k + i * ld, v + i * ld; `visible` (n flags) or null = all.
// `scores` and `index` are scratch for n values; `out` receives D fp32 values. D is a multiple of 16.
inline void attend_one(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t ld, int64_t n,
                       const bool* visible, int D, float scale, float* scores, int32_t* index, float* out) {
  const int C = D / 16;
  __m512 qv[kMaxHeadDim / 16];
  for (int c = 0; c < C; ++c) qv[c] = load_bf16(q + 16 * c);
  // scores 16 keys at a time; hidden keys (and lanes past n) are -inf
  const __m512 hidden = _mm512_set1_ps(-INFINITY), sc = _mm512_set1_ps(scale);
  __m512 top = hidden;
  for (int64_t i = 0; i < n; i += 16) {
    const int count = n - i >= 16 ? 16 : static_cast<int>(n - i);
    const __mmask16 lanes = count == 16 ? 0xFFFF : static_cast<__mmask16>((1u << count) - 1);
    __mmask16 live = lanes;
    if (visible != nullptr) {
      const __m128i flags = _mm_maskz_loadu_epi8(live, visible + i);
      live &= _mm_cmpneq_epi8_mask(flags, _mm_setzero_si128());
    }
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) {
      acc[j] = _mm512_setzero_ps();
      if (j < count) {
        const uint16_t* kj = k + (i + j) * ld;
        for (int c = 0; c < C; ++c) acc[j] = _mm512_fmadd_ps(qv[c], load_bf16(kj + 16 * c), acc[j]);
      }
    }
    const __m512 s = _mm512_mask_blend_ps(live, hidden, _mm512_mul_ps(sum16(acc), sc));
    top = _mm512_max_ps(top, s);
    _mm512_mask_storeu_ps(scores + i, lanes, s);
  }
  const float best = _mm512_reduce_max_ps(top);
  // The visible keys, compacted in cache order: the softmax sums and the value accumulation then
  // depend only on which keys are visible, not on where hidden ones sit between them, so a draft
  // tree's node gets exactly the arithmetic of a decode step over its contiguous accepted path.
  int64_t m = 0;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 s = _mm512_maskz_loadu_ps(lanes, scores + i);
    const __mmask16 live = lanes & _mm512_cmp_ps_mask(s, hidden, _CMP_NEQ_OQ);
    _mm512_mask_compressstoreu_ps(scores + m, live, s);     // m <= i: never overwrites unread scores
    _mm512_mask_compressstoreu_epi32(index + m, live, _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(i))));
    m += __builtin_popcount(live);
  }
  // probabilities 16 at a time
  __m512 sum = _mm512_setzero_ps();
  const __m512 peak = _mm512_set1_ps(best);
  for (int64_t r = 0; r < m; r += 16) {
    const __mmask16 lanes = m - r >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (m - r)) - 1);
    const __m512 p = _mm512_maskz_mov_ps(lanes, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, scores + r), peak)));
    _mm512_mask_storeu_ps(scores + r, lanes, p);
    sum = _mm512_add_ps(sum, p);
  }
  const float total = _mm512_reduce_add_ps(sum);
  // two interleaved accumulator sets (even and odd visible keys) halve the FMA dependency chains
  __m512 o[kMaxHeadDim / 16], o2[kMaxHeadDim / 16];
  for (int c = 0; c < C; ++c) o[c] = o2[c] = _mm512_setzero_ps();
  for (int64_t r = 0; r < m; ++r) {
    if (scores[r] == 0.0f) continue;    // adds exactly nothing
    const __m512 p = _mm512_set1_ps(scores[r]);
    const uint16_t* vi = v + static_cast<int64_t>(index[r]) * ld;
    __m512* acc = (r & 1) ? o2 : o;
    for (int c = 0; c < C; ++c) acc[c] = _mm512_fmadd_ps(p, load_bf16(vi + 16 * c), acc[c]);
  }
  for (int c = 0; c < C; ++c) o[c] = _mm512_add_ps(o[c], o2[c]);
  const __m512 inv = _mm512_set1_ps(total > 0.0f ? 1.0f / total : 0.0f);
  for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + 16 * c, _mm512_mul_ps(o[c], inv));
}

#pragma GCC pop_options

}  // namespace hastelm_attention
#endif
