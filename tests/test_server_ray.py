"""Scale-out: examples/ray_serve_app.py runs two hastelm replicas behind Ray Serve on a local
Ray instance, and the official openai client talks to them through Ray's proxy."""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
from server_support import free_port  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def ray_app():
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location("ray_serve_app", EXAMPLES / "ray_serve_app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ray_serve_app"] = module
    spec.loader.exec_module(module)
    # replicas import the example by name, so its folder goes on their path too
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": str(EXAMPLES), "RAY_USAGE_STATS_ENABLED": "0"}})
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(module.build_app("smollm2-135m", replicas=2, threads=1, context_length=512),
                  name="hastelm", route_prefix="/")
        yield f"http://127.0.0.1:{port}", serve
    finally:
        serve.shutdown()
        ray.shutdown()
        sys.modules.pop("ray_serve_app", None)
        sys.path.remove(str(EXAMPLES))


def test_two_replicas_serve_the_openai_api(ray_app):
    import openai

    url, serve = ray_app
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    status = serve.status().applications["hastelm"].deployments["HastelmReplica"]
    assert status.replica_states.get("RUNNING") == 2
    assert [m.id for m in client.models.list().data] == ["smollm2-135m"]

    def ask(i: int) -> str:
        r = client.chat.completions.create(model="smollm2-135m", max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Say hello."}])
        return r.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert len(set(answers)) == 1 and answers[0]          # same greedy text from either replica
    chunks = list(client.chat.completions.create(model="smollm2-135m", max_tokens=8, temperature=0, stream=True,
                                                 messages=[{"role": "user", "content": "Say hello."}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answers[0]
