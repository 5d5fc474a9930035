"""Plain decoding: one forward of the pending token, one sampled token. The reference that every
other strategy is checked against."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..kv.cache import KVCache
from ..models.transformer import Transformer
from .sampling import greedy_tokens
from .sequence import Sequence


@dataclass
class StepOutcome:
    tokens: list[int]                       # new tokens, in order (at least one)
    logits: list[torch.Tensor] = field(default_factory=list)   # the logits each was sampled from
    accepted: int = 0
    proposed: int = 0


class PlainDecoding:
    name = "plain"

    def step(self, model: Transformer, cache: KVCache, seq: Sequence) -> StepOutcome:
        pos = len(seq.ids) - 1
        tokens = torch.tensor([[seq.pending]], device=model.device)
        positions = torch.tensor([[pos]], device=model.device)
        logits = model(tokens, positions, cache, slots=[seq.slot])[0, -1]
        return StepOutcome([seq.sampler.sample(logits, seq.ids)], [logits])

    def step_batch(self, model: Transformer, cache: KVCache, seqs: list[Sequence]) -> list[StepOutcome]:
        """One forward for many requests (continuous batching): row i is `seqs[i]`'s pending token."""
        dev = model.device
        tokens = torch.tensor([[s.pending] for s in seqs], device=dev)
        positions = torch.tensor([[len(s.ids) - 1] for s in seqs], device=dev)
        logits = model(tokens, positions, cache, slots=[s.slot for s in seqs])[:, -1]
        plain_greedy = [i for i, s in enumerate(seqs) if s.params.greedy and not s.params.adjusts_logits]
        picked = dict(zip(plain_greedy, greedy_tokens(logits[plain_greedy]))) if plain_greedy else {}
        return [StepOutcome([picked[i] if i in picked else s.sampler.sample(logits[i], s.ids)], [logits[i]])
                for i, s in enumerate(seqs)]

    def release(self, seq: Sequence) -> None:
        """Called when a request ends; plain decoding keeps nothing per request."""
