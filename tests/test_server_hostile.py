"""Hostile requests against the real server on loopback: no request writes a file, loads a model,
reveals a path, grows what the server keeps, gets a 5xx with internals in it, or stops the
scheduler. Every HTTP call has a client timeout, so a hang fails the test instead of stalling it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from hastelm.decoding.plain import StepOutcome
from server_support import RunningServer

MSG = [{"role": "user", "content": "Count to five."}]
SECRET = "/root/.ssh/id_rsa"
TIMEOUT = 60


class FailingStrategy:
    """A decoding method whose step raises `error` and whose clean-up fails too (as a proposer's
    file write can): the request must fail alone, with no internals in its answer."""

    def __init__(self, error: BaseException) -> None:
        self.name = "boom"
        self.error = error

    def step(self, runner: Any, seq: Any) -> StepOutcome:
        raise self.error

    def step_batch(self, runner: Any, seqs: list[Any]) -> list[StepOutcome]:
        raise self.error

    def release(self, seq: Any) -> None:
        raise OSError(f"cannot write {SECRET}")


class SpyLLM:
    """The real engine, with every strategy build counted; `boom` builds a FailingStrategy."""

    def __init__(self, llm: Any, error: BaseException | None = None) -> None:
        self._llm, self._error = llm, error
        self.built: list[str | None] = []

    def strategy(self, spec: str | None) -> Any:
        self.built.append(spec)
        return FailingStrategy(self._error) if spec == "boom" else self._llm.strategy(spec)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)


@pytest.fixture(scope="module")
def spy(llm_fast):
    return SpyLLM(llm_fast, RuntimeError(f"tensor shape mismatch reading {SECRET}"))


@pytest.fixture(scope="module")
def server(spy):
    srv = RunningServer(spy, max_batch=2, max_queue=4, speculative=["none", "pld", "boom"])
    yield srv
    srv.stop()


def _post(server, body: Any, path: str = "/v1/chat/completions") -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"},
                          timeout=TIMEOUT)
    return httpx.post(f"{server.url}{path}", json=body, timeout=TIMEOUT)


def _healthy(server) -> bool:
    return httpx.get(f"{server.url}/health", timeout=10).json() == {"status": "ok"}


@pytest.mark.parametrize("spec", [
    "recycling:{tmp}/x.bin", "recycling:{tmp}/x.npy", "recycling:/nonexistent_dir/x.npy", "recycling",
    "recycling@8", "draft:smollm2-135m", "draft:gemma3-270m", f"draft:{SECRET}", "lookahead", "pld@3"])
def test_requests_cannot_choose_unlisted_methods_or_paths(server, spy, tmp_path, spec):
    spec = spec.format(tmp=tmp_path)
    built = len(spy.built)
    resp = _post(server, {"messages": MSG, "max_tokens": 2, "speculative": spec})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == "speculative" and "none, pld, boom" in err["message"]
    assert str(tmp_path) not in err["message"] and "root" not in err["message"] and "/" not in err["message"]
    assert list(tmp_path.iterdir()) == []               # nothing written where the client pointed
    assert len(spy.built) == built                      # nothing built, loaded or kept
    assert _healthy(server)


def test_error_messages_do_not_tell_what_exists(server, tmp_path):
    """An existing and a missing path get the same answer, save the echoed name itself."""
    (tmp_path / "config.json").write_text("{}")
    answers = []
    for name in (str(tmp_path), str(tmp_path / "missing")):
        for field in ("model", "speculative"):
            value = name if field == "model" else f"draft:{name}"
            err = _post(server, {"messages": MSG, "max_tokens": 2, field: value}).json()["error"]
            answers.append(err["message"].replace(value, "X"))
    assert answers[0] == answers[2] and answers[1] == answers[3]
    assert not any("config.json" in a or "exist" in a.replace("does not exist", "") for a in answers)


def test_failing_request_gets_a_bare_500_and_the_scheduler_keeps_serving(server):
    resp = _post(server, {"messages": MSG, "max_tokens": 4, "speculative": "boom"})
    assert resp.status_code == 500
    err = resp.json()["error"]
    assert err["code"] == "internal_error"
    assert SECRET not in resp.text and "RuntimeError" not in resp.text and "shape" not in resp.text
    stream = httpx.post(f"{server.url}/v1/chat/completions", timeout=TIMEOUT,
                        json={"messages": MSG, "max_tokens": 4, "speculative": "boom", "stream": True})
    assert stream.status_code == 500 and SECRET not in stream.text   # it failed before the first event
    ok = _post(server, {"messages": MSG, "max_tokens": 4, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
    assert _healthy(server) and server.scheduler.running == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")   # the crash, on purpose
def test_a_crashed_scheduler_answers_503_at_once(llm_fast):
    """A bug that kills the scheduler thread: the request in flight and every later one get 503,
    none hangs, and /health says so."""
    srv = RunningServer(SpyLLM(llm_fast, SystemExit("scheduler bug")), max_batch=1, max_queue=2,
                        speculative="none,boom")
    try:
        first = _post(srv, {"messages": MSG, "max_tokens": 4, "speculative": "boom"})
        assert first.status_code == 503, first.text
        later = _post(srv, {"messages": MSG, "max_tokens": 4})
        assert later.status_code == 503 and "restarted" in later.json()["error"]["message"]
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 503
    finally:
        srv.stop()


BAD_FIELDS = [
    ("lone surrogate in content", b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', "messages"),
    ("lone surrogate in a stop string", b'{"messages": [{"role": "user", "content": "hi"}], "stop": "\\udfff"}', "stop"),
    ("a number as a string", {"messages": MSG, "max_tokens": "5"}, "max_tokens"),
    ("a boolean as a string", {"messages": MSG, "stream": "yes"}, "stream"),
    ("a temperature as a string", {"messages": MSG, "temperature": "0.5"}, "temperature"),
    ("17 stop strings", {"messages": MSG, "stop": [f"s{i}" for i in range(17)]}, "stop"),
    ("a 257-character stop string", {"messages": MSG, "stop": ["x" * 257]}, "stop"),
    ("tools", {"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("tool_choice", {"messages": MSG, "tool_choice": "required"}, "tool_choice"),
    ("response_format json", {"messages": MSG, "response_format": {"type": "json_object"}}, "response_format"),
    ("logit_bias key not a token id", {"messages": MSG, "logit_bias": {"hello": 5}}, "logit_bias"),
    ("logit_bias id outside the vocabulary", {"messages": MSG, "logit_bias": {"99999999": 5}}, "logit_bias"),
    ("logit_bias above 100", {"messages": MSG, "logit_bias": {"12": 101}}, "logit_bias"),
    ("a prompt no context can hold", {"messages": [{"role": "user", "content": "x" * 2_000_000}]}, "messages"),
]


@pytest.mark.parametrize("name,body,param", BAD_FIELDS, ids=[c[0] for c in BAD_FIELDS])
def test_bad_fields_are_400s(server, name, body, param):
    resp = _post(server, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_completion_prompt_types_are_strict(server):
    for prompt in ([True, False], ["a", 1], [[1, "x"]]):
        resp = _post(server, {"prompt": prompt, "max_tokens": 2}, "/v1/completions")
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt", resp.text


def test_stop_strings_at_the_limit_and_plain_response_format_work(server):
    stops = [("never appears " * 20)[:256 - i] for i in range(16)]
    resp = _post(server, {"messages": MSG, "max_tokens": 8, "stop": stops, "response_format": {"type": "text"},
                          "tool_choice": "none"})
    assert resp.status_code == 200 and resp.json()["choices"][0]["finish_reason"] == "length"


def test_logit_bias_steers_greedy_decoding(server, llm_fast):
    plain = _post(server, {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}, "/v1/completions")
    first = llm_fast.tokenizer.encode(plain.json()["choices"][0]["text"], add_special=False)[0]
    forced = llm_fast.tokenizer.encode(" banana", add_special=False)[0]
    body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0,
            "logit_bias": {str(first): -100, str(forced): 100}}
    for speculative in ("none", "pld"):
        resp = _post(server, {**body, "speculative": speculative}, "/v1/completions").json()
        ids = llm_fast.tokenizer.encode(resp["choices"][0]["text"], add_special=False)
        assert ids and set(ids) == {forced}, resp


def test_recycling_file_is_the_operators_choice_and_checked_at_start(llm_fast, tmp_path):
    from hastelm.errors import InvalidParameterError
    from hastelm.server.app import create_app

    with pytest.raises(InvalidParameterError, match="cannot write the recycling matrix"):
        create_app(llm_fast, speculative=[f"recycling:{tmp_path}/no/such/dir/m.npy"])
    path = tmp_path / "m.npy"
    srv = RunningServer(llm_fast, max_batch=1, max_queue=1, speculative=[f"recycling:{path}"])
    try:
        assert path.exists()                              # written at start-up, where the operator said
        resp = _post(srv, {"messages": MSG, "max_tokens": 6, "temperature": 0})   # the default method
        assert resp.status_code == 200
        names = httpx.get(f"{srv.url}/v1/models", timeout=10).json()["data"][0]["speculative"]
        assert names == ["none", "recycling"] and str(tmp_path) not in str(names)
    finally:
        srv.stop()
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["m.npy"]
