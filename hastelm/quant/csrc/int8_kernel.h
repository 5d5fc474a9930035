// Per-row int8 weight x bf16 activation GEMM for AVX512-BF16 CPUs (W8A16), no torch.
//
// y[m, n] = scale[n] * sum_k x[m, k] * q[n, k]. Integers in [-127, 127] are exact in bf16, so
// `vdpbf16ps` forms every product exactly and accumulates in fp32, k pairs in order. It serves
// the Q8_0-derived embedding/output table (the lm_head) and layers of other GGUF types, where
// torch's `_weight_int8pack_mm` costs 3x more at 8 rows than at 1.
//
// Determinism, as in int4_kernel.h: every (row, column) result is produced by the same
// instruction sequence whatever the number of rows, its register tile, or the thread.
//
// Packed layout (kernels.py `pack_int8`): int8 [N/16, K/2, 32]; for block b of 16 output columns
// and k pair p, byte 2c + h is q[16b + c][2p + h]. Widened to fp32 in two halves of 8 columns and
// narrowed by one `vcvtne2ps2bf16`, those 32 bytes become the 16 (column, k pair) lanes that
// `vdpbf16ps` multiplies with the broadcast activation pair (x[2p], x[2p + 1]).
#pragma once

#include "int4_kernel.h"   // HASTELM_X86, kBlockCols, store_bf16

namespace hastelm_int8 {

using hastelm_int4::kBlockCols;
constexpr int kMaxRowTile = 8;      // rows sharing each widened weight register (a decode batch)

#ifdef HASTELM_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

inline __m512bh load_pairs(const int8_t* p) {
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
  return _mm512_cvtne2ps_pbh(hi, lo);
}

// R rows x C column blocks over all of K; scaled fp32 results to y (row stride ldy).
template <int R, int C>
void tile(const uint16_t* x, int64_t ldx, int64_t K, const int8_t* w, int64_t ldw, const float* scale,
          float* y, int64_t ldy) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < K / 2; ++p) {
    __m512bh wv[C];
    for (int c = 0; c < C; ++c) wv[c] = load_pairs(w + c * ldw + p * 2 * kBlockCols);
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, x + r * ldx + 2 * p, sizeof(pair));
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], wv[c], xb);
    }
  }
  for (int c = 0; c < C; ++c) {
    const __m512 s = _mm512_loadu_ps(scale + c * kBlockCols);
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + r * ldy + c * kBlockCols, _mm512_mul_ps(acc[r][c], s));
  }
}

// `blocks` column blocks in tiles of C, the remainder in narrower tiles; C sized per row count
// so the accumulators hide the dot-product latency within the 32 vector registers.
template <int R, int C = (R == 1 ? 8 : R == 2 ? 4 : R <= 4 ? 3 : 2)>
void run_tiles(const uint16_t* x, int64_t K, const int8_t* w, int64_t ldw, const float* scale, float* y,
               int64_t ldy, int64_t blocks) {
  int64_t b = 0;
  for (; b + C <= blocks; b += C)
    tile<R, C>(x, K, K, w + b * ldw, ldw, scale + b * kBlockCols, y + b * kBlockCols, ldy);
  if constexpr (C > 1)
    if (b < blocks)
      run_tiles<R, C / 2>(x, K, w + b * ldw, ldw, scale + b * kBlockCols, y + b * kBlockCols, ldy, blocks - b);
}

// Output columns [16*b0, 16*b1) for all M rows of x [M, K]; y is [M, N] in bf16 or fp32.
// Columns go in spans that stay in L2 while every row tile passes over them, so a prefill-sized
// M streams the weight from memory once.
inline void gemm_cols(const uint16_t* x, int64_t M, int64_t K, const int8_t* w, const float* scale,
                      int64_t b0, int64_t b1, void* y, int64_t N, bool out_bf16) {
  const int64_t ldw = K * kBlockCols;
  const int64_t span = std::max<int64_t>(1, (256 * 1024) / ldw);
  std::vector<float> buf(kMaxRowTile * span * kBlockCols);
  for (int64_t s0 = b0; s0 < b1; s0 += span) {
    const int64_t s1 = std::min(b1, s0 + span), width = (s1 - s0) * kBlockCols;
    const int8_t* ws = w + s0 * ldw;
    const float* ss = scale + s0 * kBlockCols;
    for (int64_t m = 0; m < M; m += kMaxRowTile) {
      const int rows = static_cast<int>(std::min<int64_t>(kMaxRowTile, M - m));
      const uint16_t* xr = x + m * K;
      switch (rows) {
        case 1: run_tiles<1>(xr, K, ws, ldw, ss, buf.data(), width, s1 - s0); break;
        case 2: run_tiles<2>(xr, K, ws, ldw, ss, buf.data(), width, s1 - s0); break;
        case 3: run_tiles<3>(xr, K, ws, ldw, ss, buf.data(), width, s1 - s0); break;
        case 4: run_tiles<4>(xr, K, ws, ldw, ss, buf.data(), width, s1 - s0); break;
        case 5: run_tiles<5>(xr, K, ws, ldw, ss, buf.data(), width, s1 - s0); break;
        case 6: run_tiles<6>(xr, K, ws, ldw, ss, buf.data(), width, s1 - s0); break;
        case 7: run_tiles<7>(xr, K, ws, ldw, ss, buf.data(), width, s1 - s0); break;
        default: run_tiles<8>(xr, K, ws, ldw, ss, buf.data(), width, s1 - s0); break;
      }
      for (int r = 0; r < rows; ++r) {
        const int64_t off = (m + r) * N + s0 * kBlockCols;
        if (out_bf16)
          hastelm_int4::store_bf16(buf.data() + r * width, static_cast<uint16_t*>(y) + off, width);
        else
          std::memcpy(static_cast<float*>(y) + off, buf.data() + r * width, width * sizeof(float));
      }
    }
  }
}

#pragma GCC pop_options
#endif  // HASTELM_X86

}  // namespace hastelm_int8
