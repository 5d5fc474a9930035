"""Under sampling, speculative decoding draws from exactly plain decoding's distribution.

On the real default model (float32), the first three generated tokens (top-k 2, a repetition
penalty so that the history along a tree path matters) have at most 8 outcomes whose exact
probabilities under plain sampling are computed by enumeration with cache-free forwards. Many
seeded speculative runs are then compared with them by a chi-square test; the test fails when the
p-value is below 1e-3, so a correct implementation fails it with probability 0.001.

Two acceptance rules are exercised: deterministic multi-child trees (Token Recycling, the
SpecInfer/EAGLE recursive rule) and sampled draft chains with probabilities (a draft model: the
same weights in the packed int4 mode, so drafts are good but not perfect; Leviathan/Chen rule).
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from batch_decode import decode_batch
from hastelm.decoding.sampling import Sampler, SamplingParams
from hastelm.engine.runner import teacher_forced_logits
from hastelm.decoding.speculative import Controller, SpeculativeDecoding
from hastelm.decoding.speculative.proposers.draft_model import DraftModel

SAMPLES = 400
BATCH = 50
ALPHA = 1e-3
PROMPT = "My favourite animal is the"


def params(seed: int | None = None) -> SamplingParams:
    return SamplingParams(temperature=1.0, top_k=2, repetition_penalty=1.3, max_tokens=3,
                          ignore_eos=True, seed=seed)


def exact_distribution(llm, ids: list[int]) -> dict[tuple[int, ...], float]:
    """P(first 3 tokens) under plain sampling, by enumerating the top-2 support."""
    sampler = Sampler(params(0), len(ids))

    def probs(context: list[int]) -> torch.Tensor:
        logits = teacher_forced_logits(llm.model, context)[-1]
        return sampler.probs(logits, context)

    out = {(): 1.0}
    for _ in range(3):
        nxt = {}
        for prefix, p in out.items():
            q = probs(ids + list(prefix))
            for tok in torch.nonzero(q).flatten().tolist():
                nxt[prefix + (tok,)] = p * float(q[tok])
        out = nxt
    return out


def chi_square_pvalue(counts: dict[tuple[int, ...], int], expected: dict[tuple[int, ...], float], n: int) -> float:
    assert set(counts) <= set(expected), "an outcome plain sampling cannot produce"
    cells = sorted(expected, key=expected.get)
    # pool the rarest cells so that every expected count is at least 5 (chi-square validity)
    groups: list[list[tuple[int, ...]]] = [[]]
    for c in cells:
        groups[-1].append(c)
        if sum(expected[x] for x in groups[-1]) * n >= 5:
            groups.append([])
    if not groups[-1]:
        groups.pop()
    elif len(groups) > 1:
        groups[-2] += groups.pop()
    stat = 0.0
    for g in groups:
        e = n * sum(expected[x] for x in g)
        o = sum(counts.get(x, 0) for x in g)
        stat += (o - e) ** 2 / e
    df = len(groups) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


@pytest.fixture(scope="module")
def exact(llm_f32):
    return exact_distribution(llm_f32, llm_f32.encode_prompt(PROMPT))


def sample_counts(llm, strategy) -> dict[tuple[int, ...], int]:
    """Outcomes of SAMPLES seeded requests, decoded in continuous batches of BATCH (each request
    keeps its own random generator, so batching does not change what it draws). Successive
    batches, as successive requests would, find what earlier ones taught the proposer."""
    ids = llm.encode_prompt(PROMPT)
    counts: Counter[tuple[int, ...]] = Counter()
    accepted = 0
    for start in range(0, SAMPLES, BATCH):
        run = decode_batch(llm, [ids] * BATCH, [params(seed) for seed in range(start, start + BATCH)], strategy)
        accepted += run.accepted
        counts.update(tuple(out) for out in run.outputs)
    assert accepted > SAMPLES // 4, "drafts were hardly ever accepted: speculation was not exercised"
    return counts


def test_chi_square_helper_detects_a_wrong_distribution():
    expected = {(0,): 0.5, (1,): 0.3, (2,): 0.2}
    assert chi_square_pvalue({(0,): 200, (1,): 120, (2,): 80}, expected, 400) > 0.5
    assert chi_square_pvalue({(0,): 260, (1,): 80, (2,): 60}, expected, 400) < ALPHA


def test_sampling_with_recycling_trees_matches_plain(llm_f32, exact):
    counts = sample_counts(llm_f32, llm_f32.strategy("recycling@6"))
    assert chi_square_pvalue(counts, exact, SAMPLES) > ALPHA


def test_sampling_with_draft_model_probabilities_matches_plain(llm_f32, llm_fast, exact):
    strategy = SpeculativeDecoding("draft-int4", [DraftModel(llm_fast.model)], Controller(fixed=2))
    counts = sample_counts(llm_f32, strategy)
    assert chi_square_pvalue(counts, exact, SAMPLES) > ALPHA
