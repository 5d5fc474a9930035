"""Bad input: every case gets a 4xx with an OpenAI-style error body, the server stays up and a
request running meanwhile is unaffected."""
from __future__ import annotations

import threading

import httpx
import pytest

from server_support import RunningServer

MSG = [{"role": "user", "content": "Count to five."}]

CHAT_CASES = [
    ("malformed JSON", b'{"messages": [', 400, None),
    ("body is not an object", b'[1, 2]', 400, None),
    ("messages of the wrong type", {"messages": "hi"}, 400, "messages"),
    ("max_tokens of the wrong type", {"messages": MSG, "max_tokens": "ten"}, 400, "max_tokens"),
    ("unknown model", {"messages": MSG, "model": "gpt-17"}, 404, "model"),
    ("max_tokens = 0", {"messages": MSG, "max_tokens": 0}, 400, "max_tokens"),
    ("negative max_tokens", {"messages": MSG, "max_tokens": -5}, 400, "max_tokens"),
    ("max_tokens beyond the context", {"messages": MSG, "max_tokens": 10**6}, 400, "max_tokens"),
    ("prompt longer than the context", {"messages": [{"role": "user", "content": "hello " * 3000}]}, 400, "messages"),
    ("negative temperature", {"messages": MSG, "temperature": -0.5}, 400, "temperature"),
    ("NaN temperature", b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, "temperature"),
    ("top_p = 0", {"messages": MSG, "top_p": 0}, 400, "top_p"),
    ("top_p > 1", {"messages": MSG, "top_p": 1.5}, 400, "top_p"),
    ("empty messages", {"messages": []}, 400, "messages"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, 400, None),
    ("huge n", {"messages": MSG, "n": 10**9}, 400, "n"),
    ("n beyond the server's capacity", {"messages": MSG, "n": 100}, 400, "n"),
    ("empty stop string", {"messages": MSG, "stop": [""]}, 400, "stop"),
    ("too many stop strings", {"messages": MSG, "stop": [str(i) for i in range(17)]}, 400, "stop"),
    ("seed out of range", {"messages": MSG, "seed": 2**70}, 400, "seed"),
    ("unknown speculative method", {"messages": MSG, "max_tokens": 2, "speculative": "nope"}, 400, "speculative"),
]

COMPLETION_CASES = [
    ("empty prompt", {"prompt": ""}, 400, "prompt"),
    ("empty prompt list", {"prompt": []}, 400, "prompt"),
    ("token id out of range", {"prompt": [1, 2, 10**9]}, 400, "prompt"),
    ("max_tokens = 0 without echo", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("logprobs too large", {"prompt": "x", "logprobs": 50}, 400, "logprobs"),
]


@pytest.fixture(scope="module")
def server(llm_fast):
    srv = RunningServer(llm_fast, max_batch=4, max_queue=4)
    yield srv
    srv.stop()


def _post(server, path, body):
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    return httpx.post(f"{server.url}{path}", timeout=60, **kw)


def _check(resp, status, param):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "\n" not in err["message"]
    if param is not None:
        assert err["param"] == param, err


@pytest.mark.parametrize("name,body,status,param", CHAT_CASES, ids=[c[0] for c in CHAT_CASES])
def test_bad_chat_request(server, name, body, status, param):
    _check(_post(server, "/v1/chat/completions", body), status, param)


@pytest.mark.parametrize("name,body,status,param", COMPLETION_CASES, ids=[c[0] for c in COMPLETION_CASES])
def test_bad_completion_request(server, name, body, status, param):
    _check(_post(server, "/v1/completions", body), status, param)


def test_unknown_route_and_method(server):
    _check(httpx.get(f"{server.url}/v1/nothing-here"), 404, None)
    _check(httpx.get(f"{server.url}/v1/chat/completions"), 405, None)


def test_running_request_unaffected_by_bad_ones(server):
    body = {"messages": MSG, "max_tokens": 24, "temperature": 0}
    alone = _post(server, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    result = {}

    def run():
        result["text"] = _post(server, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]

    worker = threading.Thread(target=run)
    worker.start()
    for _, bad, status, param in CHAT_CASES + COMPLETION_CASES:
        path = "/v1/chat/completions" if (isinstance(bad, bytes) or "prompt" not in bad) else "/v1/completions"
        assert _post(server, path, bad).status_code >= 400
    worker.join(60)
    assert result["text"] == alone
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    server.wait_idle()
