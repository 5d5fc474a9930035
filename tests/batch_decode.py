"""Decode many requests together, as the server's continuous batch does: every request in its own
cache slot, one `step_batch` forward per step for all that are still running. On a CPU a forward
costs about its weight traffic, so ten rows cost about two single-row steps: the float32 tests
decode their prompts this way instead of one after another."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hastelm.decoding.plain import StepOutcome
from hastelm.decoding.sampling import SamplingParams
from hastelm.decoding.sequence import Sequence

TREE_ROOM = 80      # cache entries beyond the longest output, for the draft trees being verified


@dataclass
class BatchRun:
    outputs: list[list[int]]    # each request's tokens, in the order of the prompts
    accepted: int               # draft tokens accepted, over all requests
    steps: int                  # per-request decode steps after the first token
    proposed: int = 0           # draft nodes verified, over all requests (0: no draft was ever verified)


def decode_batch(llm: Any, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 strategy: Any) -> BatchRun:
    """Each prompt prefilled on its own (`LLM.prefill`), then all decoded together with `strategy`."""
    params = params if isinstance(params, list) else [params] * len(prompts)
    cache = llm.model.new_cache(max(map(len, prompts)) + max(p.max_tokens for p in params) + TREE_ROOM,
                                slots=len(prompts))
    seqs = [llm.new_sequence(ids, p, slot=i, index=i) for i, (ids, p) in enumerate(zip(prompts, params))]
    firsts = [llm.prefill(s, cache) for s in seqs]
    return run_batch(llm, cache, seqs, firsts, strategy)


def shared_prompt_batch(llm: Any, ids: list[int], params: list[SamplingParams], strategy: Any) -> BatchRun:
    """Many requests with the same prompt (seeded samples): the prompt runs in one batched forward
    and each request samples its first token from its own row's logits, as `LLM.prefill` would."""
    n = len(params)
    cache = llm.model.new_cache(len(ids) + max(p.max_tokens for p in params) + TREE_ROOM, slots=n)
    dev = llm.model.device
    logits = llm.model(torch.tensor([ids] * n, device=dev), torch.arange(len(ids), device=dev).repeat(n, 1),
                       cache, slots=list(range(n)), last_only=True)[:, -1]
    seqs = [llm.new_sequence(ids, p, slot=i, index=i) for i, p in enumerate(params)]
    firsts = [StepOutcome([s.sampler.sample(logits[i], s.ids)], [logits[i]]) for i, s in enumerate(seqs)]
    return run_batch(llm, cache, seqs, firsts, strategy)


def run_batch(llm: Any, cache: Any, seqs: list[Sequence], firsts: list[StepOutcome], strategy: Any) -> BatchRun:
    run = BatchRun([[] for _ in seqs], 0, 0)
    active = []
    for s, first in zip(seqs, firsts):
        r = llm.advance(s, first, 0.0)
        run.outputs[s.index] += r.tokens
        if r.finish_reason is None:
            active.append(s)
    try:
        while active:
            outcomes = strategy.step_batch(llm.model, cache, active)
            run.accepted += sum(o.accepted for o in outcomes)
            run.proposed += sum(o.proposed for o in outcomes)
            run.steps += len(outcomes)
            results = [llm.advance(s, o, 0.0) for s, o in zip(active, outcomes)]
            for s, r in zip(active, results):
                run.outputs[s.index] += r.tokens
            active = [s for s, r in zip(active, results) if r.finish_reason is None]
    finally:
        for s in seqs:
            strategy.release(s)
    return run
