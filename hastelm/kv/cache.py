"""Dense, preallocated KV cache.

Layout per layer: keys/values `[slots, capacity, kv_heads, head_dim]`, so a batch of rows writes
with one `index_put_` and one sequence reads a contiguous prefix without a copy. Each slot also
records the RoPE position of every cached entry: sliding-window masks, tree verification and
eviction (which keeps entries whose positions are no longer contiguous) all derive from it.

Eviction (`kv/policies/`) may keep a different set of entries in every (layer, KV head): then
`keep_heads` packs each (layer, head) column on its own into the slot's one index space (keys
carry their RoPE rotation, so attention needs no position to read them; `head_positions` records
each column's positions for the policies and the masks). Columns that keep fewer entries than the
longest one have a hidden tail (`hidden`), which attention masks per head. `evicted` counts the
entries a slot dropped, so `seen` (the slot's next position) stays known.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ContextOverflowError


class KVCache:
    ZERO_CHUNK = 256
    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, capacity: int,
                 slots: int = 1, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        shape = (slots, capacity, kv_heads, head_dim)
        # torch.empty: pages become resident only when used, so a long context costs no memory
        # until it is filled; regions are zeroed as slots grow (masked keys must not hold NaNs).
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.zeroed = [0] * slots
        # host-side, like the lengths: a decode step records positions without touching the GPU
        self.positions = torch.full((slots, capacity), -1, dtype=torch.long)
        self.lengths = [0] * slots          # host-side: read on every step, so no device sync
        self.capacity = capacity
        self.num_slots = slots
        self.num_layers, self.kv_heads = num_layers, kv_heads
        self.evicted = [0] * slots          # entries eviction dropped: seen = length + evicted
        self.packed = [0] * slots           # [0, packed) holds per-head packed columns (keep_heads)
        self.masked = [False] * slots       # some of [0, packed) is hidden from some heads
        self.hidden_mean = [0.0] * slots    # hidden entries per (layer, head) column, on average
        # allocated on the first per-head keep: [layers, slots, capacity, kv_heads]; valid in [0, packed)
        self.head_positions: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None     # True = hidden from that (layer, head); on the keys' device

    # ---- bookkeeping ---------------------------------------------------------------------
    def length(self, slot: int = 0) -> int:
        return self.lengths[slot]

    def seen(self, slot: int = 0) -> int:
        """Tokens the slot has taken in (its next position): cached entries plus evicted ones."""
        return self.lengths[slot] + self.evicted[slot]

    def reserve(self, slot: int, n: int) -> int:
        """Start index for `n` new entries in `slot`; raises if they do not fit."""
        start = self.lengths[slot]
        if start + n > self.capacity:
            raise ContextOverflowError(
                f"context length exceeded: {start} cached + {n} new tokens > {self.capacity}")
        self.zero_to(slot, start + n)
        return start

    def zero_to(self, slot: int, end: int) -> None:
        """Make `[0, end)` of `slot` safe to read (a batch attends up to its longest row's end)."""
        if end > self.zeroed[slot]:
            self._zero(slot, end)

    def _zero(self, slot: int, end: int) -> None:
        lo, hi = self.zeroed[slot], min(self.capacity, max(end, self.zeroed[slot] + self.ZERO_CHUNK))
        for layer in self.keys + self.values:
            layer[slot, lo:hi].zero_()
        self.zeroed[slot] = hi

    def commit(self, slot: int, n: int) -> None:
        self.lengths[slot] += n

    def trim(self, n: int, slot: int = 0) -> None:
        """Drop the last `n` entries (speculation rollback)."""
        if n < 0 or n > self.lengths[slot]:
            raise ValueError(f"cannot trim {n} of {self.lengths[slot]} entries")
        if self.lengths[slot] - n < self.packed[slot]:
            raise ValueError("cannot trim into the entries an eviction packed (reset the slot instead)")
        self.lengths[slot] -= n
        self.positions[slot, self.lengths[slot]:self.lengths[slot] + n] = -1

    def keep(self, indices: Sequence[int] | torch.Tensor, slot: int = 0) -> None:
        """Keep only the entries at `indices` (ascending), packed to the front of the slot.

        Used to compact an accepted tree path and by eviction policies.
        """
        idx = torch.as_tensor(indices, dtype=torch.long).cpu()
        n = int(idx.numel())
        old = self.lengths[slot]
        p = self.packed[slot]
        if p and not torch.equal(idx[:p], torch.arange(p)):
            raise ValueError("keep() would move per-head packed entries (use keep_heads)")
        on_device = idx.to(self.keys[0].device)
        for store in (self.keys, self.values):
            for layer in store:
                layer[slot, :n] = layer[slot].index_select(0, on_device)
        self.positions[slot, :n] = self.positions[slot].index_select(0, idx)
        self.positions[slot, n:old] = -1
        self.lengths[slot] = n

    def keep_tail(self, start: int, indices: Sequence[int], slot: int = 0) -> None:
        """Keep entries `[0, start)` plus `start + i` for i in `indices` (tree compaction)."""
        if start < self.packed[slot]:
            raise ValueError("keep_tail() would move per-head packed entries")
        sel = [start + i for i in indices]
        if sel == list(range(start, start + len(sel))):
            self.trim(self.lengths[slot] - start - len(sel), slot)   # already contiguous
            return
        idx = torch.tensor(sel, dtype=torch.long)
        n = len(sel)
        on_device = idx.to(self.keys[0].device)
        for store in (self.keys, self.values):
            for layer in store:
                layer[slot, start:start + n] = layer[slot].index_select(0, on_device)
        self.positions[slot, start:start + n] = self.positions[slot].index_select(0, idx)
        self.positions[slot, start + n:self.lengths[slot]] = -1
        self.lengths[slot] = start + n

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make slot `dst` hold the first `n` entries of slot `src` (requests with one prompt compute
        it once)."""
        if self.evicted[src] or self.packed[src]:
            raise ValueError("cannot copy the prefix of a slot that evicted entries")
        self.reset(dst)
        for store in (self.keys, self.values):
            for layer in store:
                layer[dst, :n] = layer[src, :n]
        self.positions[dst, :n] = self.positions[src, :n]
        self.lengths[dst] = n
        self.zeroed[dst] = max(self.zeroed[dst], n)

    def reset(self, slot: int = 0) -> None:
        self.positions[slot, :self.lengths[slot]] = -1
        if self.masked[slot]:
            self.hidden[:, slot, :self.packed[slot]] = False
        self.lengths[slot] = 0
        self.evicted[slot] = self.packed[slot] = 0
        self.masked[slot] = False
        self.hidden_mean[slot] = 0.0

    # ---- eviction -------------------------------------------------------------------------
    def evict(self, indices: Sequence[int] | torch.Tensor, slot: int = 0) -> None:
        """Keep only `indices` (ascending) in every layer and head; the rest count as evicted."""
        old = self.lengths[slot]
        self.keep(indices, slot)
        self.evicted[slot] += old - self.lengths[slot]

    def keep_heads(self, index: torch.Tensor, counts: torch.Tensor | None = None, slot: int = 0) -> None:
        """Per-(layer, KV head) eviction: column (l, h) keeps entries `index[l, h]` (ascending,
        `[layers, kv_heads, m]`), packed to `[0, m)`; with `counts` `[layers, kv_heads]` only the
        first `counts[l, h]` of them stay visible (the rest are placeholders, hidden from that head).
        One set for every column is a plain `evict` (no per-head bookkeeping)."""
        index = index.cpu()
        m = index.shape[-1]
        first = index[0, 0]
        if counts is None and not self.packed[slot] and bool((index == first).all()):
            self.evict(first, slot)
            return
        old = self.lengths[slot]
        positions = self.entry_positions(slot)                            # [layers, old, heads]
        dev_idx = index.to(self.keys[0].device)
        for layer in range(self.num_layers):
            gather = dev_idx[layer].t()[:, :, None].expand(m, self.kv_heads, self.keys[layer].shape[-1])
            for store in (self.keys, self.values):
                store[layer][slot, :m] = store[layer][slot, :old].gather(0, gather)
        kept = positions.gather(1, index.transpose(1, 2))                 # [layers, m, heads]
        if self.head_positions is None:
            self.head_positions = torch.empty((self.num_layers, self.num_slots, self.capacity, self.kv_heads),
                                              dtype=torch.long)
        self.head_positions[:, slot, :m] = kept
        # the shared row keeps only what the masks need of it: >= 0 marks a live entry
        self.positions[slot, :m] = kept.amax(dim=(0, 2))
        self.positions[slot, m:old] = -1
        hide = None if counts is None else torch.arange(m)[None, :, None] >= counts.cpu()[:, None, :]
        if hide is not None and bool(hide.any()):
            if self.hidden is None:
                self.hidden = torch.zeros((self.num_layers, self.num_slots, self.capacity, self.kv_heads),
                                          dtype=torch.bool, device=self.keys[0].device)
            self.hidden[:, slot, :m] = hide.to(self.hidden.device)
            self.hidden[:, slot, m:max(old, self.packed[slot])] = False
            self.masked[slot] = True
            self.hidden_mean[slot] = float(hide.sum()) / (self.num_layers * self.kv_heads)
        elif self.masked[slot]:
            self.hidden[:, slot, :max(old, self.packed[slot])] = False
            self.masked[slot] = False
            self.hidden_mean[slot] = 0.0
        self.lengths[slot] = self.packed[slot] = m
        self.evicted[slot] += old - m

    def live(self, slot: int = 0) -> float:
        """Entries each (layer, head) column of `slot` reads, on average (= `length` unless head- or
        layer-wise budgets left hidden placeholders)."""
        return self.lengths[slot] - self.hidden_mean[slot]

    def entry_positions(self, slot: int = 0) -> torch.Tensor:
        """The RoPE position of every cached entry of `slot` in every (layer, head): `[layers, n, heads]`."""
        n, p = self.lengths[slot], self.packed[slot]
        out = self.positions[slot, :n][None, :, None].expand(self.num_layers, n, self.kv_heads).clone()
        if p:
            out[:, :p] = self.head_positions[:, slot, :p]
        return out

    def visible(self, slot: int = 0) -> torch.Tensor | None:
        """`[layers, n, heads]`: False where a head does not see an entry; None when all see all."""
        if not self.masked[slot]:
            return None
        n = self.lengths[slot]
        return ~self.hidden[:, slot, :n].cpu()

    def hidden_mask(self, layer: int, slots: Sequence[int], length: int) -> torch.Tensor | None:
        """For attention: `[B, kv_heads, length]`, True where row b's head may not read the entry;
        None when no row's slot hides anything (the common case costs one check)."""
        if not any(self.masked[s] for s in slots):
            return None
        idx = torch.tensor(list(slots), device=self.hidden.device)
        return self.hidden[layer, idx, :length].transpose(1, 2)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
