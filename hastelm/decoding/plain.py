"""Plain decoding: one forward of the pending token, one sampled token. The reference that every
other strategy is checked against."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..engine.runner import ModelRunner
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

    def step(self, runner: ModelRunner, seq: Sequence) -> StepOutcome:
        return self.step_batch(runner, [seq])[0]

    def step_batch(self, runner: ModelRunner, seqs: list[Sequence]) -> list[StepOutcome]:
        """One forward for many requests (continuous batching): row i is `seqs[i]`'s pending token."""
        logits = runner.decode([s.slot for s in seqs], [s.pending for s in seqs], [len(s.ids) - 1 for s in seqs])
        plain_greedy = [i for i, s in enumerate(seqs) if s.params.greedy and not s.params.adjusts_logits]
        picked = dict(zip(plain_greedy, greedy_tokens(logits[plain_greedy]))) if plain_greedy else {}
        return [StepOutcome([picked[i] if i in picked else s.sampler.sample(logits[i], s.ids)], [logits[i]])
                for i, s in enumerate(seqs)]

    def release(self, seq: Sequence) -> None:
        """Called when a request ends; plain decoding keeps nothing per request."""
