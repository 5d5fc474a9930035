"""Decode and verification steps replayed from CUDA graphs: one graph per (batch bucket, tokens per
row, key-length bucket).

A 135M model's decode step is a few hundred small kernels; launched one by one from Python they
cost far more than the GPU's work. Each bucket's `StaticDecodeStep` is captured once (lazily, on
its first use, or all at once with `capture_all`) into static buffers and replayed: one launch.
Draft trees (and chains) are verified the same way, in buckets of 2, 4, 8 and 16 tokens per row.

Contract with the runner: `run(slots, tokens, positions, write_index, trees)` computes row b's
tokens, writing their keys/values at `write_index[b] + t` of its slot; token t attends over the
slot's entries before `write_index[b]` and the new entries its tree row allows. The caller owns
the cache's bookkeeping (reserve, positions, commit, trimming padding). The decoder only makes the
key bucket's unused region finite (`KVCache.zero_to`), as the eager forward's reads need too.

Padding: a batch of B rows runs in the smallest bucket Bb >= B; rows B..Bb-1 repeat row 0 (its
tokens, positions, slot and write index) and write row 0's own keys/values (`src` = 0), so their
cache writes are bitwise duplicates of row 0's. A row shorter than the token bucket is padded
with entries that see only themselves; they are written after the row's real entries and the
runner trims them. Without CUDA (CPU tests) the same buffers and padding run the step eagerly.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..kv.cache import KVCache
from ..models.transformer import Transformer
from .static_step import StaticDecodeStep, supports

__all__ = ["GraphDecoder", "supports", "length_buckets"]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
TOKEN_BUCKETS = (1, 2, 4, 8, 16)     # tokens per row: decode steps, then draft trees to verify
TREE_BATCH = 16                      # trees are verified in graphs for batches up to this many rows
MIN_KEY_BUCKET = 256


def length_buckets(capacity: int, smallest: int = MIN_KEY_BUCKET) -> list[int]:
    """Key-length buckets: powers of two from `smallest`, and the capacity itself last."""
    out, n = [], smallest
    while n < capacity:
        out.append(n)
        n *= 2
    return out + [capacity]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph | None      # None: run eagerly (no CUDA)
    logits: torch.Tensor | None             # static outputs of the graph
    ids: torch.Tensor | None


@dataclass
class _Inputs:
    """A bucket's static device inputs: the long fields in one buffer (one copy per step)."""
    longs: torch.Tensor        # [2 * bb * T + 3 * bb]: tokens, positions, slots, write index, src
    tree: torch.Tensor | None  # [bb, T, T] bool (T > 1)
    bb: int
    T: int

    def args(self, key_len: int) -> tuple:
        bb, T = self.bb, self.T
        n = bb * T
        x = self.longs
        return (x[:n].view(bb, T), x[n:2 * n].view(bb, T), x[2 * n:2 * n + bb], x[2 * n + bb:2 * n + 2 * bb],
                key_len, x[2 * n + 2 * bb:], self.tree)


