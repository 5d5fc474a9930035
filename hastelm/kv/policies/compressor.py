"""The runner's side of eviction: what the policy reads is gathered during the forwards, and slots
over budget are compressed between scheduler steps.

Queries: the CPU's fast attention kernel returns no weights, so the model hands every layer's
rotated query rows to `observe` (`Transformer.query_hook`, set only around this runner's
forwards). SnapKV-style policies keep the last `window` rows per layer and slot; H2O adds each
row's attention over the slot's entries to a per-(layer, entry, KV head) sum right away, in torch.
Both cost a little per forward, only when such a policy is configured.

Compression runs between steps, never inside a forward: a draft tree or a prompt chunk is never
half-compacted, and every entry then belongs to a committed token.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..cache import KVCache
from . import KVPolicyConfig
from .base import Observation
from .streaming import accumulate


@dataclass
class _Row:
    slot: int
    start: int                       # cache index of the row's first new entry
    count: int                       # its real (unpadded) tokens
    positions: torch.Tensor          # [count] their RoPE positions
    key_positions: torch.Tensor | None = None   # [layers, start + count, Hkv] (H2O only)
    visible: torch.Tensor | None = None
    capture: bool = False            # keep its last query rows (the window policies)


class KVCompressor:
    def __init__(self, config: KVPolicyConfig, cache: KVCache, scale: float) -> None:
        self.config, self.cache, self.scale = config, cache, scale
        self.policy = config.policy
        self.queries: dict[int, list[torch.Tensor]] = {}          # slot -> per layer [<= w, Hq, D]
        self.query_positions: dict[int, torch.Tensor] = {}
        self.scores: dict[int, torch.Tensor] = {}                 # slot -> [layers, capacity, Hkv]
        self._rows: list[_Row] | None = None
        self.compressions = 0

    @property
    def observes(self) -> bool:
        """Whether forwards must hand over their queries."""
        return self.policy.window > 0 or self.policy.accumulates

    # ---- during a forward -------------------------------------------------------------------
    def begin(self, slots: Sequence[int], starts: Sequence[int], counts: Sequence[int],
              positions: Sequence[Sequence[int]]) -> bool:
        """Before a forward over these rows; False when it needs nothing from this forward."""
        rows = []
        for slot, start, n, pos in zip(slots, starts, counts, positions):
            if start == 0:                    # a new sequence in this slot: nothing carries over
                self.release(slot)
            row = _Row(slot, start, n, torch.tensor(list(pos[:n]), dtype=torch.long))
            if self.policy.accumulates:
                row.key_positions = self.cache.entry_positions(slot)       # lengths not yet committed:
                end = start + n                                            # extend to the new entries
                fresh = self.cache.positions[slot, start:end][None, :, None]
                row.key_positions = torch.cat([row.key_positions[:, :start],
                                               fresh.expand(row.key_positions.shape[0], n, self.cache.kv_heads)], 1)
                vis = self.cache.visible(slot)
                row.visible = None if vis is None else torch.cat(
                    [vis[:, :start], torch.ones(vis.shape[0], n, vis.shape[2], dtype=torch.bool)], 1)
                if slot not in self.scores:
                    self.scores[slot] = torch.zeros((self.cache.num_layers, self.cache.capacity, self.cache.kv_heads),
                                                    dtype=torch.float64)     # sums of many small weights
            if self.policy.window and (n > 1 or self._near_compression(slot)):
                row.capture = True
                w = self.policy.window
                old = self.query_positions.get(slot, torch.empty(0, dtype=torch.long))
                if old.numel() and int(old[-1]) + 1 != int(row.positions[0]):
                    old = old[:0]              # a gap since the last capture: the window restarts
                    self.queries.pop(slot, None)
                self.query_positions[slot] = torch.cat([old, row.positions])[-w:]
            rows.append(row)
        active = self.policy.accumulates or any(r.capture for r in rows)
        self._rows = rows if active else None
        return active

    def _near_compression(self, slot: int) -> bool:
        """Whether a compression may come within the next `window` tokens. Decode steps copy their
        queries only then: copying every step's 30 query rows cost a fifth of the decode speed."""
        margin = self.policy.window + 2
        budget = max(self.config.budget.tokens(self.cache.seen(slot) + margin), self.policy.min_tokens)
        return self.cache.live(slot) + margin >= budget + self.config.interval

    def end(self) -> None:
        self._rows = None

    def observe(self, layer: int, q: torch.Tensor) -> None:
        """The model's hook: `q` `[B, T, Hq, D]`, rotated, for every row of the forward."""
        if self._rows is None:
            return
        for b, row in enumerate(self._rows):
            rows = q[b, :row.count]
            if row.capture:
                w = self.policy.window
                bufs = self.queries.setdefault(row.slot, [rows[:0].clone() for _ in range(self.cache.num_layers)])
                bufs[layer] = torch.cat([bufs[layer], rows[-w:]])[-w:]
            if self.policy.accumulates:
                end = row.start + row.count
                keys = self.cache.keys[layer][row.slot, :end]
                visible = (torch.ones(end, keys.shape[1], dtype=torch.bool) if row.visible is None
                           else row.visible[layer])
                accumulate(self.scores[row.slot][layer], keys, row.key_positions[layer], visible, rows,
                           row.positions, self.scale)

    # ---- between steps ----------------------------------------------------------------------
    def due(self, slot: int, prefilling: bool = False) -> int | None:
        """The budget to compress `slot` to now, or None."""
        budget = self.config.budget
        if prefilling and budget.is_ratio:
            return None
        target = max(budget.tokens(self.cache.seen(slot)), self.policy.min_tokens)
        # live entries, not the physical length: head- and layer-wise budgets average to the budget
        # while their longest column sets the length (see README, KV eviction)
        return target if self.cache.live(slot) >= target + self.config.interval else None

    def maintain(self, slot: int, prefilling: bool = False) -> bool:
        target = self.due(slot, prefilling)
        if target is None:
            return False
        self.compress(slot, target)
        return True

    def observation(self, slot: int) -> Observation:
        cache, n = self.cache, self.cache.length(slot)
        queries = self.queries.get(slot) if self.policy.window else None
        return Observation(
            keys=[k[slot, :n] for k in cache.keys], positions=cache.entry_positions(slot),
            visible=cache.visible(slot), queries=queries,
            query_positions=self.query_positions.get(slot) if queries is not None else None,
            scores=self.scores[slot][:, :n] if self.policy.accumulates else None, scale=self.scale)

    def compress(self, slot: int, target: int) -> None:
        n = self.cache.length(slot)
        selection = self.policy.select(self.observation(slot), target)
        self.cache.keep_heads(selection.index, selection.counts, slot)
        if self.policy.accumulates:      # the kept entries' sums move with them
            scores = self.scores[slot]
            m = selection.index.shape[-1]
            scores[:, :m] = scores[:, :n].gather(1, selection.index.transpose(1, 2))
            scores[:, m:n] = 0
        self.compressions += 1

    def release(self, slot: int) -> None:
        self.queries.pop(slot, None)
        self.query_positions.pop(slot, None)
        if slot in self.scores:
            self.scores[slot].zero_()
