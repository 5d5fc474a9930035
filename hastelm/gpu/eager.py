"""Plain `Transformer.forward` decoding with the cache bookkeeping done inline: the reference the
graph path's tests and benchmark compare against (independent of the engine's runner)."""
from __future__ import annotations

import torch

from ..kv.cache import KVCache
from ..models.batch import ForwardBatch
from ..models.transformer import Transformer


def eager_step(model: Transformer, cache: KVCache, slots: list[int], tokens: list[list[int]]) -> torch.Tensor:
    """Append `tokens[b]` (equal lengths) to slot `slots[b]` at the next positions; returns float32
    logits `[B, V]` after each row's last token."""
    T = len(tokens[0])
    starts = [cache.reserve(s, T) for s in slots]
    positions = torch.tensor([[st + t for t in range(T)] for st in starts], dtype=torch.long)
    for s, st, pos in zip(slots, starts, positions):
        cache.positions[s, st:st + T] = pos.to(cache.positions.device)
    dev = model.device
    batch = ForwardBatch(torch.tensor(tokens, dtype=torch.long, device=dev), positions.to(dev),
                         list(slots), starts, last_only=True)
    logits = model(batch, cache)[:, -1]
    for s in slots:
        cache.commit(s, T)
    return logits


def prefill(model: Transformer, cache: KVCache, slot: int, tokens: list[int]) -> torch.Tensor:
    return eager_step(model, cache, [slot], [tokens])[0]


def record_decode(cache: KVCache, slots: list[int]) -> tuple[list[int], list[int]]:
    """Bookkeeping of one graph decode step (what the runner does): reserve an entry per slot and
    record its position. Returns (positions, write indices); call `commit_decode` afterwards."""
    starts = [cache.reserve(s, 1) for s in slots]
    for s, st in zip(slots, starts):
        cache.positions[s, st] = st
    return list(starts), list(starts)


def commit_decode(cache: KVCache, slots: list[int]) -> None:
    for s in slots:
        cache.commit(s, 1)
