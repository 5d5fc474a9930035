"""The LLM API on the real default model: seeds, streaming, prefix reuse, several prompts, errors."""
from __future__ import annotations

import pytest

from hastelm import SamplingParams
from hastelm.engine import PREFILL_CHUNK
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


@pytest.mark.parametrize("mode", ["llm_f32", "llm_fast"])
def test_prefix_reuse_gives_the_same_tokens_as_a_fresh_cache(mode, request):
    llm = request.getfixturevalue(mode)
    params = SamplingParams(temperature=0, max_tokens=40)
    base = "Here is a list of fruits: apple, banana, " + "cherry, grape, lemon, mango, " * 40
    first = llm.generate(base, params)[0]
    extended = base + first.text + " And vegetables:"
    reused = llm.generate(extended, params)[0]           # reuses the cached prefix (whole chunks of it)
    llm.clear_prefix_cache()
    fresh = llm.generate(extended, params)[0]
    assert len(llm.encode_prompt(base)) > PREFILL_CHUNK      # so a whole chunk is reused
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


def test_padded_prefill_batch_fills_the_cache_exactly_as_alone(llm_fast):
    """The server prefills new requests together (one padded forward, dense matmuls); each row's
    cache must be bit-identical to its prompt prefilled alone, and its padding must not stay."""
    import torch

    from hastelm.engine.runner import ModelRunner, Row

    model = llm_fast.model
    prompts = [llm_fast.encode_prompt(t) for t in (
        "Summarize: the council met on Tuesday to discuss new bicycle lanes and parking " * 3,
        "def fibonacci(n):\n    # return the n-th Fibonacci number, iteratively\n" * 2,
        "Translate into French: the weather is nice today, so we are going to the park. " * 2)]
    assert all(len(p) >= 32 for p in prompts) and len({len(p) for p in prompts}) == 3
    alone, batch = ModelRunner(model, 256, slots=3), ModelRunner(model, 256, slots=3)
    for s, ids in enumerate(prompts):
        alone.forward([Row(s, ids, 0)], last_only=True)
    batch.forward([Row(s, ids, 0) for s, ids in enumerate(prompts)], last_only=True)
    alone, batch = alone.cache, batch.cache
    for s, ids in enumerate(prompts):
        n = len(ids)
        assert batch.length(s) == alone.length(s) == n
        assert bool((batch.positions[s, n:] == -1).all())
        for layer in range(len(model.layers)):
            assert torch.equal(batch.keys[layer][s, :n], alone.keys[layer][s, :n])
            assert torch.equal(batch.values[layer][s, :n], alone.values[layer][s, :n])


def test_generate_stats_count_tokens_per_decode_step(capsys):
    from hastelm.cli import _print_stream
    from hastelm.decoding.step import StepResult

    # the prefill's token, a step that accepted 2 of 3 drafts, a plain step, an EOS step of 2 drafts
    steps = [StepResult(0, [5], "a"), StepResult(0, [6, 7, 8], "bcd", accepted=2, proposed=3),
             StepResult(0, [9], "e"), StepResult(0, [], "", accepted=0, proposed=2, finish_reason="stop")]
    _print_stream(iter(steps), stats=True)
    out = capsys.readouterr()
    assert out.out == "abcde\n"
    stats = " ".join(out.err.split())     # the console may wrap the line
    # 3 decode steps yield 2 accepted drafts + 3 target tokens (the EOS one included): 5/3 per step
    assert "5 tokens" in stats and "1.67 tokens/step" in stats
    assert "40% of drafted tokens accepted" in stats
