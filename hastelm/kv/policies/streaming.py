"""StreamingLLM and H2O: the two policies that need no look at the window's queries.

StreamingLLM (Xiao et al., arXiv:2309.17453): the first `sinks` tokens (attention sinks) and the
most recent ones; the same set in every layer and head, so the cache compacts as one (`evict`),
and it works on sliding-window models too.

H2O (Zhang et al., arXiv:2306.14048): every entry's attention summed over all the queries that
have read it so far (accumulated by the runner in every forward, per KV head, summed over its
query heads); each column keeps the `budget - recent` heaviest hitters outside the recent window
plus the recent window (half the budget each, the paper's split). Accumulated scores of kept
entries carry over the eviction, as in the reference code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Observation, Selection, first, recent, to_selection, top_k, window_attention


@dataclass(frozen=True)
class StreamingLLM:
    name: str = "streamingllm"
    sinks: int = 4
    window: int = 0
    accumulates: bool = False
    per_head: bool = False

    @property
    def min_tokens(self) -> int:
        return self.sinks + 1

    def select(self, obs: Observation, budget: int) -> Selection:
        visible = obs.visible_mask()
        return to_selection(first(visible, self.sinks) | recent(visible, budget - self.sinks))


@dataclass(frozen=True)
class H2O:
    name: str = "h2o"
    recent_ratio: float = 0.5
    window: int = 0
    accumulates: bool = True
    per_head: bool = True

    @property
    def min_tokens(self) -> int:
        return 2

    def split(self, budget: int) -> tuple[int, int]:
        """(heavy hitters, recent window) for a budget."""
        rec = max(1, int(budget * self.recent_ratio))
        return budget - rec, rec

    def select(self, obs: Observation, budget: int) -> Selection:
        assert obs.scores is not None
        heavy, rec_count = self.split(budget)
        visible = obs.visible_mask()
        rec = recent(visible, rec_count)
        candidates = visible & ~rec
        scores = obs.scores.masked_fill(~candidates, float("-inf")).transpose(1, 2)   # [layers, Hkv, n]
        chosen = (top_k(scores, heavy) & candidates.transpose(1, 2)).transpose(1, 2)
        return to_selection(rec | chosen)


def accumulate(scores: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor,
               queries: torch.Tensor, query_positions: torch.Tensor, scale: float) -> None:
    """H2O's bookkeeping for one layer: add the attention `queries` `[t, Hq, D]` give each entry
    (`keys` `[n, Hkv, D]`, causal by position) to `scores` `[>= n, Hkv]`, summed over queries and
    over the query heads of each KV head."""
    att = window_attention(keys, positions, visible, queries, query_positions, scale)   # [Hkv, G, t, n]
    scores[:keys.shape[0]] += att.sum((1, 2)).t().to(scores.dtype)
