"""A bounded fuzz run against /openapi.json (schemathesis + hypothesis): valid and invalid bodies
for every operation; no answer may be a 5xx, every 4xx carries an OpenAI-style error body, and
the server is still healthy afterwards.

Generation lengths are capped (max_tokens <= 4) and the model's context is small, so each valid
request costs a few decode steps; everything else about the bodies is left to the fuzzer.
"""
from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from server_support import RunningServer  # noqa: E402

MAX_TOKENS = 4
EXAMPLES = {"POST": 30, "GET": 5}


@pytest.fixture(scope="module")
def server(smollm_path):
    from hastelm import LLM

    llm = LLM(str(smollm_path), context_length=96)
    srv = RunningServer(llm, max_batch=4, max_queue=4)
    yield srv
    srv.stop()


def _bounded(case) -> None:
    """Keep generation short: cap integer lengths, and add one where the body leaves it open."""
    body = case.body
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                body[key] = MAX_TOKENS
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = MAX_TOKENS


def _operations(server):
    schema = schemathesis.openapi.from_dict(httpx.get(f"{server.url}/openapi.json").json())
    return [op.ok() for op in schema.get_all_operations()]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_openapi_no_server_errors(server, mode):
    generation_mode = schemathesis.GenerationMode(mode)
    ops = _operations(server)
    assert {op.path for op in ops} >= {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"}
    for op in ops:
        if mode == "negative" and op.method.upper() == "GET":
            continue       # nothing to get wrong in a parameterless GET
        @settings(max_examples=EXAMPLES.get(op.method.upper(), 5), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=generation_mode))
        def check(case) -> None:
            _bounded(case)
            response = case.call(base_url=server.url, timeout=60)
            assert response.status_code < 500, (case.body, response.text[:500])
            if response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}, response.text

        check()
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    server.wait_idle()
