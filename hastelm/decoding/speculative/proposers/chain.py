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


def draft_chains(seqs: list[Sequence], lengths: list[int], logits: torch.Tensor,
                 advance: Callable[[list[int], list[int], int], torch.Tensor]) -> list[DraftTree]:
    """Chains for several requests drafted together: `logits` `[B, V]` are the draft's predictions
    after each pending token; `advance(rows, tokens, i)` runs draft token i of the requests `rows`
    (indices into `seqs`) through the draft model as one batch and returns their predictions
    `[len(rows), V]`. A request leaves the batch once its chain has `lengths[r]` tokens."""
    tokens: list[list[int]] = [[] for _ in seqs]
    qs: list[list[torch.Tensor]] = [[] for _ in seqs]
    rows = [r for r, n in enumerate(lengths) if n > 0]
    current = {r: logits[r] for r in rows}
    for i in range(max(lengths, default=0)):
        for r in rows:
            seq = seqs[r]
            if seq.params.greedy:
                lg = current[r]
                tok = int((seq.sampler.process(lg, seq.ids + tokens[r]) if seq.params.adjusts_logits else lg).argmax())
            else:
                q = seq.sampler.probs(current[r], seq.ids + tokens[r])
                tok = int(torch.multinomial(q, 1, generator=_rng(seq)))
                qs[r].append(q)
            tokens[r].append(tok)
        rows = [r for r in rows if len(tokens[r]) < lengths[r]]
        if not rows:
            break
        current = dict(zip(rows, advance(rows, [tokens[r][-1] for r in rows], i)))
    return [DraftTree.chain(t, torch.stack(q) if q else None) for t, q in zip(tokens, qs)]


def _rng(seq: Sequence) -> torch.Generator:
    rng = seq.strategy_state.get(RNG_KEY)
    if rng is None:
        seed = int(torch.randint(0, 2**62, (), generator=seq.sampler.generator))
        rng = seq.strategy_state[RNG_KEY] = torch.Generator().manual_seed(seed)
    return rng