class GraphDecoder:
    """Decode and verification steps of `model` over `cache` through captured CUDA graphs."""

    def __init__(self, model: Transformer, cache: KVCache, batch_buckets: tuple[int, ...] = BATCH_BUCKETS,
                 *, compile: bool = False, use_graphs: bool | None = None, warmup: int = 2) -> None:
        self.model, self.cache = model, cache
        self.device = model.device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self.step = StaticDecodeStep(model, cache)
        # torch.compile fuses norms, RoPE and SwiGLU; off by default: every bucket compiles on its
        # first use (tens of seconds each) and fused bf16 rounding differs from the eager forward's
        if compile:
            import torch._dynamo as dynamo
            n = len(batch_buckets) * len(TOKEN_BUCKETS) * len(length_buckets(cache.capacity)) + 8
            for name in ("recompile_limit", "cache_size_limit"):   # one compiled variant per bucket
                if hasattr(dynamo.config, name):
                    setattr(dynamo.config, name, max(getattr(dynamo.config, name), n))
            self.fn = torch.compile(self.step.__call__, dynamic=False)
        else:
            self.fn = self.step
        self.batch_buckets = sorted(set(batch_buckets))
        self.key_buckets = length_buckets(cache.capacity)
        self.warmup = warmup
        self._inputs: dict[tuple[int, int], _Inputs] = {}
        self._pinned = self.device.type == "cuda"
        self._staged: list[torch.cuda.Event | None] = [None, None]   # two host buffers, taking turns
        self._hosts: list[dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]] = [{}, {}]
        self._turn = 0
        self._captured: dict[tuple[int, int, int], _Captured] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._side = torch.cuda.Stream(self.device) if self.use_graphs else None

    # ---- public -----------------------------------------------------------------------------
    def fits(self, rows: int, width: int, max_end: int) -> bool:
        """Whether a step of `rows` rows of `width` tokens, the last entry written below
        `max_end`, has a graph bucket."""
        limit = self.batch_buckets[-1] if width == 1 else min(TREE_BATCH, self.batch_buckets[-1])
        if width > TOKEN_BUCKETS[-1] or (width > 1 and rows > limit):
            return False
        T = next(t for t in TOKEN_BUCKETS if t >= width)
        return max_end - width + T <= self.cache.capacity

    @torch.inference_mode()
    def run(self, slots: Sequence[int], tokens: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
            write_index: Sequence[int], trees: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Float32 logits `[B, T, V]` (T: the longest row; row b's at `[:len(tokens[b])]`), a
        fresh tensor. `trees[b]`: row b's `[n, n]` mask among its new tokens (None: causal)."""
        width = max(len(t) for t in tokens)
        top = self.batch_buckets[-1] if width == 1 else min(TREE_BATCH, self.batch_buckets[-1])
        out = []
        for i in range(0, len(slots), top):       # rows never depend on each other
            part = slice(i, i + top)
            logits, _ = self._run(slots[part], tokens[part], positions[part], write_index[part],
                                  None if trees is None else trees[part], width)
            out.append(logits.clone())            # before another replay reuses the pool
        return (out[0] if len(out) == 1 else torch.cat(out))[:, :width]

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], positions: list[int],
               write_index: list[int]) -> torch.Tensor:
        """One token per row: float32 logits `[B, V]`."""
        return self.run(slots, [[t] for t in tokens], [[p] for p in positions], write_index)[:, 0]

    @torch.inference_mode()
    def capture_all(self, widths: Sequence[int] = (1,)) -> None:
        """Capture every bucket of these token widths now (start-up warm-up). The warm-up runs write
        entries from index 0 of an empty slot, so call this only while some slot holds nothing."""
        empty = next((s for s in range(self.cache.num_slots) if self.cache.lengths[s] == 0), None)
        if empty is None:
            raise RuntimeError("capture_all needs an empty cache slot for its warm-up writes")
        for T in widths:
            rows = self.batch_buckets if T == 1 else [b for b in self.batch_buckets if b <= TREE_BATCH]
            for key_len in self.key_buckets:
                for bb in rows:
                    if (bb, T, key_len) not in self._captured:
                        self._stage([empty], [[0] * T], [list(range(T))], [0], None, bb, T, key_len)
                        self._captured[(bb, T, key_len)] = self._capture(bb, T, key_len)

    def bucket(self, batch: int, max_write: int) -> tuple[int, int]:
        """The (batch, key length) bucket that serves `batch` rows writing up to index `max_write`."""
        bb = next(b for b in self.batch_buckets if b >= batch)
        if max_write >= self.cache.capacity:
            raise ValueError(f"write index {max_write} is outside the cache's {self.cache.capacity} entries")
        return bb, next(n for n in self.key_buckets if n > max_write)

    # ---- pieces -----------------------------------------------------------------------------
    def _run(self, slots: Sequence[int], tokens: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
             write_index: Sequence[int], trees: Sequence[torch.Tensor | None] | None,
             width: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = next(t for t in TOKEN_BUCKETS if t >= width)
        if max(max(p) for p in positions) >= self.step.max_positions or min(min(p) for p in positions) < 0:
            raise ValueError(f"positions must lie in [0, {self.step.max_positions})")
        bb, key_len = self.bucket(len(slots), max(write_index) + T - 1)
        self._stage(slots, tokens, positions, write_index, trees, bb, T, key_len)
        entry = self._captured.get((bb, T, key_len))
        if entry is None:
            entry = self._captured[(bb, T, key_len)] = self._capture(bb, T, key_len)
        if entry.graph is None:
            logits, ids = self.fn(*self._inputs[(bb, T)].args(key_len))
        else:
            entry.graph.replay()
            logits, ids = entry.logits, entry.ids
        return logits[:len(slots)], ids[:len(slots)]

    def _buffers(self, bb: int, T: int) -> tuple[_Inputs, torch.Tensor, torch.Tensor]:
        """The bucket's device inputs and this turn's host staging buffers (pinned on CUDA)."""
        key = (bb, T)
        if key not in self._inputs:
            n = 2 * bb * T + 3 * bb
            tree = torch.zeros(bb, T, T, dtype=torch.bool, device=self.device) if T > 1 else None
            self._inputs[key] = _Inputs(torch.zeros(n, dtype=torch.long, device=self.device), tree, bb, T)
            for hosts in self._hosts:
                hosts[key] = (torch.zeros(n, dtype=torch.long, pin_memory=self._pinned),
                              torch.zeros(bb, T, T, dtype=torch.bool, pin_memory=self._pinned))
        longs, tree = self._hosts[self._turn][key]
        return self._inputs[key], longs, tree

    def _stage(self, slots: Sequence[int], tokens: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
               write_index: Sequence[int], trees: Sequence[torch.Tensor | None] | None,
               bb: int, T: int, key_len: int) -> None:
        """Copy one step's inputs, padded to `bb` rows of `T` tokens, to the device (asynchronously)."""
        B = len(slots)
        for s in set(slots):
            self.cache.zero_to(s, key_len)       # masked keys are read too: they must be finite
        done = self._staged[self._turn]
        if done is not None:
            done.synchronize()                   # this turn's host buffers were consumed
        inputs, longs, tree = self._buffers(bb, T)
        a = longs.numpy()
        n = bb * T
        tok, pos = a[:n].reshape(bb, T), a[n:2 * n].reshape(bb, T)
        if T == 1:                               # decode steps: no per-row loop
            tok[:B, 0] = [t[0] for t in tokens]
            pos[:B, 0] = [p[0] for p in positions]
        else:
            for b in range(B):
                k = len(tokens[b])
                p = list(positions[b])
                tok[b, :k], tok[b, k:] = tokens[b], 0
                pos[b, :k], pos[b, k:] = p, range(p[-1] + 1, p[-1] + 1 + T - k)
        tok[B:], pos[B:] = tok[0], pos[0]        # padding rows repeat row 0 ...
        rest = a[2 * n:]
        rest[:B], rest[bb:bb + B], rest[2 * bb:2 * bb + B] = slots, write_index, range(B)
        rest[B:bb], rest[bb + B:2 * bb], rest[2 * bb + B:] = slots[0], write_index[0], 0   # ... and write row 0's
        inputs.longs.copy_(longs, non_blocking=True)
        if inputs.tree is not None:
            t = tree.numpy()
            t[:] = False
            causal = torch.ones(T, T, dtype=torch.bool).tril().numpy()
            for b in range(bb):
                src = b if b < B else 0
                k = len(tokens[src])
                mask = None if trees is None else trees[src]
                t[b, :k, :k] = causal[:k, :k] if mask is None else mask.cpu().numpy()
                t[b, range(k, T), range(k, T)] = True       # a padding entry sees only itself
            inputs.tree.copy_(tree, non_blocking=True)
        if self._pinned:
            event = self._staged[self._turn] = torch.cuda.Event()
            event.record()
        self._turn = 1 - self._turn

    def _capture(self, bb: int, T: int, key_len: int) -> _Captured:
        """Warm up on a side stream (lazy init, compilation, cuBLAS workspaces), then capture.
        The warm-up runs compute the staged step for real: writing the same keys/values that the
        replay will, so capturing in the middle of decoding is harmless."""
        if not self.use_graphs:
            return _Captured(None, None, None)
        args = self._inputs[(bb, T)].args(key_len)
        side, current = self._side, torch.cuda.current_stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*args)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits, ids = self.fn(*args)
        return _Captured(graph, logits, ids)
