"""Decode steps replayed from CUDA graphs: one graph per (batch bucket, key-length bucket).

A 135M model's decode step is a few hundred small kernels; launched one by one from Python they
cost far more than the GPU's work. Each bucket's `StaticDecodeStep` is captured once (lazily, on
its first use, or all at once with `capture_all`) into static buffers and replayed: one launch.

Contract with the runner: `decode(slots, tokens, positions, write_index)` computes one new token
per row, writing its key/value at `write_index` of its slot and attending over `[0, write_index]`;
the caller owns the cache's bookkeeping (reserve, positions, commit). The decoder only makes the
key bucket's unused region finite (`KVCache.zero_to`), as the eager forward's reads need too.

Padding: a batch of B rows runs in the smallest bucket Bb >= B; rows B..Bb-1 repeat row 0 (its
token, position, slot and write index) and write row 0's own key/value (`src` = 0), so their cache
writes are bitwise duplicates of row 0's and need no scratch slot; their outputs are discarded.
Without CUDA (CPU tests) the same buffers and padding run the step eagerly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kv.cache import KVCache
from ..models.transformer import Transformer
from .static_step import StaticDecodeStep, supports

__all__ = ["GraphDecoder", "supports", "length_buckets"]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
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


class GraphDecoder:
    """One-token decode steps of `model` over `cache` through captured CUDA graphs."""

    ROWS = 5   # staged inputs: tokens, positions, slots, write index, src

    def __init__(self, model: Transformer, cache: KVCache, batch_buckets: tuple[int, ...] = BATCH_BUCKETS,
                 *, compile: bool = False, use_graphs: bool | None = None, warmup: int = 2) -> None:
        self.model, self.cache = model, cache
        self.device = model.device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self.step = StaticDecodeStep(model, cache)
        # torch.compile fuses norms, RoPE and SwiGLU; off by default: every bucket compiles on its
        # first use (tens of seconds each, minutes with autotuning) and fused bf16 rounding differs
        # from the eager forward's
        if compile:
            import torch._dynamo as dynamo
            n = len(batch_buckets) * len(length_buckets(cache.capacity)) + 8
            for name in ("recompile_limit", "cache_size_limit"):   # one compiled variant per bucket
                if hasattr(dynamo.config, name):
                    setattr(dynamo.config, name, max(getattr(dynamo.config, name), n))
            self.fn = torch.compile(self.step.__call__, mode="max-autotune-no-cudagraphs", dynamic=False)
        else:
            self.fn = self.step
        self.batch_buckets = sorted(set(batch_buckets))
        self.key_buckets = length_buckets(cache.capacity)
        self.warmup = warmup
        top = self.batch_buckets[-1]
        # one contiguous [ROWS, bb] input buffer per batch bucket, so a step's inputs are one plain
        # host-to-device copy and every field a contiguous row (index ops would copy strided ones)
        self.inputs = {bb: torch.zeros(self.ROWS, bb, dtype=torch.long, device=self.device)
                       for bb in self.batch_buckets}
        pin = self.device.type == "cuda"
        # two pinned staging buffers, each reused only after its last copy finished (an event)
        self._staging = [torch.zeros(self.ROWS * top, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self._copied = [torch.cuda.Event() if pin else None for _ in range(2)]
        self._turn = 0
        self._captured: dict[tuple[int, int], _Captured] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._side = torch.cuda.Stream(self.device) if self.use_graphs else None

    # ---- public -----------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], positions: list[int],
               write_index: list[int]) -> torch.Tensor:
        """Float32 logits `[B, V]` on the device, rows in the given order (a fresh tensor)."""
        out = [self._run(*part)[0].clone() for part in self._parts(slots, tokens, positions, write_index)]
        return out[0] if len(out) == 1 else torch.cat(out)

    @torch.inference_mode()
    def decode_greedy(self, slots: list[int], tokens: list[int], positions: list[int],
                      write_index: list[int]) -> list[int]:
        """Argmax token ids, computed on the device and read with one host sync."""
        parts = self._parts(slots, tokens, positions, write_index)
        if len(parts) == 1:
            return self._run(*parts[0])[1].tolist()
        return torch.cat([self._run(*part)[1].clone() for part in parts]).tolist()   # parts may share a graph

    @torch.inference_mode()
    def capture_all(self) -> None:
        """Capture every bucket now (start-up warm-up). The warm-up runs write one entry at index 0
        of an empty slot, so call this only while some slot holds nothing (e.g. before serving)."""
        empty = next((s for s in range(self.cache.num_slots) if self.cache.lengths[s] == 0), None)
        if empty is None:
            raise RuntimeError("capture_all needs an empty cache slot for its warm-up writes")
        for key_len in self.key_buckets:
            for bb in self.batch_buckets:
                if (bb, key_len) not in self._captured:
                    self._stage([empty], [0], [0], [0], bb, key_len)
                    self._captured[(bb, key_len)] = self._capture(bb, key_len)

    def bucket(self, batch: int, max_write: int) -> tuple[int, int]:
        """The (batch, key length) bucket that serves `batch` rows writing up to index `max_write`."""
        bb = next(b for b in self.batch_buckets if b >= batch)
        if max_write >= self.cache.capacity:
            raise ValueError(f"write index {max_write} is outside the cache's {self.cache.capacity} entries")
        return bb, next(n for n in self.key_buckets if n > max_write)

    # ---- pieces -----------------------------------------------------------------------------
    def _parts(self, slots: list[int], tokens: list[int], positions: list[int],
               write_index: list[int]) -> list[tuple[list[int], ...]]:
        """More rows than the largest bucket run as several steps (rows never depend on each other)."""
        if not (len(slots) == len(tokens) == len(positions) == len(write_index)) or not slots:
            raise ValueError("decode needs one slot, token, position and write index per row")
        if max(positions) >= self.step.max_positions or min(positions) < 0:
            raise ValueError(f"positions must lie in [0, {self.step.max_positions})")
        top = self.batch_buckets[-1]
        return [(slots[i:i + top], tokens[i:i + top], positions[i:i + top], write_index[i:i + top])
                for i in range(0, len(slots), top)]

    def _run(self, slots: list[int], tokens: list[int], positions: list[int],
             write_index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        B = len(slots)
        bb, key_len = self.bucket(B, max(write_index))
        self._stage(slots, tokens, positions, write_index, bb, key_len)
        entry = self._captured.get((bb, key_len))
        if entry is None:
            entry = self._captured[(bb, key_len)] = self._capture(bb, key_len)
        if entry.graph is None:
            logits, ids = self.fn(*self._args(bb, key_len))
        else:
            entry.graph.replay()
            logits, ids = entry.logits, entry.ids
        # outputs are read (cloned or synced) before any other replay: graphs share one memory
        # pool, so another bucket's graph may reuse this one's output memory as scratch
        return logits[:B], ids[:B]

    def _stage(self, slots: list[int], tokens: list[int], positions: list[int], write_index: list[int],
               bb: int, key_len: int) -> None:
        """Copy one step's inputs, padded to `bb` rows, into the device buffer (asynchronously)."""
        B = len(slots)
        for s in set(slots):
            self.cache.zero_to(s, key_len)       # masked keys are read too: they must be finite
        i, self._turn = self._turn, 1 - self._turn
        if self._copied[i] is not None:
            self._copied[i].synchronize()        # this buffer's previous copy has been consumed
        stage = self._staging[i][:self.ROWS * bb].view(self.ROWS, bb)
        a = stage.numpy()
        a[0, :B], a[1, :B], a[2, :B], a[3, :B] = tokens, positions, slots, write_index
        a[4, :B] = range(B)
        a[:4, B:bb] = a[:4, :1]                  # padding rows repeat row 0 ...
        a[4, B:bb] = 0                           # ... and write row 0's key/value
        self.inputs[bb].copy_(stage, non_blocking=True)
        if self._copied[i] is not None:
            self._copied[i].record()

    def _args(self, bb: int, key_len: int) -> tuple:
        x = self.inputs[bb]
        return x[0], x[1], x[2], x[3], key_len, x[4]

    def _capture(self, bb: int, key_len: int) -> _Captured:
        """Warm up on a side stream (lazy init, compilation, cuBLAS workspaces), then capture.
        The warm-up runs compute the staged step for real: writing the same keys/values that the
        replay will, so capturing in the middle of decoding is harmless."""
        if not self.use_graphs:
            return _Captured(None, None, None)
        args = self._args(bb, key_len)
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
