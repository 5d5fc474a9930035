"""The LLM API on the real default model: seeds, streaming, prefix reuse, several prompts, errors."""
from __future__ import annotations

import pytest

from hastelm import SamplingParams
from hastelm.errors import ContextOverflowError, InvalidParameterError

PROMPT = "The three primary colours are"


def test_same_seed_same_text_different_seed_differs(llm_fast):
    p = lambda seed: SamplingParams(temperature=1.0, seed=seed, max_tokens=24)
    a = llm_fast.generate(PROMPT, p(7))[0].text
    assert llm_fast.generate(PROMPT, p(7))[0].text == a
    assert llm_fast.generate(PROMPT, p(8))[0].text != a


def test_stream_matches_generate(llm_fast):
    params = SamplingParams(temperature=0, max_tokens=30)
    full = llm_fast.generate(PROMPT, params)[0]
    steps = list(llm_fast.stream(PROMPT, params))
    assert "".join(s.text for s in steps) == full.text
    assert [t for s in steps for t in s.tokens] == full.token_ids
    assert steps[-1].finish_reason == full.finish_reason == "length"
    assert all(s.finish_reason is None for s in steps[:-1])


def test_prefix_reuse_gives_the_same_tokens_as_a_fresh_cache(llm_f32):
    params = SamplingParams(temperature=0, max_tokens=20)
    base = "Here is a list of fruits: apple, banana,"
    first = llm_f32.generate(base, params)[0]
    extended = base + first.text + " And vegetables:"
    reused = llm_f32.generate(extended, params)[0]           # reuses the cached prefix
    llm_f32.cache.reset(0)
    llm_f32._cached_ids = []
    fresh = llm_f32.generate(extended, params)[0]
    assert reused.token_ids == fresh.token_ids


def test_several_prompts_keep_order_and_counts(llm_fast):
    outs = llm_fast.generate(["1, 2, 3,", "a, b, c,"], SamplingParams(temperature=0, max_tokens=8))
    assert [o.index for o in outs] == [0, 1]
    assert all(o.completion_tokens == 8 and o.prompt_tokens > 0 for o in outs)
    assert outs[0].decode_s > 0 and outs[0].prefill_s > 0


def test_chat_template_and_eos(llm_fast):
    out = llm_fast.chat([{"role": "user", "content": "Say the word yes."}], SamplingParams(temperature=0, max_tokens=64))
    assert out.finish_reason == "stop" and out.text.strip()


def test_prompt_longer_than_context_is_a_clear_error(llm_fast):
    with pytest.raises(ContextOverflowError, match="context holds"):
        llm_fast.generate("word " * 3000, SamplingParams(max_tokens=4))


def test_empty_messages_and_prompt_rejected(llm_fast):
    with pytest.raises(InvalidParameterError):
        llm_fast.chat([])
    with pytest.raises(InvalidParameterError):
        llm_fast.generate([[]], SamplingParams())
