// Python bindings of hastelm's CPU kernels: the W4A8 int4 GEMM (int4_kernel.h), the W8A8 int8
// GEMM (int8_kernel.h), one-token decode attention (decode_attention.h), RMS norm (rms_norm.h),
// SwiGLU's silu(gate) * up (silu_mul.h) and RoPE + KV-cache write (rope_kv.h):
// checks, threads.
// Only the ATen/pybind headers it needs: a third of <torch/extension.h>'s compile time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/csrc/utils/pybind.h>

#include "argmax.h"
#include "decode_attention.h"
#include "int4_kernel.h"
#include "int8_kernel.h"
#include "rms_norm.h"
#include "rope_kv.h"
#include "silu_mul.h"

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

// x: contiguous bf16 or fp32 [..., K]; returns K. Rows are all leading dims together.
int64_t check_activations(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() >= 1 && x.is_contiguous() &&
              (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat),
              "x must be a contiguous bfloat16 or float32 CPU tensor");
  TORCH_CHECK(x.size(-1) % kGroup == 0, "x must have a multiple of 32 columns");
  return x.size(-1);
}

// The [..., N] result of x [..., K]: float32 for float32 x, else bfloat16.
at::Tensor output_for(const at::Tensor& x, int64_t N) {
  auto shape = x.sizes().vec();
  shape.back() = N;
  return at::empty(shape, x.options().dtype(x.scalar_type() == at::kFloat ? at::kFloat : at::kBFloat16));
}

// Every row of x (bf16 or fp32) quantized per group of 32 to int8 (int4_kernel.h quantize_row).
struct QuantizedX {
  std::vector<int8_t> q;
  std::vector<float> dx, sums;
  int64_t K, G;
  explicit QuantizedX(const at::Tensor& x)
      : q(x.numel()), dx(x.numel() / kGroup), sums(dx.size()), K(x.size(-1)), G(x.size(-1) / kGroup) {
#ifdef HASTELM_X86
    for (int64_t m = 0; m < x.numel() / K; ++m) {
      if (x.scalar_type() == at::kFloat)
        quantize_row(x.data_ptr<float>() + m * K, K, q.data() + m * K, dx.data() + m * G, sums.data() + m * G);
      else
        quantize_row(reinterpret_cast<const uint16_t*>(x.data_ptr()) + m * K, K, q.data() + m * K,
                     dx.data() + m * G, sums.data() + m * G);
    }
#endif
  }
  QuantRows rows() const { return {q.data(), dx.data(), sums.data(), K, G}; }
};

// x: bf16 or fp32 [..., K] contiguous; w: packed uint8 [N/16, K/32, 320 or 384]. Returns [..., N]
// in x's dtype.
at::Tensor int4_gemm(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(cpu_supported(), "int4_gemm needs a CPU with AVX512-BF16 and AVX512-VNNI");
  const int64_t K = check_activations(x);
  const bool half = check_packed(w, K);
  const int64_t M = x.numel() / K, blocks = w.size(0), N = blocks * kBlockCols;
  auto y = output_for(x, N);
  const bool out_fp32 = y.scalar_type() == at::kFloat;
#ifdef HASTELM_X86
  if (M == 0) return y;
  const QuantizedX xq(x);
  const QuantRows rows = xq.rows();
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

// x: bf16 or fp32 [..., K] contiguous; w: uint8 [N/16, K/4, 64] from pack_int8; scale: fp32 [N].
// Returns [..., N] in x's dtype.
at::Tensor int8_gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  TORCH_CHECK(cpu_supported(), "int8_gemm needs a CPU with AVX512-BF16 and AVX512-VNNI");
  const int64_t K = check_activations(x), M = x.numel() / K;
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 3 && w.scalar_type() == at::kByte && w.is_contiguous() &&
              w.size(1) * 4 == K && w.size(2) == 4 * kBlockCols, "w must come from pack_int8 for ", K, " inputs");
  const int64_t blocks = w.size(0), N = blocks * kBlockCols;
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == N,
              "scale must be a contiguous float32 [N] tensor");
  auto y = output_for(x, N);
  const bool out_fp32 = y.scalar_type() == at::kFloat;
