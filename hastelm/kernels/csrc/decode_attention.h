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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "vec_math.h"   // load_bf16, exp16

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace hastelm_attention {

using hastelm_vec::exp16;
using hastelm_vec::load_bf16;

constexpr int kMaxHeadDim = 256;
constexpr int kMaxGroup = 32;       // query heads (of one or more rows) per KV head in one task

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

constexpr int kValueChunk = 32;     // cache positions whose values are widened to fp32 at a time

// Per-thread scratch of attend_group, sized for G heads over up to n keys of head size D. The
// widened keys and values are 64-byte aligned: their vectors are stored and read straight back.
struct Scratch {
  std::vector<float> wide;                     // 16 keys, then kValueChunk values, as fp32
  std::vector<float> scores, acc;
  std::vector<int32_t> index;
  std::vector<int64_t> count;
  float* keys;
  float* values;
  Scratch(int G, int64_t n, int D)
      : wide((16 + kValueChunk) * D + 16), scores(G * n), acc(2 * G * D), index(G * n), count(G),
        keys(wide.data() + (16 - reinterpret_cast<uintptr_t>(wide.data()) / sizeof(float) % 16) % 16),
        values(keys + 16 * D) {}
};

// Query rows of one cache slot that a task takes together: row r has `heads` query heads at
// q[r] (D values each), reads positions [0, length[r]) where visible[r] (null = all) allows.
struct Rows {
  const uint16_t* q[kMaxGroup];
  int64_t length[kMaxGroup];
  const bool* visible[kMaxGroup];
  int count = 0;
};

// The query heads that share one KV head, for one or more rows of one slot (a decode step, a
// draft tree's nodes, a prompt chunk's tokens): G = rows.count * heads; key/value position i at
// k + i * ld, v + i * ld. `out` receives G x D fp32 values, row by row. D is a multiple of 16.
// Each head gets exactly the arithmetic it would get alone (scores per 16 keys as one FMA chain per
// key, visible keys compacted in cache order, even and odd keys in two accumulator sets); sharing
// only saves work: every key and value is widened from bf16 once for the task, not once per head
// and row, and keys beyond a row's length score -inf for it like hidden ones.
template <int CT>   // D / 16 when known at compile time (accumulators then stay in registers), else 0
void attend_group(const Rows& rows, int heads, const uint16_t* k, const uint16_t* v, int64_t ld,
                  int D, float scale, Scratch& w, float* out) {
  const int C = CT > 0 ? CT : D / 16;
  const int G = rows.count * heads;
  int64_t n = 0;
  for (int r = 0; r < rows.count; ++r) n = std::max(n, rows.length[r]);
  const __m512 hidden = _mm512_set1_ps(-INFINITY), sc = _mm512_set1_ps(scale);
  __m512 top[kMaxGroup];
  int row_of[kMaxGroup];                 // per head, looked up rather than divided in the hot loop
  const uint16_t* q_of[kMaxGroup];
  for (int h = 0; h < G; ++h) {
    top[h] = hidden;
    row_of[h] = h / heads;
    q_of[h] = rows.q[row_of[h]] + (h % heads) * D;
  }
  // scores 16 keys at a time; hidden keys (and lanes past a row's length) are -inf
  for (int64_t i = 0; i < n; i += 16) {
    const int count = n - i >= 16 ? 16 : static_cast<int>(n - i);
    const __mmask16 lanes = count == 16 ? 0xFFFF : static_cast<__mmask16>((1u << count) - 1);
    __mmask16 live_of[kMaxGroup];
    for (int r = 0; r < rows.count; ++r) {
      const int64_t own = std::clamp<int64_t>(rows.length[r] - i, 0, 16);
      __mmask16 live = lanes & static_cast<__mmask16>(own == 16 ? 0xFFFF : (1u << own) - 1);
      if (rows.visible[r] != nullptr && live) {
        const __m128i flags = _mm_maskz_loadu_epi8(live, rows.visible[r] + i);
        live &= _mm_cmpneq_epi8_mask(flags, _mm_setzero_si128());
      }
      live_of[r] = live;
    }
    for (int j = 0; j < count; ++j)
      for (int c = 0; c < C; ++c) _mm512_store_ps(w.keys + j * D + 16 * c, load_bf16(k + (i + j) * ld + 16 * c));
    for (int h = 0; h < G; ++h) {
      const __mmask16 live = live_of[row_of[h]];
      const uint16_t* q = q_of[h];
      __m512 qv[CT > 0 ? CT : kMaxHeadDim / 16];
      for (int c = 0; c < C; ++c) qv[c] = load_bf16(q + 16 * c);
      __m512 acc[16];
      for (int j = 0; j < 16; ++j) {
        acc[j] = _mm512_setzero_ps();
        if (j < count) {
          const float* kj = w.keys + j * D;
          for (int c = 0; c < C; ++c) acc[j] = _mm512_fmadd_ps(qv[c], _mm512_load_ps(kj + 16 * c), acc[j]);
        }
      }
      const __m512 s = _mm512_mask_blend_ps(live, hidden, _mm512_mul_ps(sum16(acc), sc));
      top[h] = _mm512_max_ps(top[h], s);
      _mm512_mask_storeu_ps(w.scores.data() + h * n + i, lanes, s);
    }
  }
  // per head: the visible keys, compacted in cache order (the softmax sums and the value
  // accumulation then depend only on which keys are visible, not on where hidden ones sit between
  // them, so a draft tree's node gets exactly the arithmetic of a decode step over its contiguous
  // accepted path), then their probabilities 16 at a time
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  float total[kMaxGroup];
  for (int h = 0; h < G; ++h) {
    float* scores = w.scores.data() + h * n;
    int32_t* index = w.index.data() + h * n;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 lanes = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
      const __m512 s = _mm512_maskz_loadu_ps(lanes, scores + i);
      const __mmask16 live = lanes & _mm512_cmp_ps_mask(s, hidden, _CMP_NEQ_OQ);
      // compressed in a register, then stored (Zen 4 microcodes compress-to-memory); m <= i: never
      // overwrites unread scores
      const int kept = __builtin_popcount(live);
      const __mmask16 first = static_cast<__mmask16>((1u << kept) - 1);
      _mm512_mask_storeu_ps(scores + m, first, _mm512_maskz_compress_ps(live, s));
      _mm512_mask_storeu_epi32(index + m, first,
                               _mm512_maskz_compress_epi32(live, _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(i)))));
      m += kept;
    }
    __m512 sum = _mm512_setzero_ps();
    const __m512 peak = _mm512_set1_ps(_mm512_reduce_max_ps(top[h]));
    for (int64_t r = 0; r < m; r += 16) {
      const __mmask16 lanes = m - r >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (m - r)) - 1);
      const __m512 p = _mm512_maskz_mov_ps(lanes, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, scores + r), peak)));
      _mm512_mask_storeu_ps(scores + r, lanes, p);
      sum = _mm512_add_ps(sum, p);
    }
    total[h] = _mm512_reduce_add_ps(sum);
    w.count[h] = m;
  }
  // values: positions widened kValueChunk at a time, then each head takes its visible keys among
  // them in order, two interleaved accumulator sets (even and odd visible keys) halving the FMA
  // dependency chains; the sets live in w.acc between chunks
  std::fill(w.acc.begin(), w.acc.end(), 0.0f);
  int64_t cursor[kMaxGroup] = {};
  for (int64_t i0 = 0; i0 < n; i0 += kValueChunk) {
    const int64_t i1 = std::min<int64_t>(n, i0 + kValueChunk);
    const bool* only = rows.count == 1 ? rows.visible[0] : nullptr;   // skip what no row reads
    for (int64_t i = i0; i < i1; ++i)
      if (only == nullptr || only[i])
        for (int c = 0; c < C; ++c)
          _mm512_store_ps(w.values + (i - i0) * D + 16 * c, load_bf16(v + i * ld + 16 * c));
    for (int h = 0; h < G; ++h) {
      const float* scores = w.scores.data() + h * n;
      const int32_t* index = w.index.data() + h * n;
      int64_t r = cursor[h];
      if (r >= w.count[h] || index[r] >= i1) continue;
      float* keep = w.acc.data() + 2 * h * D;
      __m512 o[CT > 0 ? CT : kMaxHeadDim / 16], o2[CT > 0 ? CT : kMaxHeadDim / 16];
      for (int c = 0; c < C; ++c) {
        o[c] = _mm512_loadu_ps(keep + 16 * c);
        o2[c] = _mm512_loadu_ps(keep + D + 16 * c);
      }
      for (; r < w.count[h] && index[r] < i1; ++r) {
        if (scores[r] == 0.0f) continue;    // adds exactly nothing
        const __m512 p = _mm512_set1_ps(scores[r]);
        const float* vi = w.values + (index[r] - i0) * D;
        if (r & 1)      // two branches, not a pointer to either set: the sets stay in registers
          for (int c = 0; c < C; ++c) o2[c] = _mm512_fmadd_ps(p, _mm512_load_ps(vi + 16 * c), o2[c]);
        else
          for (int c = 0; c < C; ++c) o[c] = _mm512_fmadd_ps(p, _mm512_load_ps(vi + 16 * c), o[c]);
      }
      cursor[h] = r;
      for (int c = 0; c < C; ++c) {
        _mm512_storeu_ps(keep + 16 * c, o[c]);
        _mm512_storeu_ps(keep + D + 16 * c, o2[c]);
      }
    }
  }
  for (int h = 0; h < G; ++h) {
    const float* keep = w.acc.data() + 2 * h * D;
    const __m512 inv = _mm512_set1_ps(total[h] > 0.0f ? 1.0f / total[h] : 0.0f);
    for (int c = 0; c < C; ++c)
      _mm512_storeu_ps(out + h * D + 16 * c,
                       _mm512_mul_ps(_mm512_add_ps(_mm512_loadu_ps(keep + 16 * c), _mm512_loadu_ps(keep + D + 16 * c)), inv));
  }
}

#pragma GCC pop_options

}  // namespace hastelm_attention
#endif
