// Groupwise-int4 weight x int8-quantized activation GEMM core for AVX512-VNNI CPUs (W4A8), no torch.
//
// y[m, n] = sum_k x[m, k] * (q[n, k] * scale[n, g] + offset[n, g]), groups g of 32 along k.
// Each row of x is quantized per group of 32 to int8, x ~= dx * xq with dx = max|x| / 127 (the
// arithmetic of llama.cpp's Q4_1 x Q8_1 dot product). Per group the kernel then computes
// scale * dx * sum(q * xq) + offset * sum(x): `vpdpbusd` multiplies four unsigned nibbles by four
// signed int8 activations into each int32 lane (exact), one conversion and two fp32 FMAs apply the
// scales. That is 64 products per instruction, twice `vdpbf16ps`, and a nibble needs only a mask
// or a shift to become an operand: about twice the W4A16 kernel's speed at every batch size.
//
// Determinism: every (row, column) result is produced by the same instruction sequence
// (groups in order, integer sums exact) whatever the number of rows, the register tile that
// holds it, or the thread that owns its columns, and a row's quantization depends only on that
// row. A row computed alone is therefore bit-identical to the same row inside a larger batch,
// which speculative verification and continuous batching need.
//
// Packed layout (built by hastelm/kernels/cpu.py `pack_int4`): uint8 [N/16, K/32, B].
// For each block of 16 output columns and each group of 32 k: 4 chunks of 64 bytes, then
// 16 scales and 16 offsets, as fp16 (B = 320) when that is exact (Q4_0, Q4_1: their scales
// are fp16 in the file; a fifth fewer bytes to stream) or else fp32 (B = 384, e.g. Q4_K).
// In chunk t, byte 4c + i belongs to column c and holds q[c][8t + i] in its low nibble and
// q[c][8t + 4 + i] in its high nibble: masking the chunk gives the `vpdpbusd` operand for
// k = 8t..8t+3 of all 16 columns, shifting it right by 4 first gives k = 8t+4..8t+7.
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
// rows sharing one decoded weight register: a decode batch of 8 requests streams each weight
// from memory once, with its compute, instead of once for rows 0-3 and again from L2 for 4-7
constexpr int kMaxRowTile = 8;

inline bool cpu_supported() {
#ifdef HASTELM_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

#ifdef HASTELM_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni")

// 16 scales (or offsets) stored as fp16 (uint16_t bits) or fp32, widened to fp32.
inline __m512 load_scales(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load_scales(const float* p) { return _mm512_loadu_ps(p); }

// 16 activations as fp32, from fp32 or from bf16 (uint16_t bits).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {
  const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

// One row of x [K] -> int8 xq [K] and, per group, its scale dx (max|x| / 127) and the exact sum
// of its values (for the offset term). Always the same order, so the same for any M.
template <class X>
void quantize_row(const X* x, int64_t K, int8_t* xq, float* dx, float* sums) {
  for (int64_t g = 0; g < K / kGroup; ++g) {
    const __m512 a = load16(x + g * kGroup), b = load16(x + g * kGroup + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    // round to nearest even, then saturate (|x * inv| <= 127 up to rounding)
    const __m128i qa = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv)));
    const __m128i qb = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(b, inv)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + g * kGroup), qa);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + g * kGroup + 16), qb);
    dx[g] = amax / 127.0f;
    sums[g] = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
  }
}

// Quantized activations: M rows of K int8 values, and per (row, group) the scale and the sum.
struct QuantRows {
  const int8_t* q;
  const float* dx;
  const float* sums;
  int64_t K, G;
  QuantRows at(int64_t m) const { return {q + m * K, dx + m * G, sums + m * G, K, G}; }
};