#ifdef HASTELM_X86
  if (M == 0) return y;
  const QuantizedX xq(x);
  std::vector<int32_t> share(xq.dx.size());     // 128 * sum(xq) per (row, group)
  for (size_t i = 0; i < share.size(); ++i) {
    int32_t total = 0;
    for (int k = 0; k < kGroup; ++k) total += xq.q[i * kGroup + k];
    share[i] = 128 * total;
  }
  const hastelm_int8::Rows rows{xq.rows(), share.data()};
  const auto* wp = w.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  void* yp = y.data_ptr();
  // Columns are independent, so any split over threads gives identical results.
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    hastelm_int8::gemm_cols(rows, M, wp, sp, b0, b1, yp, N, !out_fp32);
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
  // a model with more than kMaxGroup query heads per KV head splits each KV head's queries into
  // several tasks of one row; otherwise a task takes up to kMaxGroup / group consecutive rows of
  // one slot (a draft tree's nodes, a prompt chunk's tokens), which read the same keys and values
  const int64_t parts = (group + hastelm_attention::kMaxGroup - 1) / hastelm_attention::kMaxGroup;
  const int64_t per = (group + parts - 1) / parts;
  const int64_t max_rows = parts > 1 ? 1 : hastelm_attention::kMaxGroup / group;
  // blocks of rows: runs of one slot, cut so that there are about two tasks per thread
  std::vector<std::pair<int64_t, int64_t>> blocks;     // (first row, rows)
  const int64_t want = std::max<int64_t>(1, (2 * at::get_num_threads() + Hkv * parts - 1) / (Hkv * parts));
  for (int64_t b0 = 0; b0 < B;) {
    int64_t b1 = b0 + 1;
    while (b1 < B && slot[b1] == slot[b0]) ++b1;
    const int64_t pieces = std::max((b1 - b0 + max_rows - 1) / max_rows, std::min(want, b1 - b0));
    const int64_t size = (b1 - b0 + pieces - 1) / pieces;
    for (int64_t r = b0; r < b1; r += size) blocks.emplace_back(r, std::min(size, b1 - r));
    b0 = b1;
  }
  int64_t widest = 1;      // rows in the largest block: the scratch (zero-filled) is sized for it
  for (const auto& block : blocks) widest = std::max(widest, block.second);
  const auto attend = D == 64 ? hastelm_attention::attend_group<4>    // head sizes with register accumulators
                    : D == 128 ? hastelm_attention::attend_group<8>
                    : D == 256 ? hastelm_attention::attend_group<16> : hastelm_attention::attend_group<0>;
  const int64_t tasks = static_cast<int64_t>(blocks.size()) * Hkv * parts;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    hastelm_attention::Scratch scratch(static_cast<int>(widest * per), longest, static_cast<int>(D));
    std::vector<float> result(widest * per * D);
    for (int64_t t = t0; t < t1; ++t) {
      const auto [first, count] = blocks[t / (Hkv * parts)];
      const int64_t kv = (t / parts) % Hkv, h0 = kv * group + (t % parts) * per;
      const int heads = static_cast<int>(std::min(per, (kv + 1) * group - h0));
      hastelm_attention::Rows rows;
      rows.count = static_cast<int>(count);
      for (int64_t r = 0; r < count; ++r) {
        const int64_t b = first + r;
        rows.q[r] = qp + (b * Hq + h0) * D;
        rows.length[r] = len[b];
        rows.visible[r] = vis == nullptr ? nullptr : vis + b * visible.size(1);
      }
      const int64_t base = (slot[first] * C) * ld + kv * D;
      attend(rows, heads, kp + base, vp + base, ld, static_cast<int>(D), static_cast<float>(scale), scratch,
             result.data());
      for (int64_t r = 0; r < count; ++r)
        store_bf16(result.data() + r * heads * D, op + ((first + r) * Hq + h0) * D, heads * D);
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

// gate_up: float32 [..., 2F] contiguous, F % 16 == 0. Returns silu(gate) * up, float32 [..., F].
at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(cpu_supported(), "silu_mul needs a CPU with AVX-512");
  const int64_t F = gate_up.size(-1) / 2;
  TORCH_CHECK(gate_up.device().is_cpu() && gate_up.scalar_type() == at::kFloat && gate_up.is_contiguous() &&
              F % 16 == 0 && gate_up.size(-1) == 2 * F, "gate_up must be contiguous float32 [..., 2F], F % 16 == 0");
  auto shape = gate_up.sizes().vec();
  shape.back() = F;
  auto y = at::empty(shape, gate_up.options());
#ifdef HASTELM_X86
  const int64_t rows = gate_up.numel() / (2 * F);
  const float* xp = gate_up.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) hastelm_act::silu_mul_row(xp + r * 2 * F, F, yp + r * F);
  });
#endif
  return y;
}

