"""Speculative sampling with a draft model (SpS: Leviathan et al., 2023; Chen et al., 2023): a
smaller model with the same tokenizer drafts a chain; it keeps its own KV cache per slot, rolled
back with `trim` to what the target accepted, and reused across requests by common prefix.
"""
from __future__ import annotations

import torch

from ....errors import InvalidParameterError
from ....formats.tokenizer import Tokenizer
from ....kv.cache import KVCache
from ....models.transformer import Transformer
from ...sequence import Sequence
from ..tree import DraftTree
from .base import Budget, Feedback
from .chain import draft_chain

CHUNK = 512          # catch-up forwards over long prompts run in chunks, like prefill
PROBE = "def f(x):\n    return x * 2  # Héllo, 世界!"


def check_compatible(target: Tokenizer, target_vocab: int, draft: Tokenizer, draft_vocab: int, name: str) -> None:
    """A draft must share the target's tokenizer: same ids for the same text, same logits width."""
    if target_vocab != draft_vocab or target.encode(PROBE) != draft.encode(PROBE):
        raise InvalidParameterError(f"draft model {name} does not share the target model's tokenizer")


class DraftModel:
    name = "draft"
    free = False

    def __init__(self, model: Transformer) -> None:
        self.model = model
        self.caches: dict[int, KVCache] = {}
        self.held: dict[int, list[int]] = {}       # per slot: the ids the draft cache holds

    def _cache(self, slot: int, capacity: int) -> KVCache:
        cache = self.caches.get(slot)
        if cache is None or cache.capacity < capacity:
            cache = self.caches[slot] = self.model.new_cache(capacity)
            self.held[slot] = []
        return cache

    def propose(self, seq: Sequence, budget: Budget) -> DraftTree | None:
        if budget.nodes <= 0 or budget.depth <= 0:
            return None
        length = min(budget.nodes, budget.depth)
        capacity = len(seq.ids) + length + 1
        if budget.cache is not None:
            capacity = max(capacity, budget.cache.capacity)
        cache = self._cache(seq.slot, min(capacity, self.model.config.max_position_embeddings))
        if len(seq.ids) + length > cache.capacity:
            return None
        held = self.held[seq.slot]
        keep = _common_prefix(held, seq.ids[:-1])
        cache.trim(cache.length(0) - keep)
        logits = self._run(cache, seq.ids[keep:], keep)
        root = len(seq.ids) - 1
        tree = draft_chain(seq, length, logits, lambda tok, i: self._run(cache, [tok], root + 1 + i))
        self.held[seq.slot] = seq.ids + tree.tokens[:-1]
        return tree

    def _run(self, cache: KVCache, ids: list[int], start: int) -> torch.Tensor:
        dev = self.model.device
        logits = None
        for lo in range(0, len(ids), CHUNK):
            chunk = ids[lo:lo + CHUNK]
            pos = torch.arange(start + lo, start + lo + len(chunk), device=dev)[None]
            logits = self.model(torch.tensor([chunk], device=dev), pos, cache, last_only=True, prefill=True)[0, -1]
        return logits

    def update(self, seq: Sequence, feedback: Feedback) -> None:
        """The draft cache is rolled back lazily, at the next proposal, to the common prefix."""

    def release(self, seq: Sequence) -> None:
        """The draft cache stays: the next request in this slot reuses its common prefix."""


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix, by bisection on C-speed slice comparisons."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
