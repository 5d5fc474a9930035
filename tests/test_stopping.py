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


def _reference_cut(tok, ids: list[int], stops: list[str]) -> str | None:
    """The slow rule: after each token, search the whole text so far; at the first token where a
    stop string occurs, the output is the text before its earliest occurrence."""
    decoder, text = tok.incremental_decoder(), ""
    for t in ids:
        text += decoder.push(t)
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        if hits:
            return text[:min(hits)]
    return None


def test_incremental_stop_check_matches_the_slow_rule(llm_fast):
    """Stop strings drawn from the text itself (so they hit at all sorts of token boundaries) and
    some that never occur: what is shown, and where it ends, equals searching the whole text."""
    import random

    rng = random.Random(0)
    tok = llm_fast.tokenizer
    text = "The quick brown fox, jumps over the lazy dog; then: ### def f(x): return x*2 ### the end. " * 3
    ids = tok.encode(text, add_special=False)
    full = tok.decode(ids)
    for trial in range(200):
        stops = []
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.7:
                a = rng.randrange(len(full))
                stops.append(full[a:a + rng.randint(1, 12)])
            else:
                stops.append(f"<never {trial}>")
        chk = _checker(llm_fast, stop=stops)
        shown, reason, i = "", None, 0
        while reason is None and i < len(ids):
            step = rng.randint(1, 3)            # one token or a speculative step's several
            upd = chk.push(ids[i:i + step])
            shown += upd.text
            reason = upd.finish_reason
            i += step
        expected = _reference_cut(tok, ids, stops)
        if expected is None:
            assert reason is None and shown == full[:len(shown)], stops
        else:
            assert reason == "stop" and shown == expected, (stops, shown, expected)


def test_stop_string_limits(llm_fast):
    import pytest

    from hastelm.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="at most 16"):
        SamplingParams(stop=[str(i) for i in range(17)])
    with pytest.raises(InvalidParameterError, match="256 characters"):
        SamplingParams(stop=["x" * 257])
