// Python bindings of hastelm's CPU kernels: the W4A8 int4 GEMM (int4_kernel.h), the W8A16 int8
// GEMM (int8_kernel.h), one-token decode attention (decode_attention.h) and RMS norm (rms_norm.h):
// checks, threads.
// Only the ATen/pybind headers it needs: a third of <torch/extension.h>'s compile time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/csrc/utils/pybind.h>

#include "decode_attention.h"
#include "int4_kernel.h"
#include "int8_kernel.h"
#include "rms_norm.h"

namespace {

using namespace hastelm_int4;


// Checks `w` is a pack_int4 weight for K inputs; true when its scales are fp16.
bool check_packed(const at::Tensor& w, int64_t K) {
  const bool half = w.dim() == 3 && w.size(2) == group_bytes<uint16_t>;
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 3 && w.scalar_type() == at::kByte && w.is_contiguous() &&
              (half || w.size(2) == group_bytes<float>), "w must come from pack_int4");
  TORCH_CHECK(w.size(1) * kGroup == K, "the weight has ", w.size(1) * kGroup, " input columns, not ", K);
  return half;
}

// x: bf16 or fp32 [M, K] contiguous; w: packed uint8 [N/16, K/32, 320 or 384]. Returns [M, N] in
// bfloat16, or float32 when `out_fp32`.
at::Tensor int4_gemm(const at::Tensor& x, const at::Tensor& w, bool out_fp32) {
  TORCH_CHECK(cpu_supported(), "int4_gemm needs a CPU with AVX512-BF16 and AVX512-VNNI");
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous() &&
              (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat),
              "x must be a contiguous 2-D bfloat16 or float32 CPU tensor");
  const bool half = check_packed(w, x.size(1));
  const int64_t M = x.size(0), K = x.size(1), blocks = w.size(0), N = blocks * kBlockCols;
  auto y = at::empty({M, N}, x.options().dtype(out_fp32 ? at::kFloat : at::kBFloat16));
#ifdef HASTELM_X86
  if (M == 0) return y;
  const int64_t G = K / kGroup;
  std::vector<int8_t> xq(M * K);
  std::vector<float> dx(M * G), sums(M * G);
  for (int64_t m = 0; m < M; ++m) {
    if (x.scalar_type() == at::kFloat)
      quantize_row(x.data_ptr<float>() + m * K, K, xq.data() + m * K, dx.data() + m * G, sums.data() + m * G);
    else
      quantize_row(reinterpret_cast<const uint16_t*>(x.data_ptr()) + m * K, K, xq.data() + m * K,
                   dx.data() + m * G, sums.data() + m * G);
  }
  const QuantRows rows{xq.data(), dx.data(), sums.data(), K, G};
  const auto* wp = w.data_ptr<uint8_t>();
  void* yp = y.data_ptr();
  // Columns are independent, so any split over threads gives identical results.
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    if (half)
      gemm_cols<uint16_t>(rows, M, wp, b0, b1, yp, N, !out_fp32);
    else
      gemm_cols<float>(rows, M, wp, b0, b1, yp, N, !out_fp32);
  });
#endif
  return y;
}

// x: bf16 [M, K] contiguous; w: int8 [N/16, K/2, 32] from pack_int8; scale: fp32 [N]. Returns
// [M, N] in bfloat16, or float32 when `out_fp32`.
at::Tensor int8_gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, bool out_fp32) {
  TORCH_CHECK(cpu_supported(), "int8_gemm needs a CPU with AVX512-BF16");
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(),
              "x must be a contiguous 2-D bfloat16 CPU tensor");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 3 && w.scalar_type() == at::kChar && w.is_contiguous() &&
              w.size(1) * 2 == K && w.size(2) == 2 * kBlockCols, "w must come from pack_int8 for ", K, " inputs");
  const int64_t blocks = w.size(0), N = blocks * kBlockCols;
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == N,
              "scale must be a contiguous float32 [N] tensor");
  auto y = at::empty({M, N}, x.options().dtype(out_fp32 ? at::kFloat : at::kBFloat16));
#ifdef HASTELM_X86
  if (M == 0) return y;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* wp = w.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  void* yp = y.data_ptr();
  // Columns are independent, so any split over threads gives identical results.
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    hastelm_int8::gemm_cols(xp, M, K, wp, sp, b0, b1, yp, N, !out_fp32);
  });
