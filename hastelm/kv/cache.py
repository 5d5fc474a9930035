"""Dense, preallocated KV cache.

Layout per layer: keys/values `[slots, capacity, kv_heads, head_dim]`, so a batch of rows writes
with one `index_put_` and one sequence reads a contiguous prefix without a copy. Each slot also
records the RoPE position of every cached entry: sliding-window masks, tree verification and
eviction (which keeps entries whose positions are no longer contiguous) all derive from it.
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

    # ---- bookkeeping ---------------------------------------------------------------------
    def length(self, slot: int = 0) -> int:
        return self.lengths[slot]

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
        self.lengths[slot] -= n
        self.positions[slot, self.lengths[slot]:self.lengths[slot] + n] = -1

    def keep(self, indices: Sequence[int] | torch.Tensor, slot: int = 0) -> None:
        """Keep only the entries at `indices` (ascending), packed to the front of the slot.

        Used to compact an accepted tree path and by eviction policies.
        """
        idx = torch.as_tensor(indices, dtype=torch.long).cpu()
        n = int(idx.numel())
        old = self.lengths[slot]
        on_device = idx.to(self.keys[0].device)
        for store in (self.keys, self.values):
            for layer in store:
                layer[slot, :n] = layer[slot].index_select(0, on_device)
        self.positions[slot, :n] = self.positions[slot].index_select(0, idx)
        self.positions[slot, n:old] = -1
        self.lengths[slot] = n

    def keep_tail(self, start: int, indices: Sequence[int], slot: int = 0) -> None:
        """Keep entries `[0, start)` plus `start + i` for i in `indices` (tree compaction)."""
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
        self.reset(dst)
        for store in (self.keys, self.values):
            for layer in store:
                layer[dst, :n] = layer[src, :n]
        self.positions[dst, :n] = self.positions[src, :n]
        self.lengths[dst] = n
        self.zeroed[dst] = max(self.zeroed[dst], n)

    def reset(self, slot: int = 0) -> None:
        self.positions[slot, :self.lengths[slot]] = -1
        self.lengths[slot] = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
