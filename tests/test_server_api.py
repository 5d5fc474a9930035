"""The server through the official `openai` client: chat, completions, streaming with usage,
logprobs, echo scoring, n, seeds, stop strings, models, health, metrics and the API key."""
from __future__ import annotations

import math

import httpx
import openai
import pytest

from hastelm import SamplingParams
from server_support import RunningServer

HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def server(llm_fast):
    srv = RunningServer(llm_fast, max_batch=4, max_queue=8, api_key=None, speculative=["none", "pld@4"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


def test_models_and_health(server, client):
    models = client.models.list().data
    assert [m.id for m in models] == ["smollm2-135m"]
    assert models[0].speculative == ["none", "pld@4"]      # what a request may name
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


def test_chat_matches_the_python_api(llm_f32):
    """Same model, same template, same sampler: greedy chat text equals `LLM.chat` (float32)."""
    srv = RunningServer(llm_f32, max_batch=2, max_queue=2)
    try:
        r = srv.openai().chat.completions.create(model="smollm2-135m", messages=HI, max_tokens=12, temperature=0)
    finally:
        srv.stop()
    ref = llm_f32.chat(HI, SamplingParams(temperature=0, max_tokens=12))
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].finish_reason == ref.finish_reason
    assert r.usage.completion_tokens == ref.completion_tokens
    assert r.usage.prompt_tokens == ref.prompt_tokens


def test_chat_streaming_with_usage(client):
    kwargs = dict(model="smollm2-135m", messages=HI, max_tokens=10, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="smollm2-135m", messages=HI, max_tokens=4, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)


def test_completions_n_stop_length_and_stream(client):
    r = client.completions.create(model="smollm2-135m", prompt=["The capital of France is", "1, 2, 3,"],
                                  max_tokens=6, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text          # greedy: both choices agree
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    assert 0 < r.usage.completion_tokens <= 4 * 6
    streamed = client.completions.create(model="smollm2-135m", prompt="1, 2, 3,", max_tokens=6, temperature=0,
                                         stream=True, stream_options={"include_usage": True})
    parts = list(streamed)
    assert "".join(p.choices[0].text for p in parts if p.choices) == r.choices[2].text
    assert parts[-1].usage.completion_tokens == 6
    stopped = client.completions.create(model="smollm2-135m", prompt="1, 2, 3,", max_tokens=20, temperature=0,
                                        stop=[" 6"])
    assert stopped.choices[0].finish_reason == "stop" and " 6" not in stopped.choices[0].text


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model="smollm2-135m", prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=7)
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text


def test_logprobs_and_echo_scoring_agree(client):
    """Echo + logprobs scores a given text: the prompt's logprobs equal what generation reported."""
    gen = client.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=3,
                                    temperature=0, logprobs=2)
    lp = gen.choices[0].logprobs
    assert len(lp.tokens) == 3 and all(len(t) == 2 for t in lp.top_logprobs)
    assert lp.tokens[0] in lp.top_logprobs[0] and lp.token_logprobs[0] == max(lp.top_logprobs[0].values())
    scored = client.completions.create(model="smollm2-135m", prompt="The capital of France is" + gen.choices[0].text,
                                       max_tokens=0, echo=True, logprobs=1)
    s = scored.choices[0].logprobs
    assert scored.choices[0].text == "The capital of France is" + gen.choices[0].text
    assert s.token_logprobs[0] is None and s.tokens[-3:] == lp.tokens
    for a, b in zip(s.token_logprobs[-3:], lp.token_logprobs):
        assert math.isclose(a, b, abs_tol=0.05)   # prefill vs decode numerics in the fast mode
    assert scored.usage.completion_tokens == 0
    one = client.completions.create(model="smollm2-135m", prompt=[19556], max_tokens=0, echo=True, logprobs=0)
    assert one.choices[0].logprobs.token_logprobs == [None] and one.choices[0].text == "Hello"


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="smollm2-135m", messages=HI, max_tokens=4, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert all(bytes(t.bytes).decode() == t.token for t in content)


def test_speculative_request_field(client, llm_f32):
    """A request's proposer is honoured and lossless: in float32 (where a multi-token verification
    forward and a one-token step agree to the last bits that matter) greedy text equals plain."""
    kw = dict(model="smollm2-135m", prompt="a b c a b c a b c", max_tokens=8, temperature=0)
    srv = RunningServer(llm_f32, max_batch=2, max_queue=2, speculative="none,pld")
    try:
        exact = srv.openai()
        plain = exact.completions.create(**kw).choices[0].text
        spec = exact.completions.create(**kw, extra_body={"speculative": "pld"}).choices[0]
    finally:
        srv.stop()
    assert spec.text == plain and spec.finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**kw, extra_body={"speculative": "no-such-method"})
    assert info.value.body["param"] == "speculative"


def test_metrics(server, client):
    # a fixed draft size: the adaptive controller may judge that drafting does not pay on this machine
    client.completions.create(model="smollm2-135m", prompt="a b c a b c a b c a b c", max_tokens=6,
                              temperature=0, extra_body={"speculative": "pld@4"})
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("hastelm_requests_total", "hastelm_generation_tokens_total", "hastelm_queue_depth",
                 "hastelm_time_to_first_token_seconds_bucket", "hastelm_time_per_output_token_seconds_count",
                 "hastelm_spec_acceptance_rate"):
        assert name in text
    assert "hastelm_spec_draft_tokens_total 0\n" not in text   # the pld request drafted


def test_api_key(llm_fast):
    srv = RunningServer(llm_fast, max_batch=1, max_queue=1, api_key="sesame")
    try:
        with pytest.raises(openai.AuthenticationError) as info:
            srv.openai("wrong").models.list()
        assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
        assert httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x"}).status_code == 401
        assert [m.id for m in srv.openai("sesame").models.list().data] == ["smollm2-135m"]
        assert httpx.get(f"{srv.url}/health").status_code == 200     # health stays open for probes
        assert httpx.get(f"{srv.url}/metrics").status_code == 401    # metrics only with the key...
        assert httpx.get(f"{srv.url}/metrics", headers={"Authorization": "Bearer sesame"}).status_code == 200
        # a non-ASCII header is a wrong key, not a crash
        assert httpx.get(f"{srv.url}/v1/models", headers={"Authorization": "Bearer s\u00e9same".encode()}
                         ).status_code == 401
    finally:
        srv.stop()
    srv = RunningServer(llm_fast, max_batch=1, max_queue=1, api_key="sesame", metrics_public=True)
    try:                                                              # ...unless the operator opens them
        assert httpx.get(f"{srv.url}/metrics").status_code == 200
        assert httpx.get(f"{srv.url}/v1/models").status_code == 401
    finally:
        srv.stop()
