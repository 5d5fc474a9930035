// Per-row int8 weight x int8-quantized activation GEMM for AVX512-VNNI CPUs (W8A8), no torch.
//
// y[m, n] = scale[n] * sum_k x[m, k] * q[n, k], with each row of x quantized per group of 32 to
// int8 exactly as the int4 kernel does (int4_kernel.h `quantize_row`: x ~= dx * xq). `vpdpbusd`
// multiplies unsigned by signed bytes, so the weight is stored offset by 128 (u = q + 128, in
// 0..255) and the offset's share, 128 * sum(xq) per group, is taken off exactly in int32:
//   sum_k x q ~= sum_g dx_g * (sum_{k in g} u xq - 128 sum_{k in g} xq).
// It serves the Q8_0-derived embedding/output table (the lm_head): 64 products per instruction
// against 32 for the former bf16 `vdpbf16ps` kernel, which mattered for draft verification rows.
//
// Determinism, as in int4_kernel.h: integer sums are exact and the per-group fp32 steps run in
// the same order whatever the number of rows, the register tile or the thread.
//
// Packed layout (kernels.py `pack_int8`): uint8 [N/16, K/4, 64]; for block b of 16 output columns
// and k quad p, byte 4c + i is q[16b + c][4p + i] + 128: one 64-byte load is the `vpdpbusd`
// operand for k = 4p..4p+3 of all 16 columns.
#pragma once

#include "int4_kernel.h"   // HASTELM_X86, kBlockCols, kGroup, QuantRows, gemm_spans

namespace hastelm_int8 {

using hastelm_int4::kBlockCols;
using hastelm_int4::kGroup;
constexpr int kMaxRowTile = 4;      // rows sharing each weight register

#ifdef HASTELM_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni")

// Quantized rows plus, per (row, group), 128 * sum(xq): the weight offset's exact share.
struct Rows {
  hastelm_int4::QuantRows q;
  const int32_t* offset_share;
};

// R rows x C column blocks over all of K; scaled fp32 results to y (row stride ldy).
template <int R, int C>
void tile(const Rows& x, const uint8_t* w, int64_t ldw, const float* scale, float* y, int64_t ldy) {
  const int64_t G = x.q.G;
  __m512 tot[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) tot[r][c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512i acc[R][C];
    for (int r = 0; r < R; ++r) {
      const __m512i start = _mm512_set1_epi32(-x.offset_share[r * G + g]);
      for (int c = 0; c < C; ++c) acc[r][c] = start;
    }
    for (int p = 0; p < kGroup / 4; ++p) {
      __m512i wv[C];
      for (int c = 0; c < C; ++c) wv[c] = _mm512_loadu_si512(w + c * ldw + (g * kGroup / 4 + p) * 64);
      for (int r = 0; r < R; ++r) {
        int32_t quad;
        std::memcpy(&quad, x.q.q + r * x.q.K + g * kGroup + 4 * p, sizeof(quad));
        const __m512i xb = _mm512_set1_epi32(quad);
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], wv[c], xb);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 d = _mm512_set1_ps(x.q.dx[r * G + g]);
      for (int c = 0; c < C; ++c) tot[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][c]), d, tot[r][c]);
    }
  }
  for (int c = 0; c < C; ++c) {
    const __m512 s = _mm512_loadu_ps(scale + c * kBlockCols);
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + r * ldy + c * kBlockCols, _mm512_mul_ps(tot[r][c], s));
  }
}

// `blocks` column blocks in tiles of C, the remainder in narrower tiles; C sized per row count
// so the accumulators fit the 32 vector registers.
template <int R, int C = (R == 1 ? 8 : R == 2 ? 4 : 2)>
void run_tiles(const Rows& x, const uint8_t* w, int64_t ldw, const float* scale, float* y, int64_t ldy,
               int64_t blocks) {
  int64_t b = 0;
  for (; b + C <= blocks; b += C) tile<R, C>(x, w + b * ldw, ldw, scale + b * kBlockCols, y + b * kBlockCols, ldy);
  if constexpr (C > 1)
    if (b < blocks) run_tiles<R, C / 2>(x, w + b * ldw, ldw, scale + b * kBlockCols, y + b * kBlockCols, ldy, blocks - b);
}

// Output columns [16*b0, 16*b1) for all M rows, in L2-sized column spans (int4_kernel.h gemm_spans).
inline void gemm_cols(const Rows& x, int64_t M, const uint8_t* w, const float* scale, int64_t b0, int64_t b1,
                      void* y, int64_t N, bool out_bf16) {
  const int64_t ldw = x.q.K * kBlockCols;
  hastelm_int4::gemm_spans<kMaxRowTile>(M, ldw, b0, b1, y, N, out_bf16,
                                        [&](int64_t m, int rows, int64_t s0, int64_t s1, float* buf) {
    const Rows xr{x.q.at(m), x.offset_share + m * x.q.G};
    const uint8_t* ws = w + s0 * ldw;
    const float* ss = scale + s0 * kBlockCols;
    const int64_t width = (s1 - s0) * kBlockCols;
    switch (rows) {
      case 1: run_tiles<1>(xr, ws, ldw, ss, buf, width, s1 - s0); break;
      case 2: run_tiles<2>(xr, ws, ldw, ss, buf, width, s1 - s0); break;
      case 3: run_tiles<3>(xr, ws, ldw, ss, buf, width, s1 - s0); break;
      default: run_tiles<4>(xr, ws, ldw, ss, buf, width, s1 - s0); break;
    }
  });
}

#pragma GCC pop_options
#endif  // HASTELM_X86

}  // namespace hastelm_int8
