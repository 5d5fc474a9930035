"""Decode many requests together through `LLM.generate`, as the server's continuous batch does:
every request in its own cache slot, one `step_batch` forward per step for all still running. On
a CPU a forward costs about its weight traffic, so ten rows cost about two single-row steps: the
float32 tests decode their prompts this way instead of one after another."""
from __future__ import annotations

from dataclasses import dataclass

from hastelm import LLM
from hastelm.decoding.choices import Strategy
from hastelm.decoding.sampling import SamplingParams


@dataclass
class BatchRun:
    outputs: list[list[int]]    # each request's tokens, in the order of the prompts
    accepted: int               # draft tokens accepted, over all requests
    steps: int                  # per-request decode steps after the first token
    proposed: int = 0           # draft nodes verified, over all requests (0: no draft was ever verified)


def decode_batch(llm: LLM, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 strategy: Strategy) -> BatchRun:
    """All prompts through one `generate` call (continuous batching) with `strategy`. The prefix
    cache is cleared first, so each prompt is computed from scratch."""
    llm.clear_prefix_cache()
    done = llm.generate(prompts, params, speculative=strategy, progress=False)
    return BatchRun([c.token_ids for c in done], sum(c.accepted for c in done), sum(c.steps for c in done),
                    sum(c.proposed for c in done))
