"""Greedy speculative decoding is token-identical to plain greedy decoding on the real default
model, for every proposer, with the prompts decoded together in one continuous batch (one
verification forward for all draft trees per step) and one prompt alone through the public API.

Two numeric modes:
- the default fast CPU mode, 10 prompts x 256 new tokens, identical outright: its kernels give
  every row of a forward (a decode step, a prompt-chunk token, a draft-tree node) the arithmetic of
  a one-token step, so there is no rounding difference for a tie to flip;
- float32 through torch's own ops (the path a GPU runs), 5 of the prompts x 96 new tokens and
  smaller trees (float32 verification is compute-bound on this CPU). A forward over
  many tokens and one over a single token may differ in the last bits there, so where the two
  outputs part, the test shows that the target's two candidate tokens are tied (logit gap below
  1e-4 in a fresh forward) instead of loosening the comparison.

Proposers run at a fixed tree size (`NAME@N`): the adaptive controller may decide that speculation
does not pay on this machine and decode plainly, which would test nothing. The `auto` tests, with
the adaptive controller, also require that drafts were verified and some accepted over their
prompts (`assert_speculated`): a controller that never speculated would pass the identity alone.
"""
from __future__ import annotations

import pytest
import torch

from batch_decode import decode_batch
from hastelm.decoding.plain import PlainDecoding
from hastelm.decoding.sampling import SamplingParams
from hastelm.decoding.speculative import Controller, SpeculativeDecoding
from hastelm.decoding.speculative.proposers.draft_model import DraftModel
from hastelm.engine.runner import teacher_forced_logits

NEW_TOKENS = 256        # fast mode
NEW_TOKENS_F32 = 96     # float32: about five times the cost per token on this CPU
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
PARAMS_F32 = SamplingParams(temperature=0, max_tokens=NEW_TOKENS_F32, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts_f32(prompts) -> list[list[int]]:
    return prompts[::2]     # two code, three chat


@pytest.fixture(scope="module")
def references(llm_f32, prompts_f32) -> list[list[int]]:
    """Plain greedy float32 outputs, all prompts decoded together (one batched plain step per token)."""
    return decode_batch(llm_f32, prompts_f32, PARAMS_F32, PlainDecoding()).outputs


def logit_gap(llm, ids: list[int], a: int, b: int) -> float:
    """|logit(a) - logit(b)| for the token after `ids`, from a fresh cache-free forward."""
    logits = teacher_forced_logits(llm.model, ids)[-1]
    return abs(float(logits[a] - logits[b]))


def assert_same_or_tied(llm, prompts, references, outputs) -> int:
    """Every output equals its reference up to the first divergence, which must be a tie.
    Returns how many tokens were compared."""
    compared = 0
    for ids, ref, out in zip(prompts, references, outputs):
        assert len(out) == len(ref) == NEW_TOKENS_F32
        diff = next((i for i, (a, b) in enumerate(zip(ref, out)) if a != b), None)
        if diff is None:
            compared += len(ref)
            continue
        gap = logit_gap(llm, ids + ref[:diff], ref[diff], out[diff])
        assert gap < TIE, f"token {diff}: {ref[diff]} vs {out[diff]} with logit gap {gap:.2e} is not a tie"
        compared += diff
    return compared


def assert_speculated(name: str, accepted: int, proposed: int) -> None:
    """Drafts were verified and some of them accepted: the run exercised speculation, not only
    plain steps (which give the same tokens)."""
    assert proposed > 0, f"{name}: no draft was ever verified (every step was plain)"
    assert accepted > 0, f"{name}: {proposed} draft nodes verified, none accepted"


def check_strategy(llm, prompts, references, name: str, min_accepted: float, alone: bool = False) -> None:
    strategy = llm.strategy(name)
    run = decode_batch(llm, prompts, PARAMS_F32, strategy)
    compared = assert_same_or_tied(llm, prompts, references, run.outputs)
    assert compared >= 0.8 * NEW_TOKENS_F32 * len(prompts)     # ties are rare, not the rule
    # the drafts were really verified and accepted: the test exercised speculation
    assert_speculated(name, run.accepted, run.proposed)
    assert run.accepted / run.steps >= min_accepted, f"{strategy.name}: {run.accepted / run.steps:.2f} accepted per step"
    if alone:   # one request through the public API (a batch of one) gives the same tokens
        single = llm.generate([prompts[0]], PARAMS_F32, speculative=name)[0]
        assert_same_or_tied(llm, prompts[:1], references[:1], [single.token_ids])
        assert_speculated(f"{name} alone", single.accepted, single.proposed)


@pytest.mark.parametrize("name, min_accepted", [("pld@4", 0.2), ("recycling@4", 0.2), ("lookahead@4", 0.2)])
def test_greedy_free_proposers_match_plain(llm_f32, prompts_f32, references, name, min_accepted):
    check_strategy(llm_f32, prompts_f32, references, name, min_accepted)


def test_greedy_auto_controller_matches_plain(llm_f32, prompts_f32, references):
    check_strategy(llm_f32, prompts_f32, references, "auto", 0.0, alone=True)


def test_greedy_layerskip_matches_plain(llm_f32, prompts_f32, references):
    check_strategy(llm_f32, prompts_f32, references, "layerskip@2", 0.2)


def test_greedy_draft_model_matches_plain(llm_f32, llm_fast, prompts_f32, references):
    """The draft is the same network in the packed int4 mode: cheap, close, not identical."""
    strategy = SpeculativeDecoding("draft-int4", [DraftModel(llm_fast.model)], Controller(fixed=4))
    run = decode_batch(llm_f32, prompts_f32, PARAMS_F32, strategy)
    assert assert_same_or_tied(llm_f32, prompts_f32, references, run.outputs) >= 0.8 * NEW_TOKENS_F32 * len(prompts_f32)
    assert run.accepted / run.steps >= 0.5


# ----------------------------------------------------------------------------- the fast CPU mode

@pytest.fixture(scope="module")
def fast_references(llm_fast, prompts) -> list[list[int]]:
    if not llm_fast.model.decode_kernel:
        pytest.skip("needs hastelm's CPU kernels (the bit-exact per-row arithmetic)")
    return decode_batch(llm_fast, prompts, PARAMS, PlainDecoding()).outputs


@pytest.mark.parametrize("name", ["pld@8", "recycling@8", "lookahead@8", "layerskip@2", "auto@8", "auto"])
def test_fast_mode_speculation_is_bit_exact(llm_fast, prompts, fast_references, name):
    """Batch-independent matmul kernels and one-token attention over exactly each row's visible
    keys: speculation reproduces plain decoding token for token, with no tie allowance."""
    strategy = llm_fast.strategy(name)
    run = decode_batch(llm_fast, prompts, PARAMS, strategy)
    assert [len(o) for o in run.outputs] == [NEW_TOKENS] * len(prompts)
    assert run.outputs == fast_references
    assert_speculated(name, run.accepted, run.proposed)
    if name != "auto":      # fixed tree sizes: drafts were verified and accepted on every prompt
        assert run.accepted / run.steps >= 0.2, f"{name}: {run.accepted / run.steps:.2f} accepted per step"
    single = llm_fast.generate([prompts[0]], PARAMS, speculative=name)[0]
    assert list(single.token_ids) == fast_references[0]
    assert_speculated(f"{name} alone", single.accepted, single.proposed)
