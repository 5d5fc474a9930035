"""The correctness oracle: a slow, cache-free, unbatched float32 forward written as in the papers.

It shares nothing with `Transformer` but the config and the weight source: weights stay in the
source's own layout (so RoPE is applied in that layout: rotate-half for Hugging Face and NeoX-style
GGUF files, interleaved pairs for llama.cpp's llama files), attention is an explicit softmax over a
masked score matrix, and every step is a plain tensor op. Tests check the fast paths (KV cache,
batching, trees, layer skipping) against it.
"""
from __future__ import annotations

import math

import torch

from .config import ModelConfig
from .rope import inverse_frequencies
from .weights import WeightSource


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_angles(head_dim: int, base: float, positions: torch.Tensor, scaling: dict | None) -> torch.Tensor:
    """Angles `[T, head_dim/2]`: position * theta_i, theta_i = base^(-2i/d)."""
    if scaling:   # llama3/linear frequency scaling is a formula of the config; reuse it
        inv = inverse_frequencies(head_dim, base, scaling)
    else:
        inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return positions.double()[:, None] * inv[None, :]


def rotate(x: torch.Tensor, angles: torch.Tensor, rotate_half: bool) -> torch.Tensor:
    """Rotate `x` `[T, H, D]` by `angles` `[T, D/2]`; pair i is (i, i + D/2) or (2i, 2i + 1)."""
    cos, sin = angles.cos().float()[:, None, :], angles.sin().float()[:, None, :]
    if rotate_half:
        a, b = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


class ReferenceModel:
    """Dequantized float32 weights plus a textbook forward over one token sequence."""

    def __init__(self, config: ModelConfig, source: WeightSource) -> None:
        self.config = config
        self.rotate_half = source.rotate_half_layout
        self.w: dict[str, torch.Tensor] = {}
        names = ["token_embd.weight", "output_norm.weight", "output.weight"]
        parts = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm",
                 "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"]
        for i in range(config.num_hidden_layers):
            names += [f"blk.{i}.{p}.{kind}" for p in parts for kind in ("weight", "bias")]
        for name in names:
            if source.has(name):
                w = source.float(name).float()
                is_norm = "norm" in name
                self.w[name] = w + 1.0 if is_norm and source.norms_store_offset else w

    def _get(self, name: str) -> torch.Tensor | None:
        return self.w.get(name)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        y = x @ self.w[name + ".weight"].T
        bias = self._get(name + ".bias")
        return y if bias is None else y + bias

    def _attention(self, i: int, x: torch.Tensor) -> torch.Tensor:
        c, p = self.config, f"blk.{i}."
        T = x.shape[0]
        q = self._linear(x, p + "attn_q").view(T, c.num_attention_heads, c.head_dim)
        k = self._linear(x, p + "attn_k").view(T, c.num_key_value_heads, c.head_dim)
        v = self._linear(x, p + "attn_v").view(T, c.num_key_value_heads, c.head_dim)
        if self._get(p + "attn_q_norm.weight") is not None:
            q = rms_norm(q, self.w[p + "attn_q_norm.weight"], c.rms_norm_eps)
            k = rms_norm(k, self.w[p + "attn_k_norm.weight"], c.rms_norm_eps)
        sliding = c.layer_is_sliding(i)
        base = c.rope_local_base_freq if sliding and c.rope_local_base_freq else c.rope_theta
        angles = rope_angles(c.head_dim, base, torch.arange(T), None if sliding else c.rope_scaling)
        q, k = rotate(q, angles, self.rotate_half), rotate(k, angles, self.rotate_half)
        group = c.num_attention_heads // c.num_key_value_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * c.attn_scale
        qi, ki = torch.arange(T)[:, None], torch.arange(T)[None, :]
        visible = ki <= qi
        if sliding:
            visible &= (qi - ki) < c.sliding_window
        scores = scores.masked_fill(~visible, -math.inf)
        probs = torch.softmax(scores, dim=-1)
        out = torch.einsum("hqk,khd->qhd", probs, v).reshape(T, -1)
        return self._linear(out, p + "attn_output")

    def _mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        p = f"blk.{i}."
        gate = self._linear(x, p + "ffn_gate")
        if self.config.hidden_activation.startswith("gelu"):
            act = 0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate ** 3)))
        else:
            act = gate * torch.sigmoid(gate)
        return self._linear(act * self._linear(x, p + "ffn_up"), p + "ffn_down")

    @torch.no_grad()
    def forward(self, tokens: list[int], layers: list[int] | None = None, last: int | None = None) -> torch.Tensor:
        """Float32 logits `[T, V]` for `tokens` at positions 0..T-1, through only `layers` if given.
        With `last`, only the last positions' logits `[last, V]` (a 262k vocabulary makes all costly)."""
        c, eps = self.config, self.config.rms_norm_eps
        x = self.w["token_embd.weight"][torch.tensor(tokens)]
        if c.is_gemma:
            x = x * math.sqrt(c.hidden_size)
        for i in range(c.num_hidden_layers) if layers is None else layers:
            p = f"blk.{i}."
            h = self._attention(i, rms_norm(x, self.w[p + "attn_norm.weight"], eps))
            if self._get(p + "post_attention_norm.weight") is not None:
                h = rms_norm(h, self.w[p + "post_attention_norm.weight"], eps)
            x = x + h
            h = self._mlp(i, rms_norm(x, self.w[p + "ffn_norm.weight"], eps))
            if self._get(p + "post_ffw_norm.weight") is not None:
                h = rms_norm(h, self.w[p + "post_ffw_norm.weight"], eps)
            x = x + h
        x = rms_norm(x if last is None else x[-last:], self.w["output_norm.weight"], eps)
        head = self._get("output.weight")
        logits = x @ (self.w["token_embd.weight"] if head is None or c.tie_word_embeddings else head).T
        cap = c.final_logit_softcapping
        return torch.tanh(logits / cap) * cap if cap else logits
