// Groupwise-int4 weight x bf16 activation GEMM core for AVX512-BF16 CPUs (W4A16), no torch.
//
// y[m, n] = sum_k x[m, k] * (q[n, k] * scale[n, g] + offset[n, g]), groups g of 32 along k.
// Per group the kernel computes scale * sum(q * x) + offset * sum(x): each nibble becomes an
// exact bf16 integer by one vpermw table lookup, `vdpbf16ps` multiplies it with the bf16
// activations into fp32, and two fp32 FMAs apply the group's scale and offset.
//
// Determinism: every (row, column) result is produced by the same instruction sequence
// (k in order within a group, groups in order) whatever the number of rows, the register
// tile that holds it, or the thread that owns its columns. A row computed alone is therefore
// bit-identical to the same row inside a larger batch, which speculative verification needs.
//
// Packed layout (built by hastelm/quant/kernels.py `pack_int4`): uint8 [N/16, K/32, B].
// For each block of 16 output columns and each group of 32 k: 4 chunks of 64 bytes, then
// 16 scales and 16 offsets, as fp16 (B = 320) when that is exact (Q4_0, Q4_1: their scales
// are fp16 in the file; a fifth fewer bytes to stream) or else fp32 (B = 384, e.g. Q4_K).
// Chunk c is 32 little-endian uint16 words; word w belongs to column w/2 and holds, in nibble
// j, q[col][8c + 2j + w%2], so shifting the chunk right by 4j and looking up the low nibble of
// each word yields the bf16 pairs that `vdpbf16ps` multiplies with the broadcast activation
// pair (x[8c+2j], x[8c+2j+1]).
//
// Everything but cpu_supported() is compiled for AVX-512 under a target pragma and must only
// run after cpu_supported() said yes, so the module still loads on other CPUs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HASTELM_X86 1
#endif

namespace hastelm_int4 {

constexpr int kGroup = 32;          // k values per scale/offset group
constexpr int kBlockCols = 16;      // output columns per packed block (one zmm of fp32)
constexpr int kNibbleBytes = 256;   // 32 k x 16 columns of 4 bits

// Bytes per (16 columns, group): nibbles, then 16 scales and 16 offsets of type S.
template <class S>
constexpr int group_bytes = kNibbleBytes + 2 * kBlockCols * static_cast<int>(sizeof(S));
constexpr int kMaxRowTile = 4;      // rows sharing one decoded weight register

inline bool cpu_supported() {
#ifdef HASTELM_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

#ifdef HASTELM_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

// vpermw only reads the low 5 bits of each index word; repeating the 16 values twice makes
// bit 4 (the next nibble's low bit) irrelevant, so no mask is needed before the lookup.
inline __m512i nibble_table() {
  alignas(64) static const uint16_t table[32] = {
      0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0,
      0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170,
      0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0,
      0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170};
  return _mm512_load_si512(table);
}

// 16 scales (or offsets) stored as fp16 (uint16_t bits) or fp32, widened to fp32.
inline __m512 load_scales(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load_scales(const float* p) { return _mm512_loadu_ps(p); }

// Per-group sums of one row of x in fp32, always in the same order (so the same for any M).
inline void group_sums(const uint16_t* x, int64_t K, float* out) {
  for (int64_t g = 0; g < K / kGroup; ++g) {
    const __m512i v = _mm512_loadu_si512(x + g * kGroup);
    const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xFFFF0000)));
    out[g] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
  }
}

// R rows x C column blocks over all G groups; fp32 results to y (row stride ldy).
template <class S, int R, int C>
void tile(const uint16_t* x, int64_t ldx, const float* sums, int64_t G,
          const uint8_t* w, int64_t ldw, float* y, int64_t ldy) {
  const __m512i table = nibble_table();
  __m512 tot[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) tot[r][c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    const uint8_t* wg = w + g * group_bytes<S>;
    for (int chunk = 0; chunk < 4; ++chunk) {
      __m512i raw[C];
      for (int c = 0; c < C; ++c) raw[c] = _mm512_loadu_si512(wg + c * ldw + chunk * 64);
      for (int j = 0; j < 4; ++j) {
        __m512bh wv[C];
        for (int c = 0; c < C; ++c)
          wv[c] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(raw[c], 4 * j), table);
        const int64_t k = g * kGroup + chunk * 8 + 2 * j;
        for (int r = 0; r < R; ++r) {
          int32_t pair;
          std::memcpy(&pair, x + r * ldx + k, sizeof(pair));
          const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
          for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], wv[c], xb);
        }
      }
    }
    for (int c = 0; c < C; ++c) {
      const S* sc = reinterpret_cast<const S*>(wg + c * ldw + kNibbleBytes);
      const __m512 d = load_scales(sc);
      const __m512 m = load_scales(sc + kBlockCols);
      for (int r = 0; r < R; ++r) {
        tot[r][c] = _mm512_fmadd_ps(acc[r][c], d, tot[r][c]);
        tot[r][c] = _mm512_fmadd_ps(m, _mm512_set1_ps(sums[r * G + g]), tot[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(y + r * ldy + c * kBlockCols, tot[r][c]);
}

// `blocks` column blocks in tiles of C, the remainder in narrower tiles (C/2, ..., 1).
template <class S, int R, int C>
void run_tiles(const uint16_t* x, int64_t ldx, const float* sums, int64_t G, const uint8_t* w,
               int64_t ldw, float* y, int64_t ldy, int64_t blocks) {
  int64_t b = 0;
  for (; b + C <= blocks; b += C)
    tile<S, R, C>(x, ldx, sums, G, w + b * ldw, ldw, y + b * kBlockCols, ldy);
  if constexpr (C > 1)
    if (b < blocks)
      run_tiles<S, R, C / 2>(x, ldx, sums, G, w + b * ldw, ldw, y + b * kBlockCols, ldy, blocks - b);
}

// Column blocks per tile for each row count: enough independent accumulators to hide the
// dot-product latency without running out of the 32 vector registers.
template <class S, int R>
void run_rows(const uint16_t* x, int64_t ldx, const float* sums, int64_t G, const uint8_t* w,
              int64_t ldw, float* y, int64_t ldy, int64_t blocks) {
  constexpr int C = R == 1 ? 8 : R == 2 ? 4 : 3;
  run_tiles<S, R, C>(x, ldx, sums, G, w, ldw, y, ldy, blocks);
}

inline void store_bf16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += kBlockCols) {
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)v);
  }
}

