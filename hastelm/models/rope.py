"""Rotary position embeddings as one complex multiply.

hastelm keeps every q/k head in interleaved-pair order (llama.cpp's layout): loaders permute
"rotate-half" checkpoints (HF llama, qwen2, gemma3) into it, which leaves q·k unchanged, so
RoPE is a single complex product whatever the architecture.
"""
from __future__ import annotations

import math
from typing import Any

import torch


def inverse_frequencies(head_dim: int, base: float, scaling: dict[str, Any] | None = None) -> torch.Tensor:
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv / scaling["factor"]
    if kind == "llama3":  # Llama 3.1: stretch low frequencies, keep high ones (smooth in between)
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = ((old_ctx / wavelen) - low) / (high - low)
        scaled = torch.where(wavelen > old_ctx / low, inv / factor, inv)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        return torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    if kind in (None, "default"):
        return inv
    raise ValueError(f"unsupported rope scaling {kind!r}")


def rope_table(head_dim: int, base: float, max_positions: int,
               scaling: dict[str, Any] | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Complex64 table `[max_positions, head_dim // 2]` of e^{i * pos * freq}."""
    inv = inverse_frequencies(head_dim, base, scaling).float()
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv)
    return torch.polar(torch.ones_like(angles), angles).to(device)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """x `[B, T, H, D]` (interleaved pairs), rotations `[B, T, D/2]` complex -> same shape and dtype as x."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * rotations.unsqueeze(2)).flatten(-2).to(x.dtype)


def interleave_permutation(num_heads: int, head_dim: int) -> torch.Tensor:
    """Row order that turns rotate-half heads into interleaved-pair heads (llama.cpp's permute)."""
    half = head_dim // 2
    per_head = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()
    return (torch.arange(num_heads)[:, None] * head_dim + per_head[None, :]).flatten()
