"""Stop conditions on the real tokenizer: EOS, stop strings across token boundaries, max_tokens."""
from __future__ import annotations

from hastelm.decoding.sampling import SamplingParams
from hastelm.decoding.stopping import StopChecker


def _checker(llm, room=10_000, **kw):
    return StopChecker(SamplingParams(**kw), llm.tokenizer, room)


def test_eos_ends_without_emitting(llm_fast):
    tok = llm_fast.tokenizer
    ids = tok.encode("Hello there", add_special=False)
    eos = next(iter(tok.eos_ids))
    upd = _checker(llm_fast).push(ids + [eos] + ids)
    assert upd.tokens == ids and upd.finish_reason == "stop" and upd.text == "Hello there"


def test_stop_string_spanning_tokens_is_cut_and_never_shown(llm_fast):
    tok = llm_fast.tokenizer
    ids = tok.encode("alpha beta gamma delta", add_special=False)
    chk = _checker(llm_fast, stop=["a gam"])
    shown = ""
    for t in ids:
        upd = chk.push([t])
        shown += upd.text
        if upd.finish_reason:
            break
    assert upd.finish_reason == "stop"
    assert shown == "alpha bet"


def test_partial_stop_prefix_is_held_back_then_released(llm_fast):
    tok = llm_fast.tokenizer
    chk = _checker(llm_fast, stop=["###"])
    first = chk.push(tok.encode("x #", add_special=False))
    assert "#" not in first.text          # could be the start of "###"
    second = chk.push(tok.encode(" y", add_special=False))
    assert first.text + second.text == "x # y" and second.finish_reason is None


def test_max_tokens_and_context_room(llm_fast):
    ids = llm_fast.tokenizer.encode("one two three four five six", add_special=False)
    upd = _checker(llm_fast, max_tokens=3).push(ids)
    assert len(upd.tokens) == 3 and upd.finish_reason == "length"
    upd = _checker(llm_fast, room=2, max_tokens=100).push(ids)
    assert len(upd.tokens) == 2 and upd.finish_reason == "length"
