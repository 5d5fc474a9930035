"""Drafting a chain token by token with a model (a draft model, or the target with layers skipped).

Greedy requests draft the argmax (a deterministic chain). Sampling requests sample each draft token
from the draft's own distribution q, processed by the request's sampler chain (temperature, top-k,
penalties...), and attach q so verification can use the Leviathan/Chen rule. Draft randomness comes
from a generator of its own, seeded from the request's, so seeded requests stay reproducible.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ...sequence import Sequence
from ..tree import DraftTree

RNG_KEY = "draft_rng"


def draft_chain(seq: Sequence, length: int, logits: torch.Tensor,
                advance: Callable[[int, int], torch.Tensor]) -> DraftTree:
    """`logits`: the draft's prediction after the pending token; `advance(token, i)` runs draft token
    i through the draft model and returns its prediction for the next one."""
    params, sampler = seq.params, seq.sampler
    tokens: list[int] = []
    qs: list[torch.Tensor] = []
    for i in range(length):
        if params.greedy:
            tok = int((sampler.process(logits, seq.ids + tokens) if params.has_penalties else logits).argmax())
        else:
            q = sampler.probs(logits, seq.ids + tokens)
            tok = int(torch.multinomial(q, 1, generator=_rng(seq)))
            qs.append(q)
        tokens.append(tok)
        if i + 1 < length:
            logits = advance(tok, i)
    return DraftTree.chain(tokens, torch.stack(qs) if qs else None)


def _rng(seq: Sequence) -> torch.Generator:
    rng = seq.strategy_state.get(RNG_KEY)
    if rng is None:
        seed = int(torch.randint(0, 2**62, (), generator=seq.sampler.generator))
        rng = seq.strategy_state[RNG_KEY] = torch.Generator().manual_seed(seed)
    return rng