#endif
  return y;
}

// q [B, Hq, D] bf16; keys/values: a layer of the KV cache, [S, C, Hkv, D] bf16; row b attends
// over positions [0, lengths[b]) of slot slots[b] where `visible` [B, >= max length] (bool) is
// true, or over all of them when `visible` is empty. Returns [B, Hq, D] bf16.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& slots, const at::Tensor& lengths, const at::Tensor& visible,
                            double scale) {
  TORCH_CHECK(cpu_supported(), "decode_attention needs a CPU with AVX-512");
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kBFloat16 && q.is_contiguous(), "q must be contiguous [B, Hq, D] bf16");
  TORCH_CHECK(keys.dim() == 4 && keys.sizes() == values.sizes() && keys.scalar_type() == at::kBFloat16 &&
              values.scalar_type() == at::kBFloat16 && keys.is_contiguous() && values.is_contiguous(),
              "keys and values must be contiguous [S, C, Hkv, D] bf16");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2), C = keys.size(1), Hkv = keys.size(2);
  TORCH_CHECK(keys.size(3) == D && D % 16 == 0 && D <= hastelm_attention::kMaxHeadDim && Hq % Hkv == 0,
              "head sizes do not match");
  TORCH_CHECK(slots.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong &&
              slots.numel() == B && lengths.numel() == B, "slots and lengths must be int64 [B]");
  const bool masked = visible.numel() > 0;
  TORCH_CHECK(!masked || (visible.dim() == 2 && visible.size(0) == B && visible.scalar_type() == at::kBool &&
                          visible.is_contiguous()), "visible must be contiguous bool [B, L]");
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t* len = lengths.data_ptr<int64_t>();
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(slot[b] >= 0 && slot[b] < keys.size(0) && len[b] >= 1 && len[b] <= C &&
                (!masked || len[b] <= visible.size(1)), "slot or length out of range");
    longest = std::max(longest, len[b]);
  }
  auto out = at::empty({B, Hq, D}, q.options());
#ifdef HASTELM_X86
  const auto* qp = reinterpret_cast<const uint16_t*>(q.data_ptr());
  const auto* kp = reinterpret_cast<const uint16_t*>(keys.data_ptr());
  const auto* vp = reinterpret_cast<const uint16_t*>(values.data_ptr());
  const bool* vis = masked ? visible.data_ptr<bool>() : nullptr;
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr());
  const int64_t ld = Hkv * D, group = Hq / Hkv;
  at::parallel_for(0, B * Hq, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scores(longest), result(D);
    std::vector<int32_t> index(longest);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Hq, h = t % Hq;
      const int64_t base = (slot[b] * C) * ld + (h / group) * D;
      hastelm_attention::attend_one(qp + t * D, kp + base, vp + base, ld, len[b],
                                    vis == nullptr ? nullptr : vis + b * visible.size(1),
                                    static_cast<int>(D), static_cast<float>(scale), scores.data(), index.data(), result.data());
      store_bf16(result.data(), op + t * D, D);
    }
  });
#endif
  return out;
}

// x: float32 [..., D] contiguous, D % 16 == 0; w: float32 [D]. Returns rms_norm(x) * w, float32.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(cpu_supported(), "rms_norm needs a CPU with AVX-512");
  const int64_t D = x.size(-1);
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && D % 16 == 0,
              "x must be a contiguous float32 CPU tensor with a last dimension divisible by 16");
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == D, "w must be float32 [D]");
  auto y = at::empty(x.sizes(), x.options());
#ifdef HASTELM_X86
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, x.numel() / D, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) hastelm_norm::rms_norm_row(xp + r * D, wp, D, static_cast<float>(eps), yp + r * D);
  });
#endif
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_supported", &cpu_supported, "whether this CPU has the instructions the kernel uses");
  m.def("int4_gemm", &int4_gemm, "y = x @ W.T for a groupwise-int4 W packed by pack_int4");
  m.def("decode_attention", &decode_attention, "one-token attention over each row's cached keys");
  m.def("int8_gemm", &int8_gemm, "y = x @ W.T * scale for a per-row int8 W packed by pack_int8");
  m.def("rms_norm", &rms_norm, "RMS norm of float32 rows times a weight");
}
