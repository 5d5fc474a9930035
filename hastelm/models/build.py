"""Assemble a `Transformer` from a weight source in one of hastelm's numeric modes.

Modes:
- "float32": every weight dequantized to float32; the exactness reference against transformers.
- "bfloat16": dense bf16 weights and activations (GPU default).
- "fast": CPU default. Weights whose GGUF blocks are groupwise int4 stay packed for the int4
  kernel; the others become per-row int8; activations are bf16.
- "invariant": bf16 weights and activations on CUDA, every matmul and attention row through the
  batch-invariant Triton kernels (models/invariant.py), so a token's row is the same bits in a
  decode step, a prompt chunk or a draft-tree verification: greedy speculation equals plain decoding.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..quant.linear import DenseLinear, Int4Linear, Int8Linear
from .config import ModelConfig
from .invariant import InvariantLinear, check_available, check_model
from .rope import interleave_permutation
from .transformer import LayerWeights, Transformer, residual_dtype
from .weights import WeightSource

MODES = ("float32", "bfloat16", "fast", "invariant")


def _dtype(mode: str) -> torch.dtype:
    return torch.float32 if mode == "float32" else torch.bfloat16


def _linear(src: WeightSource, names: list[str], mode: str, device: torch.device,
            row_perms: list[torch.Tensor | None], biases: list[str] | None = None) -> nn.Module:
    """One linear layer for the row-concatenation of `names` (fused projections)."""
    perms = row_perms
    bias = None
    if biases and all(src.has(b) for b in biases):
        parts = [src.float(b) for b in biases]
        bias = torch.cat([p if r is None else p[r] for p, r in zip(parts, perms)])
    if mode == "fast" and device.type == "cpu":
        groups = [src.int4(n) for n in names]
        if all(g is not None for g in groups):
            q, scale, offset = (torch.cat([g[j] if r is None else g[j][r] for g, r in zip(groups, perms)])
                                for j in range(3))
            return Int4Linear(q, scale, offset, bias)
    ws = [src.float(n) for n in names]
    weight = torch.cat([w if r is None else w[r] for w, r in zip(ws, perms)])
    if mode == "fast" and device.type == "cpu":
        # other GGUF types (Q5_0, Q6_K, Q8_0, ...) as per-row int8: a bf16 GEMV is ~5x slower here
        return Int8Linear.quantize(weight.shape, [weight], bias=bias)
    dt = _dtype(mode)
    if mode == "invariant":
        return InvariantLinear(weight.to(device, dt), None if bias is None else bias.to(device, dt))
    return DenseLinear(weight.to(device, dt), None if bias is None else bias.to(device, dt))


def _int8(src: WeightSource, name: str, chunk_rows: int = 512) -> Int8Linear:
    # converted in row chunks: the table never exists in float32, and the transient stays small
    shape = src.shape(name)
    chunks = (src.float(name, slice(lo, lo + chunk_rows)) for lo in range(0, shape[0], chunk_rows))
    return Int8Linear.quantize(shape, chunks)


def build_transformer(config: ModelConfig, src: WeightSource, mode: str = "fast",
                      device: torch.device | str = "cpu",
                      progress: Callable[[int, int], None] | None = None) -> Transformer:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    device = torch.device(device)
    dt = _dtype(mode)
    c = config
    invariant = mode == "invariant"
    if invariant:       # before any weight is converted
        check_available(device)
        check_model(c.num_attention_heads, c.num_key_value_heads, c.head_dim)
    q_perm = k_perm = head_perm = None
    if src.rotate_half_layout:
        q_perm = interleave_permutation(c.num_attention_heads, c.head_dim)
        k_perm = interleave_permutation(c.num_key_value_heads, c.head_dim)
        head_perm = interleave_permutation(1, c.head_dim)

    def norm(name: str, perm: torch.Tensor | None = None) -> torch.Tensor:
        w = src.float(name)
        if src.norms_store_offset:
            w = w + 1.0
        if perm is not None:
            w = w[perm]
        return w.to(device, residual_dtype(dt, device))

    layers = []
    for i in range(c.num_hidden_layers):
        p = f"blk.{i}."
        qk_norm = None
        if src.has(p + "attn_q_norm.weight"):
            qn, kn = norm(p + "attn_q_norm.weight", head_perm), norm(p + "attn_k_norm.weight", head_perm)
            qk_norm = torch.cat([qn.expand(c.num_attention_heads, -1), kn.expand(c.num_key_value_heads, -1)])
        layers.append(LayerWeights(
            attn_norm=norm(p + "attn_norm.weight"),
            qkv=_linear(src, [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"], mode, device,
                        [q_perm, k_perm, None], [p + "attn_q.bias", p + "attn_k.bias", p + "attn_v.bias"]),
            o=_linear(src, [p + "attn_output.weight"], mode, device, [None]),
            ffn_norm=norm(p + "ffn_norm.weight"),
            gate_up=_linear(src, [p + "ffn_gate.weight", p + "ffn_up.weight"], mode, device, [None, None]),
            down=_linear(src, [p + "ffn_down.weight"], mode, device, [None]),
            qk_norm=qk_norm,
            post_attn_norm=norm(p + "post_attention_norm.weight") if src.has(p + "post_attention_norm.weight") else None,
            post_ffn_norm=norm(p + "post_ffw_norm.weight") if src.has(p + "post_ffw_norm.weight") else None,
        ))
        if progress:
            progress(i + 1, c.num_hidden_layers + 1)
    tied = c.tie_word_embeddings or not src.has("output.weight")
    fast_cpu = mode == "fast" and device.type == "cpu"
    embedding: nn.Module
    if invariant:       # the LM head's logits straight from the kernel's fp32 sums
        embedding = InvariantLinear(src.float("token_embd.weight").to(device, dt), out_dtype=torch.float32)
        lm_head = embedding if tied else InvariantLinear(src.float("output.weight").to(device, dt),
                                                         out_dtype=torch.float32)
    else:   # fast CPU mode: per-row int8 for the (usually Q8_0) embedding/output table, half of bf16's bytes
        embedding = (_int8(src, "token_embd.weight") if fast_cpu
                     else DenseLinear(src.float("token_embd.weight").to(device, dt)))
        lm_head = embedding if tied else _linear(src, ["output.weight"], mode, device, [None])
    if fast_cpu and isinstance(lm_head, DenseLinear):
        lm_head = _int8(src, "output.weight")
    model = Transformer(c, embedding, layers, norm("output_norm.weight"), lm_head, dt, invariant=invariant)
    if progress:
        progress(c.num_hidden_layers + 1, c.num_hidden_layers + 1)
    return model.eval()
