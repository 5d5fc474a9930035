"""SnapKV, PyramidKV's layer budgets and Ada-KV's head budgets.

SnapKV (Li et al., arXiv:2404.14469): the last `window` queries vote: each entry's score is the
attention those queries give it (summed over the window, averaged over the query heads that share
its KV head, as kvpress and Ada-KV's GQA branch do), max-pooled over neighbouring entries (kernel
7) so that a chosen token keeps its context; every column keeps its top `budget - window` entries
plus the window itself.

PyramidKV (Cai et al., arXiv:2406.02069): the same scores, with budgets falling linearly from the
first layer to the last (mean = the uniform budget), as its reference code allocates them.

Ada-KV (Feng et al., arXiv:2407.11550), here on SnapKV's scores: within a layer the
`kv_heads * base` best entries across all heads decide each head's budget (`c_h` of them fall in
head h), with a floor: `b_h = round(c_h * (1 - alpha) + floor(base * alpha))`.

In hastelm's cache every column of a slot has one length, so a head (or layer) with a smaller
budget keeps hidden placeholders up to the largest one: head- and layer-wise budgets choose
better entries but resident memory is that of the largest budget (see README, KV eviction).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Observation, Selection, recent, to_selection, top_k, window_attention


def pyramid_budgets(base: int, candidates: int, layers: int, beta: int = 20) -> list[int]:
    """PyramidKV's per-layer budgets (excluding the window) for a mean of `base`."""
    if layers == 1:
        return [base]
    low = base // beta
    high = 2 * base - low
    if high >= candidates:
        high = candidates
        low = 2 * base - high
    step = (high - low) // (layers - 1)
    return [high - i * step for i in range(layers)]


@dataclass(frozen=True)
class SnapKV:
    name: str = "snapkv"
    window: int = 32
    kernel: int = 7
    pyramid: bool = False
    adaptive: bool = False           # Ada-KV's head-wise budgets
    alpha: float = 0.2               # Ada-KV's floor: every head keeps at least base * alpha
    accumulates: bool = False
    per_head: bool = True

    @property
    def min_tokens(self) -> int:
        return self.window + 1

    def scores(self, obs: Observation, layer: int, visible: torch.Tensor,
               candidates: torch.Tensor) -> torch.Tensor:
        """Pooled window votes `[Hkv, n]`; -inf where an entry is not a candidate."""
        assert obs.queries is not None and obs.query_positions is not None
        att = window_attention(obs.keys[layer], obs.positions[layer], visible, obs.queries[layer],
                               obs.query_positions, obs.scale)
        votes = att.sum(2).mean(1)                                        # [Hkv, n]
        # pool over each column's candidates in order, as if packed: entries hidden from a head (or
        # its recent window) are not neighbours, exactly as SnapKV pools its sliced prefix
        cand = candidates.t()
        n = votes.shape[1]
        packed_at = torch.where(cand, cand.cumsum(1) - 1, n)              # n: a spare column
        packed = votes.new_full((votes.shape[0], n + 1), float("-inf")).scatter(1, packed_at, votes)[:, :n]
        pooled = F.max_pool1d(packed[:, None], self.kernel, stride=1, padding=self.kernel // 2)[:, 0]
        pooled = torch.cat([pooled, pooled.new_zeros(pooled.shape[0], 1)], 1).gather(1, packed_at)
        return pooled.masked_fill(~cand, float("-inf"))

    def select(self, obs: Observation, budget: int) -> Selection:
        visible = obs.visible_mask()
        window = min(self.window, int(obs.query_positions.numel()) if obs.query_positions is not None else 0)
        base = max(budget - window, 0)
        # PyramidKV sizes its schedule by the prompt (its one compression); later ones use the
        # tokens seen, so every compression keeps the same shape (layers short of it keep all)
        n_candidates = int(obs.positions.max()) + 1 - window
        budgets = pyramid_budgets(base, n_candidates, obs.layers) if self.pyramid else [base] * obs.layers
        keep = torch.zeros_like(visible)
        for layer in range(obs.layers):
            rec = recent(visible[layer], window)
            candidates = visible[layer] & ~rec
            scores = self.scores(obs, layer, visible[layer], candidates)
            k = self.head_budgets(scores, budgets[layer]) if self.adaptive else budgets[layer]
            keep[layer] = rec | (top_k(scores, k) & candidates.t()).t()
        return to_selection(keep)

    def head_budgets(self, scores: torch.Tensor, base: int) -> torch.Tensor:
        """Ada-KV: each head's share of the layer's `kv_heads * base` best entries, floored."""
        heads, n = scores.shape
        ranked = torch.sort(scores, dim=-1, descending=True, stable=True).values.reshape(-1)
        picks = torch.sort(ranked, descending=True, stable=True).indices[:heads * base]
        picks = picks[torch.isfinite(ranked[picks])]            # never a non-candidate
        counts = torch.bincount(picks // n, minlength=heads).double()
        floor = int(base * self.alpha)
        return torch.round(counts * (1 - self.alpha) + floor).long()
