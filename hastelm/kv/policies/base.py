"""What a KV eviction policy is: a function from what one slot's cache holds (keys, per-entry
positions, who sees what, recent queries, accumulated attention) to the entries each (layer, KV
head) keeps. The runner (`kv/policies/compressor.py`) decides when to call it and applies the
result with `KVCache.keep_heads`; policies never touch the cache.

Selections are `[layers, kv_heads, m]` index tensors, ascending per column, plus optional
per-column visible counts (head-wise budgets, Ada-KV; layer-wise budgets, PyramidKV): see
`KVCache.keep_heads` for how they are stored and read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from ...errors import InvalidParameterError


@dataclass(frozen=True)
class Observation:
    """One slot at compression time. `n` entries per (layer, head) column, in cache order (which
    is position order within a column)."""
    keys: list[torch.Tensor]                 # per layer [n, Hkv, D] (views of the cache)
    positions: torch.Tensor                  # [layers, n, Hkv] RoPE positions
    visible: torch.Tensor | None             # [layers, n, Hkv] False = already hidden from that head
    queries: list[torch.Tensor] | None       # per layer [w, Hq, D]: the last w query rows (rotated)
    query_positions: torch.Tensor | None     # [w] their positions
    scores: torch.Tensor | None              # [layers, n, Hkv] accumulated attention (H2O)
    scale: float                             # the model's attention scale

    @property
    def n(self) -> int:
        return int(self.positions.shape[1])

    @property
    def layers(self) -> int:
        return int(self.positions.shape[0])

    @property
    def kv_heads(self) -> int:
        return int(self.positions.shape[2])

    def visible_mask(self) -> torch.Tensor:
        return torch.ones(self.positions.shape, dtype=torch.bool) if self.visible is None else self.visible


@dataclass(frozen=True)
class Selection:
    index: torch.Tensor                      # [layers, Hkv, m] ascending cache indices per column
    counts: torch.Tensor | None = None       # [layers, Hkv]: only the first counts[l, h] stay visible


class KVPolicy(Protocol):
    """An eviction policy. `window`: recent query rows per layer it reads (0: none);
    `accumulates`: it needs every entry's attention summed over all queries so far (H2O);
    `per_head`: its columns may keep different entries (refused on sliding-window models, whose
    masks read one position per entry); `min_tokens`: the smallest budget that leaves it a choice."""
    name: str
    window: int
    accumulates: bool
    per_head: bool
    min_tokens: int

    def select(self, obs: Observation, budget: int) -> Selection: ...


@dataclass(frozen=True)
class Budget:
    """Entries a slot keeps: a ratio of the tokens it has seen (float in (0, 1]) or a fixed count."""
    value: float | int

    @property
    def is_ratio(self) -> bool:
        return isinstance(self.value, float)

    def tokens(self, seen: int) -> int:
        return math.ceil(self.value * seen) if self.is_ratio else int(self.value)

    def __str__(self) -> str:
        return f"{self.value:g}" if self.is_ratio else f"{self.value} tokens"


def parse_budget(value: str | float | int) -> Budget:
    """`0.25` (a ratio) or `512` (tokens); anything else is a one-line error."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            raise InvalidParameterError(f"kv budget must be a ratio in (0, 1] or a token count, got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameterError(f"kv budget must be a ratio in (0, 1] or a token count, got {value!r}")
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise InvalidParameterError(f"kv budget ratio must be in (0, 1], got {value:g}")
        return Budget(value)
    if value < 1:
        raise InvalidParameterError(f"kv budget must be at least 1 token, got {value}")
    return Budget(int(value))


# ---- shared pieces ---------------------------------------------------------------------------
def top_k(scores: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Mask of the k highest scores along the last dim; ties go to the lower index (a stable sort,
    so the reference implementations can break ties the same way). `k` may be per row."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(scores.shape[-1]).expand_as(order).contiguous())
    k = torch.as_tensor(k)
    return rank < (k[..., None] if k.dim() else k)


def recent(visible: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the last `count` visible entries of every column (`[..., n, Hkv]`, cache order =
    position order), whatever hidden entries sit between them."""
    from_end = visible.flip(-2).cumsum(-2).flip(-2)        # visible entries at index >= j
    return visible & (from_end <= count)


def first(visible: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the first `count` visible entries of every column (the oldest)."""
    return visible & (visible.cumsum(-2) <= count)


def to_selection(keep: torch.Tensor) -> Selection:
    """`keep` `[layers, n, Hkv]` -> the packed index of each column; columns keeping fewer than the
    most get placeholder indices (entries they dropped) that `counts` hides."""
    counts = keep.sum(1)                                          # [layers, Hkv]
    m = int(counts.max())
    col = keep.transpose(1, 2)                                    # [layers, Hkv, n]
    order = torch.sort((~col).to(torch.int8), dim=-1, stable=True).indices[..., :m]
    return Selection(order, None if bool((counts == m).all()) else counts)


def window_attention(keys: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor,
                     queries: torch.Tensor, query_positions: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention weights of the window's queries over one layer's entries, causal by position:
    `[Hkv, G, w, n]` (G query heads per KV head), in float32 (float64 for float64 inputs)."""
    dtype = torch.promote_types(keys.dtype, torch.float32)
    n, kv_heads, d = keys.shape
    w, q_heads = queries.shape[:2]
    q = queries.to(dtype).view(w, kv_heads, q_heads // kv_heads, d)
    logits = torch.einsum("wkgd,nkd->kgwn", q, keys.to(dtype)) * scale
    allowed = (positions.t()[:, None, :] <= query_positions[None, :, None]) & visible.t()[:, None, :]
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1).nan_to_num(0.0)        # a query seeing nothing adds nothing