// R rows x C column blocks over all G groups; fp32 results to y (row stride ldy).
template <class S, int R, int C>
void tile(const QuantRows& x, const uint8_t* w, int64_t ldw, float* y, int64_t ldy) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 tot[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) tot[r][c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < x.G; ++g) {
    __m512i acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
    const uint8_t* wg = w + g * group_bytes<S>;
    const int8_t* xg = x.q + g * kGroup;
    for (int t = 0; t < 4; ++t) {
      for (int c = 0; c < C; ++c) {
        const __m512i raw = _mm512_loadu_si512(wg + c * ldw + t * 64);
        const __m512i lo = _mm512_and_si512(raw, low);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
        for (int r = 0; r < R; ++r) {
          int32_t first, second;    // activations k = 8t..8t+3 and 8t+4..8t+7 of row r
          std::memcpy(&first, xg + r * x.K + 8 * t, sizeof(first));
          std::memcpy(&second, xg + r * x.K + 8 * t + 4, sizeof(second));
          acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], lo, _mm512_set1_epi32(first));
          acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], hi, _mm512_set1_epi32(second));
        }
      }
    }
    for (int c = 0; c < C; ++c) {
      const S* sc = reinterpret_cast<const S*>(wg + c * ldw + kNibbleBytes);
      const __m512 d = load_scales(sc);
      const __m512 m = load_scales(sc + kBlockCols);
      for (int r = 0; r < R; ++r) {
        const __m512 dd = _mm512_mul_ps(d, _mm512_set1_ps(x.dx[r * x.G + g]));
        tot[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][c]), dd, tot[r][c]);
        tot[r][c] = _mm512_fmadd_ps(m, _mm512_set1_ps(x.sums[r * x.G + g]), tot[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(y + r * ldy + c * kBlockCols, tot[r][c]);
}

// `blocks` column blocks in tiles of C, the remainder in narrower tiles (C/2, ..., 1).
template <class S, int R, int C>
void run_tiles(const QuantRows& x, const uint8_t* w, int64_t ldw, float* y, int64_t ldy, int64_t blocks) {
  int64_t b = 0;
  for (; b + C <= blocks; b += C) tile<S, R, C>(x, w + b * ldw, ldw, y + b * kBlockCols, ldy);
  if constexpr (C > 1)
    if (b < blocks) run_tiles<S, R, C / 2>(x, w + b * ldw, ldw, y + b * kBlockCols, ldy, blocks - b);
}

// Column blocks per tile for each row count: enough independent accumulators to hide the
// dot-product latency without running out of the 32 vector registers (R x C sums and totals).
template <class S, int R>
void run_rows(const QuantRows& x, const uint8_t* w, int64_t ldw, float* y, int64_t ldy, int64_t blocks) {
  constexpr int C = R == 1 ? 4 : R == 2 ? 4 : R <= 4 ? 2 : 1;
  run_tiles<S, R, C>(x, w, ldw, y, ldy, blocks);
}

inline void store_bf16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += kBlockCols) {
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)v);
  }
}

// Output columns [16*b0, 16*b1) of y [M, N] (bf16 or fp32) for all M rows, shared by the int4
// and int8 kernels. Columns go in spans of about 256 KB of weights (`ldw` bytes per column block)
// that stay in L2 while every tile of up to `kRows` rows passes over them, so a batch of decode
// rows (or a prefill chunk) streams the weight from memory once. `tile(m, rows, s0, s1, buf)`
// computes rows [m, m + rows) for column blocks [s0, s1) into buf (row stride 16 * (s1 - s0)).
template <int kRows, class Tile>
void gemm_spans(int64_t M, int64_t ldw, int64_t b0, int64_t b1, void* y, int64_t N, bool out_bf16, Tile tile) {
  const int64_t span = std::max<int64_t>(1, (256 * 1024) / ldw);
  std::vector<float> buf(kRows * span * kBlockCols);
  for (int64_t s0 = b0; s0 < b1; s0 += span) {
    const int64_t s1 = std::min(b1, s0 + span), width = (s1 - s0) * kBlockCols;
    for (int64_t m = 0; m < M; m += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, M - m));
      tile(m, rows, s0, s1, buf.data());
      for (int r = 0; r < rows; ++r) {
        const int64_t off = (m + r) * N + s0 * kBlockCols;
        if (out_bf16)
          store_bf16(buf.data() + r * width, static_cast<uint16_t*>(y) + off, width);
        else
          std::memcpy(static_cast<float*>(y) + off, buf.data() + r * width, width * sizeof(float));
      }
    }
  }
}

// Output columns [16*b0, 16*b1) for all M quantized rows.
template <class S>
void gemm_cols(const QuantRows& x, int64_t M, const uint8_t* w, int64_t b0, int64_t b1, void* y,
               int64_t N, bool out_bf16) {
  const int64_t ldw = x.G * group_bytes<S>;
  gemm_spans<kMaxRowTile>(M, ldw, b0, b1, y, N, out_bf16, [&](int64_t m, int rows, int64_t s0, int64_t s1, float* buf) {
    const QuantRows xr = x.at(m);
    const uint8_t* ws = w + s0 * ldw;
    const int64_t width = (s1 - s0) * kBlockCols;
    switch (rows) {
      case 1: run_rows<S, 1>(xr, ws, ldw, buf, width, s1 - s0); break;
      case 2: run_rows<S, 2>(xr, ws, ldw, buf, width, s1 - s0); break;
      case 3: run_rows<S, 3>(xr, ws, ldw, buf, width, s1 - s0); break;
      case 4: run_rows<S, 4>(xr, ws, ldw, buf, width, s1 - s0); break;
      case 5: run_rows<S, 5>(xr, ws, ldw, buf, width, s1 - s0); break;
      case 6: run_rows<S, 6>(xr, ws, ldw, buf, width, s1 - s0); break;
      case 7: run_rows<S, 7>(xr, ws, ldw, buf, width, s1 - s0); break;
      default: run_rows<S, 8>(xr, ws, ldw, buf, width, s1 - s0); break;
    }
  });
}

#pragma GCC pop_options
#endif  // HASTELM_X86

}  // namespace hastelm_int4