// qkv: float32 [R, (nq + 2 nkv) D] rows; rotations: float32 [R, D/2, 2] (cos, sin); keys/values: a
// cache layer [S, C, nkv, D] bf16; row r's k and v go to slot slots[r], index lengths[r] - 1.
// Returns the rotated queries [R, nq, D] bf16.
at::Tensor rope_qkv(const at::Tensor& qkv, const at::Tensor& rotations, at::Tensor keys, at::Tensor values,
                    const at::Tensor& slots, const at::Tensor& lengths, int64_t nq) {
  TORCH_CHECK(cpu_supported(), "rope_qkv needs a CPU with AVX-512");
  TORCH_CHECK(keys.dim() == 4 && keys.sizes() == values.sizes() && keys.scalar_type() == at::kBFloat16 &&
              values.scalar_type() == at::kBFloat16 && keys.is_contiguous() && values.is_contiguous(),
              "keys and values must be contiguous [S, C, Hkv, D] bf16");
  const int64_t C = keys.size(1), nkv = keys.size(2), D = keys.size(3), width = (nq + 2 * nkv) * D;
  TORCH_CHECK(D % 16 == 0 && qkv.scalar_type() == at::kFloat && qkv.is_contiguous() && qkv.numel() % width == 0,
              "qkv must be contiguous float32 rows of (nq + 2 nkv) * D values");
  const int64_t R = qkv.numel() / width;
  TORCH_CHECK(rotations.scalar_type() == at::kFloat && rotations.is_contiguous() && rotations.numel() == R * D,
              "rotations must be contiguous float32 [R, D/2, 2]");
  TORCH_CHECK(slots.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong && slots.numel() == R &&
              lengths.numel() == R, "slots and lengths must be int64 [R]");
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r)
    TORCH_CHECK(slot[r] >= 0 && slot[r] < keys.size(0) && len[r] >= 1 && len[r] <= C, "slot or length out of range");
  auto q = at::empty({R, nq, D}, keys.options());
#ifdef HASTELM_X86
  const float* xp = qkv.data_ptr<float>();
  const float* rp = rotations.data_ptr<float>();
  auto* qp = reinterpret_cast<uint16_t*>(q.data_ptr());
  auto* kp = reinterpret_cast<uint16_t*>(keys.data_ptr());
  auto* vp = reinterpret_cast<uint16_t*>(values.data_ptr());
  at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t entry = (slot[r] * C + len[r] - 1) * nkv * D;
      hastelm_rope::rope_row(xp + r * width, rp + r * D, static_cast<int>(nq), static_cast<int>(nkv),
                             static_cast<int>(D), qp + r * nq * D, kp + entry, vp + entry);
    }
  });
#endif
  return q;
}

// x: float32 [R, V] contiguous. Returns each row's argmax as int64 [R] (torch.argmax(x, -1)).
at::Tensor argmax_rows(const at::Tensor& x) {
  TORCH_CHECK(cpu_supported(), "argmax_rows needs a CPU with AVX-512");
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() &&
              x.size(1) > 0, "x must be a contiguous float32 [R, V] CPU tensor with V > 0");
  const int64_t R = x.size(0), V = x.size(1);
  auto out = at::empty({R}, x.options().dtype(at::kLong));
#ifdef HASTELM_X86
  const float* xp = x.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, R, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) op[r] = hastelm_argmax::argmax_row(xp + r * V, V);
  });
#endif
  return out;
}

// x: float32 [R, V] contiguous. Returns int64 [R, k]: each row's k largest entries' indices,
// largest first, lower index first among equals (argmax.h topk_row).
at::Tensor topk_rows(const at::Tensor& x, int64_t k) {
  TORCH_CHECK(cpu_supported(), "topk_rows needs a CPU with AVX-512");
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 [R, V] CPU tensor");
  TORCH_CHECK(k >= 1 && k <= hastelm_argmax::kMaxTopK && k <= x.size(1), "k must be in 1..min(64, V)");
  const int64_t R = x.size(0), V = x.size(1);
  auto out = at::empty({R, k}, x.options().dtype(at::kLong));
#ifdef HASTELM_X86
  const float* xp = x.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, R, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) hastelm_argmax::topk_row(xp + r * V, V, static_cast<int>(k), op + r * k);
  });
#endif
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_supported", &cpu_supported, "whether this CPU has the instructions the kernel uses");
  m.def("int4_gemm", &int4_gemm, "y = x @ W.T for a groupwise-int4 W packed by pack_int4");
  m.def("decode_attention", &decode_attention, "one-token attention over each row's cached keys");
  m.def("int8_gemm", &int8_gemm, "y = x @ W.T * scale for a per-row int8 W packed by pack_int8");
  m.def("rms_norm", &rms_norm, "RMS norm of float32 rows times a weight");
  m.def("rope_qkv", &rope_qkv, "RoPE of q and k, k and v written to the cache, q returned in bf16");
  m.def("silu_mul", &silu_mul, "silu(gate) * up of float32 [gate | up] rows");
  m.def("topk_rows", &topk_rows, "indices of each float32 row's k largest entries, largest first");
  m.def("argmax_rows", &argmax_rows, "the first index of each float32 row's maximum (NaN first)");
#ifdef HASTELM_BUILD_HASH
  // setup.py's install-time build: the hash of the csrc/ files it compiled and of torch's version
  // (kernels.build_hash); kernels.py compiles the files anew when either has changed since.
#define HASTELM_STR_(x) #x
#define HASTELM_STR(x) HASTELM_STR_(x)
  m.attr("build_hash") = HASTELM_STR(HASTELM_BUILD_HASH);
#endif
}
