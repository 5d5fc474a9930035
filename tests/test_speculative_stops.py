"""EOS and stop strings inside an accepted draft end the output exactly where plain decoding ends it,
and repetition penalties see the history along the tree path (float32, real default model).

An oracle proposer drafts the true greedy continuation (known from a plain run), so whole drafts
are accepted and the stop condition is sure to fall inside one, with accepted tokens after it.
"""
from __future__ import annotations

import pytest

from hastelm.decoding.sampling import SamplingParams
from hastelm.decoding.speculative import Controller, SpeculativeDecoding
from hastelm.decoding.speculative.proposers.trie import trie_tree

CHAT = "Reply with one short sentence: what colour is the sky on a clear day?"


class Oracle:
    """Drafts `length` tokens of a known continuation, plus a wrong sibling branch."""
    name = "oracle"
    free = True

    def __init__(self, prompt_len: int, future: list[int], length: int) -> None:
        self.prompt_len, self.future, self.length = prompt_len, future, length

    def propose(self, seq, budget):
        done = len(seq.ids) - self.prompt_len          # generated so far, the pending token included
        draft = self.future[done:done + self.length]
        wrong = [(draft[0] + 1) % 1000] if draft else []
        return trie_tree([draft, wrong], budget.nodes, budget.depth) if draft else None

    def update(self, seq, feedback):
        pass

    def release(self, seq):
        pass


def oracle_strategy(prompt_len: int, future: list[int], length: int) -> SpeculativeDecoding:
    return SpeculativeDecoding("oracle", [Oracle(prompt_len, future, length)], Controller(fixed=64))


def run(llm, ids, params, strategy):
    """Run a request with `strategy` through `LLM.stream`; returns (tokens, text, finish_reason,
    the step results)."""
    steps = list(llm.stream(ids, params, speculative=strategy))
    tokens = [t for r in steps for t in r.tokens]
    return tokens, "".join(r.text for r in steps), steps[-1].finish_reason, steps


@pytest.fixture(scope="module")
def setup(llm_f32):
    """The prompt, the plain greedy output that ends in EOS, and the model's continuation past it."""
    ids = llm_f32.chat_prompt([{"role": "user", "content": CHAT}])
    plain = llm_f32.generate([ids], SamplingParams(temperature=0, max_tokens=120))[0]
    assert plain.finish_reason == "stop", "the prompt should get a short answer ending in EOS"
    past = llm_f32.generate([ids], SamplingParams(temperature=0, max_tokens=len(plain.token_ids) + 12,
                                                  ignore_eos=True))[0]
    return ids, plain, past.token_ids


def draft_length_with_stop_inside(stop_index: int) -> int:
    """A draft length that puts token `stop_index` inside a draft, not at a step's last token
    (every step, the first one included, gives length + 1 tokens when fully accepted)."""
    for length in range(8, 2, -1):
        if stop_index % (length + 1) < length - 1:
            return length
    raise AssertionError("no suitable draft length")


def test_eos_inside_an_accepted_draft(llm_f32, setup):
    ids, plain, future = setup
    eos_index = len(plain.token_ids)             # where the EOS comes in the continuation
    assert future[eos_index] in llm_f32.tokenizer.eos_ids
    strategy = oracle_strategy(len(ids), future, draft_length_with_stop_inside(eos_index))
    tokens, text, reason, outcomes = run(llm_f32, ids, SamplingParams(temperature=0, max_tokens=120), strategy)
    assert (tokens, text, reason) == (plain.token_ids, plain.text, "stop")
    last = outcomes[-1]
    # the step's accepted + 1 tokens ran past the EOS: it was inside the draft, not its last token
    assert last.accepted >= 2 and len(last.tokens) < last.accepted


def test_stop_string_inside_an_accepted_draft(llm_f32, setup):
    ids, plain, future = setup
    words = plain.text.split()
    stop = " " + words[len(words) // 2]          # a stop string in the middle of the answer
    params = SamplingParams(temperature=0, max_tokens=120, stop=[stop])
    expected = llm_f32.generate([ids], params)[0]
    assert expected.finish_reason == "stop" and len(expected.text) < len(plain.text)
    cut = len(expected.token_ids)                # the token that completes the stop string
    strategy = oracle_strategy(len(ids), future, draft_length_with_stop_inside(cut))
    tokens, text, reason, outcomes = run(llm_f32, ids, params, strategy)
    assert (tokens, text, reason) == (expected.token_ids, expected.text, "stop")
    assert outcomes[-1].accepted >= 2


def test_max_tokens_inside_an_accepted_draft(llm_f32, setup):
    ids, plain, future = setup
    params = SamplingParams(temperature=0, max_tokens=7)
    strategy = oracle_strategy(len(ids), future, 8)
    tokens, _, reason, outcomes = run(llm_f32, ids, params, strategy)
    assert tokens == plain.token_ids[:7] and reason == "length"
    assert all(o.accepted + 1 <= 7 for o in outcomes)    # drafts are cut to what may still be produced
    assert sum(o.accepted for o in outcomes) >= 2         # and what was left of them was accepted


@pytest.mark.parametrize("sampling", [
    SamplingParams(temperature=0, max_tokens=32, repetition_penalty=1.5, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=32, presence_penalty=1.5, frequency_penalty=1.0, ignore_eos=True),
])
def test_penalties_use_the_history_along_the_path(llm_f32, sampling):
    """With penalties, a node's target depends on the draft tokens above it: drafts of the true
    continuation are accepted exactly, with the penalties applied along each path."""
    ids = llm_f32.encode_prompt("def add(a, b):\n    return a + b\n\n\ndef add3(a, b, c):\n")
    plain = llm_f32.generate([ids], sampling)[0]
    strategy = oracle_strategy(len(ids), plain.token_ids + [0] * 16, 8)
    tokens, _, _, outcomes = run(llm_f32, ids, sampling, strategy)
    assert tokens == plain.token_ids
    assert sum(o.accepted for o in outcomes) >= len(tokens) // 2
    # a real proposer: Token Recycling's matrix learns every token's successors from the steps
    # that had it pending, so a second run has drafts to verify even when the strategy started
    # cold and no token repeats within one output (a repetition penalty sees to that)
    runs = [llm_f32.generate([ids], sampling, speculative="recycling@8")[0] for _ in range(2)]
    assert [r.token_ids for r in runs] == [plain.token_ids] * 2
    assert runs[1].proposed > 0 and runs[1].accepted > 0, \
        f"recycling@8: {runs[1].proposed} draft nodes verified, {runs[1].accepted} accepted"