// Output columns [16*b0, 16*b1) for all M rows of x [M, K]; y is [M, N] in bf16 or fp32.
// Rows go in chunks small enough that their activations stay in L2 while every column tile
// of the range streams past them.
template <class S>
void gemm_cols(const uint16_t* x, int64_t M, int64_t K, const float* sums,
                      const uint8_t* w, int64_t b0, int64_t b1, void* y, int64_t N, bool out_bf16) {
  const int64_t G = K / kGroup, ldw = G * group_bytes<S>;
  const int64_t width = (b1 - b0) * kBlockCols;
  const int64_t chunk_rows = std::max<int64_t>(kMaxRowTile, (256 * 1024) / (K * 2) / kMaxRowTile * kMaxRowTile);
  std::vector<float> buf(kMaxRowTile * width);
  const uint8_t* wb = w + b0 * ldw;
  for (int64_t m0 = 0; m0 < M; m0 += chunk_rows) {
    const int64_t m1 = std::min(M, m0 + chunk_rows);
    for (int64_t m = m0; m < m1; m += kMaxRowTile) {
      const int rows = static_cast<int>(std::min<int64_t>(kMaxRowTile, m1 - m));
      const uint16_t* xr = x + m * K;
      const float* sr = sums + m * G;
      switch (rows) {
        case 1: run_rows<S, 1>(xr, K, sr, G, wb, ldw, buf.data(), width, b1 - b0); break;
        case 2: run_rows<S, 2>(xr, K, sr, G, wb, ldw, buf.data(), width, b1 - b0); break;
        case 3: run_rows<S, 3>(xr, K, sr, G, wb, ldw, buf.data(), width, b1 - b0); break;
        default: run_rows<S, 4>(xr, K, sr, G, wb, ldw, buf.data(), width, b1 - b0); break;
      }
      for (int r = 0; r < rows; ++r) {
        const int64_t off = (m + r) * N + b0 * kBlockCols;
        if (out_bf16)
          store_bf16(buf.data() + r * width, static_cast<uint16_t*>(y) + off, width);
        else
          std::memcpy(static_cast<float*>(y) + off, buf.data() + r * width, width * sizeof(float));
      }
    }
  }
}

// The dense bf16 rows [16, K] of one packed block: each value is q * scale + offset in fp32, as a
// product and then a sum (torch's order), rounded once to bf16. Per chunk and nibble j, lane c of
// the chunk holds column c's pair (k, k + 1), which one scatter writes into the 16 rows.
template <class S>
void unpack_block(const uint8_t* w, int64_t G, int64_t K, uint16_t* out) {
  const __m512i row_offsets = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32(static_cast<int>(K / 2)));           // in 32-bit units
  const __m512i nibble = _mm512_set1_epi32(0xF);
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* wg = w + g * group_bytes<S>;
    const S* sc = reinterpret_cast<const S*>(wg + kNibbleBytes);
    const __m512 scale = load_scales(sc), offset = load_scales(sc + kBlockCols);
    for (int chunk = 0; chunk < 4; ++chunk) {
      const __m512i raw = _mm512_loadu_si512(wg + chunk * 64);
      for (int j = 0; j < 4; ++j) {
        const __m512 q0 = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(raw, 4 * j), nibble));
        const __m512 q1 = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(raw, 16 + 4 * j), nibble));
        const __m256i b0 = (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(_mm512_mul_ps(q0, scale), offset));
        const __m256i b1 = (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(_mm512_mul_ps(q1, scale), offset));
        const __m512i pairs = _mm512_or_si512(_mm512_cvtepu16_epi32(b0),
                                              _mm512_slli_epi32(_mm512_cvtepu16_epi32(b1), 16));
        _mm512_i32scatter_epi32(out + g * kGroup + chunk * 8 + 2 * j, row_offsets, pairs, 4);
      }
    }
  }
}

#pragma GCC pop_options
#endif  // HASTELM_X86

}  // namespace hastelm_int4
