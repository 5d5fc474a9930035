"""The model runner: owns a model's KV cache and turns a batch description into one forward.

Callers say what to compute as `Row`s (a slot, its new tokens, their positions, optionally a draft
tree's mask); the runner reserves the entries, records their positions, builds the model's
`ForwardBatch` (padding rows to one width), runs it, and commits what stays. Nobody else builds
token, position or slot tensors. Plain and speculative decoding, the scheduler's chunked prefill,
the proposers' drafting and the tools all go through here; on CUDA one-token rows go through
captured CUDA graphs (`gpu/graphs.py`) when the model allows.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import InvalidParameterError
from ..kv.cache import KVCache
from ..kv.policies import KVPolicyConfig
from ..kv.policies.compressor import KVCompressor
from ..models.batch import ForwardBatch
from ..models.transformer import Transformer

if TYPE_CHECKING:
    from ..gpu.graphs import GraphDecoder

PREFILL_CHUNK = 256   # long prompts run in chunks: bounded activation memory (llama.cpp: n_ubatch)


@dataclass(frozen=True)
class Row:
    """One request's part of a forward: `tokens` appended to `slot`'s cached prefix, at RoPE
    positions `start, start + 1, ...` or at explicit `positions` (a draft tree's depths), attending
    causally among themselves or by `mask` `[n, n]` (True = may attend)."""
    slot: int
    tokens: Sequence[int]
    start: int = 0
    positions: Sequence[int] | None = None
    mask: torch.Tensor | None = None

    def position_list(self) -> list[int]:
        if self.positions is not None:
            return list(self.positions)
        return list(range(self.start, self.start + len(self.tokens)))


class ModelRunner:
    def __init__(self, model: Transformer, capacity: int | None = None, slots: int = 1, *,
                 cuda_graphs: bool | None = None, compile_graphs: bool = False,
                 kv_policy: KVPolicyConfig | None = None) -> None:
        """`cuda_graphs`: run decode steps and small draft trees through captured graphs (default:
        on CUDA; True elsewhere runs the same static step eagerly, for tests);
        `compile_graphs`: `torch.compile` what they capture (fused kernels; slow first steps);
        `kv_policy`: evict cache entries by this policy (`apply_kv_policy`, between steps)."""
        self.model = model
        self.cache: KVCache = model.new_cache(capacity, slots=slots)
        self._graphs: GraphDecoder | None = None
        self._use_graphs = model.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self._compile = compile_graphs
        self.kv: KVCompressor | None = None
        if kv_policy is not None:
            if kv_policy.policy.per_head and model.config.sliding_window is not None:
                raise InvalidParameterError(
                    f"kv policy {kv_policy.policy.name} keeps different entries per head, which sliding-window "
                    "models do not support yet (use streamingllm)")
            self.kv = KVCompressor(kv_policy, self.cache, model.attn_scale)
            # captured graphs neither call the query hook nor read per-head hidden entries
            self._use_graphs = False

    @property
    def device(self) -> torch.device:
        return self.model.device

    def length(self, slot: int = 0) -> int:
        return self.cache.length(slot)

    # ---- forwards -------------------------------------------------------------------------
    def forward(self, rows: list[Row], *, layers: Sequence[int] | None = None,
                last_only: bool = False) -> torch.Tensor:
        """One forward over `rows`; their entries stay in the cache (callers trim what they drop).
        Returns float32 logits `[B, T, V]` (row b's at `[:len(tokens)]`), or `[B, V]` at each
        row's last token with `last_only`."""
        cache = self.cache
        lens = [len(r.tokens) for r in rows]
        width = max(lens)
        if len(rows) > 1 and any(cache.length(r.slot) + width > cache.capacity for r in rows):
            return self._one_by_one(rows, layers, last_only)     # padding would not fit the context
        if layers is None and (graphs := self._graph_decoder()) is not None and \
                graphs.fits(len(rows), width, max(cache.length(r.slot) + width for r in rows)):
            return self._forward_graphs(graphs, rows, width, last_only)
        starts = [cache.reserve(r.slot, width) for r in rows]
        if len(rows) > 1 and width > 1:      # shorter rows read up to the longest (masked, never NaN)
            for r in rows:
                cache.zero_to(r.slot, max(starts) + width)
        tokens, positions, mask = self._layout(rows, width)
        self._record_positions(rows, starts, positions, width)
        padded = min(lens) < width
        batch = ForwardBatch(tokens.to(self.device), positions.to(self.device), [r.slot for r in rows], starts,
                             tree_mask=None if mask is None else mask.to(self.device), layers=layers,
                             valid=lens if padded and mask is None else None, last_only=last_only)
        observe = (self.kv is not None and self.kv.observes and layers is None
                   and self.kv.begin([r.slot for r in rows], starts, lens, [r.position_list() for r in rows]))
        if observe:
            self.model.query_hook = self.kv.observe
        try:
            logits = self.model(batch, cache)
        finally:
            if observe:
                self.model.query_hook = None
                self.kv.end()
        for r, n in zip(rows, lens):
            cache.commit(r.slot, width)
            if n < width:
                cache.trim(width - n, r.slot)          # padding leaves the cache
        if last_only:
            return logits[:, 0] if mask is None else logits[torch.arange(len(rows)), torch.tensor(lens) - 1]
        return logits

    def decode(self, slots: Sequence[int], tokens: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """One token per row (plain decoding, drafting steps): logits `[B, V]`."""
        return self.forward([Row(s, [t], p) for s, t, p in zip(slots, tokens, positions)], last_only=True)

    def extend(self, slot: int, tokens: Sequence[int], start: int, *, all_logits: bool = False,
               chunk: int = PREFILL_CHUNK) -> torch.Tensor:
        """Append a long run of tokens to one slot in chunks of `chunk` (bounded activation memory).
        Returns the last token's logits `[V]`, or every token's `[n, V]` with `all_logits`."""
        outs = []
        for lo in range(0, len(tokens), chunk):
            part = tokens[lo:lo + chunk]
            logits = self.forward([Row(slot, part, start + lo)], last_only=not all_logits)
            outs.append(logits[0])
        return torch.cat(outs) if all_logits else outs[-1]

    def apply_kv_policy(self, slots: Sequence[int], prefilling: Sequence[bool] | None = None) -> int:
        """Compress each of `slots` whose cache is over its budget (between forwards only: every
        entry must belong to a committed token). Returns how many were compressed."""
        if self.kv is None:
            return 0
        flags = prefilling or [False] * len(slots)
        return sum(self.kv.maintain(s, p) for s, p in zip(slots, flags))

    # ---- pieces ---------------------------------------------------------------------------
    def _one_by_one(self, rows: list[Row], layers: Sequence[int] | None, last_only: bool) -> torch.Tensor:
        outs = [self.forward([r], layers=layers, last_only=last_only)[0] for r in rows]
        if last_only:
            return torch.stack(outs)
        width = max(o.shape[0] for o in outs)
        return torch.stack([torch.cat([o, o.new_zeros(width - o.shape[0], o.shape[1])]) for o in outs])

    @staticmethod
    def _layout(rows: list[Row], width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Tokens and positions `[B, width]` (padding continues each row's positions) and, when
        any row is a tree, the masks `[B, width, width]` (a padding entry sees only itself)."""
        tok_rows, pos_rows = [], []
        for r in rows:
            n, pos = len(r.tokens), r.position_list()
            tok_rows.append([*r.tokens, *[0] * (width - n)])
            pos_rows.append(pos + list(range(pos[-1] + 1, pos[-1] + 1 + width - n)))
        mask = None
        if any(r.mask is not None for r in rows):
            mask = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)
            for b, r in enumerate(rows):
                n = len(r.tokens)
                mask[b, :n, :n] = r.mask.cpu() if r.mask is not None else torch.ones(n, n, dtype=torch.bool).tril()
        tokens, positions = torch.tensor(tok_rows, dtype=torch.long), torch.tensor(pos_rows, dtype=torch.long)
        return tokens, positions, mask

    def _record_positions(self, rows: list[Row], starts: list[int], positions: torch.Tensor, width: int) -> None:
        """Each new entry's RoPE position, beside its keys (masks and eviction read them)."""
        store = self.cache.positions          # host-side
        if len(rows) == 1:
            store[rows[0].slot, starts[0]:starts[0] + width] = positions[0]
            return
        slot_idx = torch.tensor([r.slot for r in rows])[:, None].expand(-1, width)
        idx = torch.tensor(starts)[:, None] + torch.arange(width)
        store[slot_idx, idx] = positions

    # ---- CUDA graphs ----------------------------------------------------------------------
    def _graph_decoder(self) -> GraphDecoder | None:
        if not self._use_graphs:
            return None
        if self._graphs is None:
            from ..gpu.graphs import GraphDecoder, supports
            if not supports(self.model):
                self._use_graphs = False
                return None
            self._graphs = GraphDecoder(self.model, self.cache, compile=self._compile)
        return self._graphs

    def _forward_graphs(self, graphs: GraphDecoder, rows: list[Row], width: int, last_only: bool) -> torch.Tensor:
        """`forward` through captured CUDA graphs (decode steps and small trees)."""
        cache = self.cache
        starts = [cache.reserve(r.slot, width) for r in rows]
        positions = [r.position_list() for r in rows]
        pad = [p + list(range(p[-1] + 1, p[-1] + 1 + width - len(p))) for p in positions]
        self._record_positions(rows, starts, torch.tensor(pad), width)
        logits = graphs.run([r.slot for r in rows], [r.tokens for r in rows], positions, starts,
                            [r.mask for r in rows])
        for r in rows:
            cache.commit(r.slot, width)
            if len(r.tokens) < width:
                cache.trim(width - len(r.tokens), r.slot)
        if last_only:
            return logits[torch.arange(len(rows)), torch.tensor([len(r.tokens) - 1 for r in rows])]
        return logits


def teacher_forced_logits(model: Transformer, ids: Sequence[int], layers: Sequence[int] | None = None) -> torch.Tensor:
    """Logits `[n, V]` after every token of `ids`, in one forward over a fresh cache (the reference
    the tests and calibrations compare against)."""
    runner = ModelRunner(model, len(ids), cuda_graphs=False)
    return runner.forward([Row(0, ids, 0)], layers=layers)[0]
