// Greedy decoding's argmax, and Token Recycling's top-k, over float32 logit rows for AVX-512
// CPUs, no torch. torch's argmax scans a 49k-entry row at about 1 ns per entry (45 us, 0.4 ms for
// a batch of 8 rows per step) and its topk(8) takes ~85 us a row; these are single vector passes.
// argmax: same result as torch.argmax, the first index of the maximum, and the first NaN when
// the row has one (NaN counts as the largest).
#pragma once

#include <cmath>
#include <cstdint>

namespace hastelm_argmax {

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

inline int64_t argmax_row(const float* x, int64_t n) {
  const __m512 hidden = _mm512_set1_ps(-INFINITY);
  __m512 best = hidden;
  __m512i where = _mm512_setzero_si512();
  __m512i at = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  __mmask16 nan = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_mask_loadu_ps(hidden, lanes, x + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __mmask16 better = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);   // strict: a lane keeps its first
    best = _mm512_mask_mov_ps(best, better, v);
    where = _mm512_mask_mov_epi32(where, better, at);
    at = _mm512_add_epi32(at, step);
  }
  if (nan)
    for (int64_t i = 0; i < n; ++i)
      if (std::isnan(x[i])) return i;
  const float top = _mm512_reduce_max_ps(best);
  // among the lanes holding the maximum, the smallest index (an all -inf row: index 0)
  const __mmask16 tied = _mm512_cmp_ps_mask(best, _mm512_set1_ps(top), _CMP_EQ_OQ);
  return _mm512_mask_reduce_min_epi32(tied, where);
}

constexpr int kMaxTopK = 64;

// Indices of the k largest entries of a row, largest first, the lower index first among equal
// values (a deterministic order, unlike torch.topk's). Entries that are -inf or NaN are never
// chosen: a row with fewer than k others leaves -1 in the remaining slots. One vector compare
// per 16 entries against the k-th best so far; only entries above it go into the sorted list.
inline void topk_row(const float* x, int64_t n, int k, int64_t* out) {
  float val[kMaxTopK];
  for (int j = 0; j < k; ++j) {
    val[j] = -INFINITY;
    out[j] = -1;
  }
  const __m512 hidden = _mm512_set1_ps(-INFINITY);
  __m512 threshold = hidden;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_mask_loadu_ps(hidden, lanes, x + i);
    uint32_t above = _mm512_mask_cmp_ps_mask(lanes, v, threshold, _CMP_GT_OQ);
    if (!above) continue;
    for (; above; above &= above - 1) {          // lanes in index order: ties keep the earlier
      const int64_t at = i + __builtin_ctz(above);
      const float f = x[at];
      if (!(f > val[k - 1])) continue;           // the bar rose within this chunk
      int j = k - 1;
      for (; j > 0 && f > val[j - 1]; --j) {
        val[j] = val[j - 1];
        out[j] = out[j - 1];
      }
      val[j] = f;
      out[j] = at;
    }
    threshold = _mm512_set1_ps(val[k - 1]);
  }
}

#pragma GCC pop_options
#endif

}  // namespace hastelm_argmax
