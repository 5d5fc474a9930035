"""Greedy speculative decoding is token-identical to plain greedy decoding, on the real default model
in float32, for every proposer: 10 prompts x 256 new tokens each, decoded together in one continuous
batch (one verification forward for all draft trees per step), plus one prompt alone.

A forward over many tokens and one over a single token may differ in the last bits, so where the
two outputs part, the test shows that the target's two candidate tokens are tied there (logit gap
below 1e-4 in a fresh forward) instead of loosening the comparison.

Proposers run at a fixed tree size (`NAME@N`): the adaptive controller may decide that speculation
does not pay on this machine and decode plainly, which would test nothing.

The default fast CPU mode is checked too, and there the outputs must be identical outright: its
kernels give every row of a forward the arithmetic of a one-token step.
"""
from __future__ import annotations

import pytest
import torch

from hastelm.decoding.plain import PlainDecoding
from hastelm.decoding.sampling import SamplingParams
from hastelm.decoding.speculative import Controller, SpeculativeDecoding
from hastelm.decoding.speculative.proposers.draft_model import DraftModel

NEW_TOKENS = 256
TIE = 1e-4

CODE = [
    'def is_palindrome(text: str) -> bool:\n    """Return True if text reads the same backwards, '
    'ignoring case and spaces."""\n',
    'from typing import List\n\n\ndef running_max(numbers: List[int]) -> List[int]:\n    """Return the '
    'running maximum of the list.\n    >>> running_max([1, 3, 2, 5])\n    [1, 3, 3, 5]\n    """\n',
    "class Stack:\n    \"\"\"A last-in first-out stack with push, pop and peek.\"\"\"\n\n    def __init__(self):\n",
    "# Read a CSV file and print the sum of the 'amount' column\nimport csv\n\n",
]
CHAT = [
    "Summarize this passage in two sentences: The city council met on Tuesday to discuss the new "
    "bicycle lanes. Residents praised the safer routes to school, while shop owners worried about "
    "losing parking spaces. The council agreed to review the plan in six months.",
    "Answer from the context. Context: Marie Curie was born in Warsaw in 1867. She won the Nobel "
    "Prize in Physics in 1903 and in Chemistry in 1911. Question: In which city was she born?",
    "A farmer has 12 cows and buys 7 more, then sells 5. How many cows does he have? Explain step by step.",
    "Translate into French: The weather is nice today, so we are going to the park.",
    "Write a short story about a robot who learns to paint.",
    "What are three tips for staying focused while studying?",
]


@pytest.fixture(scope="module")
def prompts(llm_f32) -> list[list[int]]:
    chat = [llm_f32.chat_prompt([{"role": "user", "content": c}]) for c in CHAT]
    return [llm_f32.encode_prompt(c) for c in CODE] + chat


PARAMS = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)


def decode_all(llm, prompts: list[list[int]], strategy) -> tuple[list[list[int]], int, int]:
    """All prompts decoded together, one `step_batch` per step (the server's continuous batch):
    (outputs, accepted draft tokens, steps)."""
    cache = llm.model.new_cache(max(map(len, prompts)) + NEW_TOKENS + 80, slots=len(prompts))
    seqs = [llm.new_sequence(ids, PARAMS, slot=i, index=i) for i, ids in enumerate(prompts)]
    outs: list[list[int]] = [[] for _ in prompts]
    accepted = steps = 0
    active = []
    for s in seqs:
        r = llm.advance(s, llm.prefill(s, cache=cache, reuse_prefix=False), 0.0)
        outs[s.index] += r.tokens
        active.append(s)
    try:
        while active:
            outcomes = strategy.step_batch(llm.model, cache, active)
            accepted += sum(o.accepted for o in outcomes)
            steps += len(outcomes)
            results = [llm.advance(s, o, 0.0) for s, o in zip(active, outcomes)]
            for s, r in zip(active, results):
                outs[s.index] += r.tokens
            active = [s for s, r in zip(active, results) if r.finish_reason is None]
    finally:
        for s in seqs:
            strategy.release(s)
    return outs, accepted, steps


@pytest.fixture(scope="module")
def references(llm_f32, prompts) -> list[list[int]]:
    """Plain greedy outputs, all prompts decoded together (one batched plain step per token)."""
    return decode_all(llm_f32, prompts, PlainDecoding())[0]


def logit_gap(llm, ids: list[int], a: int, b: int) -> float:
    """|logit(a) - logit(b)| for the token after `ids`, from a fresh cache-free forward."""
    cache = llm.model.new_cache(len(ids) + 1)
    dev = llm.model.device
    logits = llm.model(torch.tensor([ids], device=dev), torch.arange(len(ids), device=dev)[None], cache,
                       last_only=True)[0, -1]
    return abs(float(logits[a] - logits[b]))


