"""Batch-invariant bf16 kernels for CUDA (Triton): a matmul and an attention whose every output row
is computed with one fixed arithmetic, whatever else shares the launch.

Why: cuBLAS and SDPA choose kernels, tile shapes and split-K reductions by problem size, so a
token's row computed in a 1-row decode step, a 5-row draft-tree verification or a 256-row prompt
chunk differs in its last bits, and greedy speculation stops matching plain decoding. Here:

- `invariant_linear`: one tile configuration for every M (no autotuning, no split-K); each
  output element is a single fp32 accumulator fed by `tl.dot` over K in BLOCK_K steps from 0 to K.
  Row r's tile does the same instructions whether rows 1..M-1 exist or are masked padding.
- `invariant_attention`: one program per (query row, KV head) walks the row's *visible keys
  compacted in cache order* in fixed BLOCK_N blocks from index 0, with an fp32 online softmax.
  Which keys a row sees is the only input, not where hidden keys sit between them, so a decode
  step (keys 0..L), a prompt chunk (causal) and a draft-tree node (prefix + ancestors, siblings
  skipped) compute a token's row bit for bit alike. The query heads sharing a KV head (GQA) are
  the rows of one `tl.dot`; rows of an MMA do not interact, so the group size changes nothing.
- `invariant_rms_norm`: one program per row, one fixed-shape sum. torch's norm is one block per
  row too, but which of its kernels runs (vectorized or not, and a composite `mean` whose
  reduction layout depends on the number of rows in some builds) is torch's choice, not ours.

The design follows Thinking Machines' batch_invariant_ops (fixed-config Triton matmul) and
hastelm's CPU attention kernel (kernels/csrc/decode_attention.h). Import this module lazily:
triton exists only with CUDA builds of torch. On CPU, TRITON_INTERPRET=1 (set before import) runs
the same kernels through Triton's interpreter (the tests do).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# fixed for every call: a tile shape chosen per M would change the reduction and break invariance.
# BLOCK_M=64 is the smallest Hopper warpgroup MMA; a decode step's M=1 wastes rows of it, but a
# 1-row matmul is bound by reading the weights, not by the MMA.
LINEAR_BLOCK = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64)
LINEAR_LAUNCH = dict(num_warps=4, num_stages=3)
ATTN_BLOCK_N = 64          # keys per step of the online softmax (compacted indices 0-63, 64-127, ...)
ATTN_LAUNCH = dict(num_warps=4, num_stages=2)


def _interpreted(t: torch.Tensor) -> bool:
    """CPU tensors reach a Triton kernel only through the interpreter (TRITON_INTERPRET=1)."""
    return t.device.type == "cpu"


# M is never specialized (Triton would otherwise compile a separate kernel for M == 1)
@triton.jit(do_not_specialize=["M"])
def _linear_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                   HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    row_ok = rm < M
    col_ok = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        # masked-off rows and the K tail load zeros: they add exact zeros to nobody's sum
        a = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None], mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        if UPCAST:      # the interpreter's dot reads bf16 as raw integers: give it exact fp32
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`x` `[M, K]` @ `weight` `[N, K]`ᵀ (+ `bias` `[N]`) -> `[M, N]` in `out_dtype` (default x's),
    fp32 accumulation; row r of the result does not depend on M or on the other rows."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"invariant_linear: shapes {tuple(x.shape)} and {tuple(weight.shape)} do not match")
    if x.dtype != weight.dtype:
        raise ValueError(f"invariant_linear: x is {x.dtype}, weight is {weight.dtype}")
    x = x if x.stride(1) == 1 else x.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    M, K = x.shape
    N = weight.shape[0]
    out = torch.empty(M, N, dtype=out_dtype or x.dtype, device=x.device)
    if M == 0:
        return out
    bm, bn = LINEAR_BLOCK["BLOCK_M"], LINEAR_BLOCK["BLOCK_N"]
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    _linear_kernel[grid](x, weight, bias if bias is not None else weight, out, M, N, K,
                         x.stride(0), weight.stride(0), out.stride(0),
                         HAS_BIAS=bias is not None, UPCAST=_interpreted(x), **LINEAR_BLOCK, **LINEAR_LAUNCH)
    return out


@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, out_ptr, index_ptr, length_ptr, slot_ptr, scale,
                      stride_qr, stride_qh, stride_ks, stride_kl, stride_kh,
                      stride_vs, stride_vl, stride_vh, stride_ir, stride_or, stride_oh,
                      GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, D: tl.constexpr,
                      BLOCK_N: tl.constexpr, UPCAST: tl.constexpr):
    row = tl.program_id(0)
    kvh = tl.program_id(1)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, D)
    head_ok = g < GROUP
    heads = kvh * GROUP + g
    # padding heads (g >= GROUP) are zero queries: finite scores, results never stored
    q = tl.load(q_ptr + row.to(tl.int64) * stride_qr + heads[:, None] * stride_qh + d[None, :],
                mask=head_ok[:, None], other=0.0)
    n = tl.load(length_ptr + row)
    slot = tl.load(slot_ptr + row).to(tl.int64)
    k_base = k_ptr + slot * stride_ks + kvh * stride_kh
    v_base = v_ptr + slot * stride_vs + kvh * stride_vh
    idx_base = index_ptr + row.to(tl.int64) * stride_ir
    m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, D], dtype=tl.float32)
    for start in range(0, n, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        live = j < n
        idx = tl.load(idx_base + j, mask=live, other=0).to(tl.int64)
        k = tl.load(k_base + idx[:, None] * stride_kl + d[None, :], mask=live[:, None], other=0.0)
        if UPCAST:      # see _linear_kernel
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32))) * scale
        else:
            s = tl.dot(q, tl.trans(k)) * scale                              # [GROUP_PAD, BLOCK_N] fp32
        s = tl.where(live[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)                  # 0 on the first block (m_i = -inf)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + idx[:, None] * stride_vl + d[None, :], mask=live[:, None], other=0.0)
        p = p.to(v.dtype)           # bf16 probabilities into the MMA, as FlashAttention does
        if UPCAST:
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float32), v.to(tl.float32))
        else:
            acc = acc * alpha[:, None] + tl.dot(p, v)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]     # a row with no keys gives 0, not NaN
    tl.store(out_ptr + row.to(tl.int64) * stride_or + heads[:, None] * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None])


def invariant_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, key_index: torch.Tensor,
                        lengths: torch.Tensor, row_slots: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of query rows `q` `[R, H, D]` over a KV cache `keys`/`values` `[S, C, Hkv, D]`.

    Row r reads slot `row_slots[r]` at cache indices `key_index[r, :lengths[r]]` (its visible keys,
    ascending; the rest of the row is padding, never read). Query head h uses KV head
    h // (H / Hkv). Returns `[R, H, D]` in q's dtype.
    """
    R, H, D = q.shape
    hkv = keys.shape[2]
    if H % hkv or D < 16 or D & (D - 1):
        raise ValueError(f"invariant_attention: {H} query heads over {hkv} KV heads of size {D} "
                         "(needs a multiple of the KV heads and a power-of-two head size >= 16)")
    if keys.stride(3) != 1 or values.stride(3) != 1 or key_index.stride(1) != 1:
        raise ValueError("invariant_attention: keys, values and key_index need contiguous last dimensions")
    q = q if q.stride(2) == 1 else q.contiguous()
    group = H // hkv
    out = torch.empty(R, H, D, dtype=q.dtype, device=q.device)
    if R == 0:
        return out
    _attention_kernel[(R, hkv)](
        q, keys, values, out, key_index, lengths, row_slots, float(scale),
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), key_index.stride(0), out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), D=D, BLOCK_N=ATTN_BLOCK_N,
        UPCAST=_interpreted(q), **ATTN_LAUNCH)
    return out


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, N, stride_x, stride_o, eps,
                     HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=ok)


def invariant_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMS norm of the rows of `x` `[M, N]` (times `weight` `[N]`), fp32 inside, in x's dtype."""
    x = x if x.stride(1) == 1 else x.contiguous()
    M, N = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if M == 0:
        return out
    _rms_norm_kernel[(M,)](x, weight if weight is not None else x, out, N, x.stride(0), out.stride(0), float(eps),
                           HAS_WEIGHT=weight is not None, BLOCK=max(16, triton.next_power_of_2(N)), num_warps=4)
    return out
