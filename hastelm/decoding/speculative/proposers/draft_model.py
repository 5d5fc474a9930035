"""Speculative sampling with a draft model (SpS: Leviathan et al., 2023; Chen et al., 2023): a
smaller model with the same tokenizer drafts a chain; it keeps its own KV cache per slot, rolled
back with `trim` to what the target accepted, and reused across requests by common prefix.
"""
from __future__ import annotations

import torch

from ....errors import InvalidParameterError
from ....formats.tokenizer import Tokenizer
from ....engine.runner import ModelRunner, Row
from ....models.transformer import Transformer
from ...sequence import Sequence, common_prefix
from ..tree import DraftTree
from .base import Budget, Feedback
from .chain import draft_chains

CHUNK = 512          # catch-up forwards over long prompts run in chunks, like prefill
PROBE = "def f(x):\n    return x * 2  # Héllo, 世界!"


def check_compatible(target: Tokenizer, target_vocab: int, draft: Tokenizer, draft_vocab: int, name: str) -> None:
    """A draft must share the target's tokenizer: same ids for the same text, same logits width."""
    if target_vocab != draft_vocab or target.encode(PROBE) != draft.encode(PROBE):
        raise InvalidParameterError(f"draft model {name} does not share the target model's tokenizer")


class DraftModel:
    name = "draft"
    free = False
    prior_alpha = 0.5      # no calibration: a draft model's acceptance is measured as it runs

    def __init__(self, model: Transformer) -> None:
        self.model = model
        self.runner: ModelRunner | None = None     # the draft's own cache: one slot per target slot
        self.held: dict[int, list[int]] = {}       # per slot: the ids the draft cache holds

    def _ensure_runner(self, slots: int, capacity: int) -> ModelRunner:
        runner = self.runner
        if runner is None or runner.cache.capacity < capacity or runner.cache.num_slots < slots:
            capacity = max(capacity, runner.cache.capacity if runner else 0)
            slots = max(slots, runner.cache.num_slots if runner else 0)
            runner = self.runner = ModelRunner(self.model, capacity, slots)
            self.held = {}
        return runner

    def propose(self, seq: Sequence, budget: Budget) -> DraftTree | None:
        return self.propose_batch([(seq, budget)])[0]

    def propose_batch(self, requests: list[tuple[Sequence, Budget]]) -> list[DraftTree | None]:
        """Each request's draft cache catches up with its ids (cut back to the common prefix), then
        the chains are drafted together, one batched draft forward per token."""
        out: list[DraftTree | None] = [None] * len(requests)
        todo = [i for i, (_, b) in enumerate(requests) if b.nodes > 0 and b.depth > 0]
        if not todo:
            return out
        lengths = [min(requests[i][1].nodes, requests[i][1].depth) for i in todo]
        seqs = [requests[i][0] for i in todo]
        limit = self.model.config.max_position_embeddings
        need = max(len(s.ids) + n + 1 for s, n in zip(seqs, lengths))
        target = next((requests[i][1].runner for i in todo if requests[i][1].runner is not None), None)
        capacity = min(max(need, target.cache.capacity if target else 0), limit)
        runner = self._ensure_runner(max(s.slot for s in seqs) + 1, capacity)
        cache = runner.cache
        keep = [(r, s) for r, (s, n) in enumerate(zip(seqs, lengths)) if len(s.ids) + n <= cache.capacity]
        if not keep:
            return out
        pending = []
        for _, seq in keep:
            common = common_prefix(self.held.get(seq.slot, []), seq.ids[:-1])
            cache.trim(cache.length(seq.slot) - common, seq.slot)
            pending.append((seq.slot, seq.ids[common:], common))
        firsts = self._catch_up(runner, pending)
        seqs = [s for _, s in keep]
        lengths = [lengths[r] for r, _ in keep]
        roots = [len(s.ids) - 1 for s in seqs]

        def advance(rows: list[int], tokens: list[int], i: int) -> torch.Tensor:
            return runner.decode([seqs[r].slot for r in rows], tokens, [roots[r] + 1 + i for r in rows])

        trees = draft_chains(seqs, lengths, firsts, advance)
        for (r, seq), tree in zip(keep, trees):
            self.held[seq.slot] = seq.ids + tree.tokens[:-1]
            out[todo[r]] = tree
        return out

    def _catch_up(self, runner: ModelRunner, pending: list[tuple[int, list[int], int]]) -> torch.Tensor:
        """Run each (slot, ids, start) into the draft cache; the draft's predictions after each one's
        last id `[B, V]`. Short catch-ups (the tokens accepted last step) share one padded forward."""
        if len(pending) > 1 and all(len(ids) <= CHUNK for _, ids, _ in pending):
            return runner.forward([Row(slot, ids, start) for slot, ids, start in pending], last_only=True)
        return torch.stack([runner.extend(slot, ids, start, chunk=CHUNK) for slot, ids, start in pending])

    def update(self, seq: Sequence, feedback: Feedback) -> None:
        """The draft cache is rolled back lazily, at the next proposal, to the common prefix."""

    def release(self, seq: Sequence) -> None:
        """The draft cache stays: the next request in this slot reuses its common prefix."""