def assert_same_or_tied(llm, prompts, references, outputs) -> int:
    """Every output equals its reference up to the first divergence, which must be a tie.
    Returns how many tokens were compared."""
    compared = 0
    for ids, ref, out in zip(prompts, references, outputs):
        assert len(out) == len(ref) == NEW_TOKENS
        diff = next((i for i, (a, b) in enumerate(zip(ref, out)) if a != b), None)
        if diff is None:
            compared += len(ref)
            continue
        gap = logit_gap(llm, ids + ref[:diff], ref[diff], out[diff])
        assert gap < TIE, f"token {diff}: {ref[diff]} vs {out[diff]} with logit gap {gap:.2e} is not a tie"
        compared += diff
    return compared


def check_strategy(llm, prompts, references, name: str, min_accepted: float, alone: bool = False) -> None:
    strategy = llm.strategy(name)
    outputs, accepted, steps = decode_all(llm, prompts, strategy)
    compared = assert_same_or_tied(llm, prompts, references, outputs)
    assert compared >= 0.8 * NEW_TOKENS * len(prompts)     # ties are rare, not the rule
    # the drafts were really verified and accepted: the test exercised speculation
    assert accepted / steps >= min_accepted, f"{strategy.name}: {accepted / steps:.2f} accepted per step"
    if alone:   # one request through the public API (a batch of one) gives the same tokens
        single = llm.generate([prompts[0]], PARAMS, speculative=name)[0].token_ids
        assert_same_or_tied(llm, prompts[:1], references[:1], [single])


@pytest.mark.parametrize("name, min_accepted", [("pld@8", 0.3), ("recycling@8", 0.3), ("lookahead@8", 0.3)])
def test_greedy_free_proposers_match_plain(llm_f32, prompts, references, name, min_accepted):
    check_strategy(llm_f32, prompts, references, name, min_accepted)


def test_greedy_auto_controller_matches_plain(llm_f32, prompts, references):
    # the controller only picks among the proposers verified above on all 10 prompts; 4 suffice
    check_strategy(llm_f32, prompts[:4], references[:4], "auto", 0.0, alone=True)


def test_greedy_layerskip_matches_plain(llm_f32, prompts, references):
    check_strategy(llm_f32, prompts, references, "layerskip@2", 0.2)


def test_greedy_draft_model_matches_plain(llm_f32, llm_fast, prompts, references):
    """The draft is the same network in the packed int4 mode: cheap, close, not identical."""
    strategy = SpeculativeDecoding("draft-int4", [DraftModel(llm_fast.model)], Controller(fixed=4))
    outputs, accepted, steps = decode_all(llm_f32, prompts, strategy)
    assert assert_same_or_tied(llm_f32, prompts, references, outputs) >= 0.8 * NEW_TOKENS * len(prompts)
    assert accepted / steps >= 0.5


# ----------------------------------------------------------------------------- the fast CPU mode

@pytest.fixture(scope="module")
def fast_references(llm_fast, prompts) -> list[list[int]]:
    if not llm_fast.model.decode_kernel:
        pytest.skip("needs hastelm's CPU kernels (the bit-exact per-row arithmetic)")
    return decode_all(llm_fast, prompts[FAST], PlainDecoding())[0]


FAST = slice(2, 6)      # two code and two chat prompts: the float32 tests above cover all ten


@pytest.mark.parametrize("name", ["pld@8", "recycling@8", "lookahead@8", "layerskip@2", "auto"])
def test_fast_mode_speculation_is_bit_exact(llm_fast, prompts, fast_references, name):
    """In the default fast CPU mode every row of a forward (a decode step, a prompt-chunk token, a
    draft-tree node) runs the same arithmetic: batch-independent matmul kernels and one-token
    attention over exactly the row's visible keys. Speculation then reproduces plain decoding
    token for token, with no tie allowance, here as in float32."""
    strategy = llm_fast.strategy(name)
    outputs, accepted, steps = decode_all(llm_fast, prompts[FAST], strategy)
    assert outputs == fast_references
    if name != "auto":      # fixed tree sizes: drafts were verified and accepted
        assert accepted / steps >= 0.2, f"{name}: {accepted / steps:.2f} accepted per step"
    single = llm_fast.generate([prompts[FAST][0]], PARAMS, speculative=name)[0].token_ids
    assert list(single) == fast_references[0]
