"""Continuous batching: same greedy text alone and among 8 concurrent requests, long prompts
prefilled in chunks between decode steps, disconnects free their slot, a full queue answers 429."""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from hastelm.decoding.sampling import SamplingParams
from hastelm.decoding.choices import DecodingChoices
from hastelm.engine.jobs import Job
from hastelm.server.worker import ServingScheduler
from server_support import RunningServer

PROMPTS = ["Hi", "What is the capital of France? Answer with its history in detail, please.",
           "Write a python function that reverses a list.", "List five fruits.",
           "Explain quantum computing to a child using an analogy about marbles and boxes.",
           "Why is the sky blue?", "Tell me a story about a cat who learns to fly a small plane over the sea.",
           "Translate 'good morning' into Spanish."]


def _chat(server, prompt, max_tokens=32):
    r = server.openai().chat.completions.create(model="smollm2-135m", max_tokens=max_tokens, temperature=0,
                                                messages=[{"role": "user", "content": prompt}])
    return r.choices[0].message.content


def test_greedy_text_same_alone_and_among_8_concurrent(llm_fast):
    """In the default fast mode, bit for bit: the int4 kernels are row-independent, and a decode
    batch attends row by row over each sequence's own prefix, so a row's numerics do not depend
    on who else is in the batch."""
    server = RunningServer(llm_fast, max_batch=8, max_queue=8)
    try:
        alone = [_chat(server, p) for p in PROMPTS]
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            together = list(pool.map(lambda p: _chat(server, p), PROMPTS))
        assert server.scheduler.peak_batch >= 4      # they really shared decode steps
    finally:
        server.stop()
    assert together == alone


def _serving(llm, **options) -> ServingScheduler:
    return ServingScheduler(llm.model, llm.tokenizer, llm.context_length, DecodingChoices(llm.strategy, []),
                            **options)


def test_long_prompt_is_prefilled_between_decode_steps(llm_fast):
    sched = _serving(llm_fast, max_batch=2, max_queue=2, prefill_chunk=32)
    events: queue.Queue = queue.Queue()
    sched.start()
    try:
        runner = Job(llm_fast.encode_prompt("Once upon a time"), SamplingParams(max_tokens=60, temperature=0, ignore_eos=True),
                     lambda j, e: events.put(("run", e)))
        sched.submit([runner])
        assert events.get(timeout=30)[0] == "run"             # the stream is running
        long_ids = llm_fast.encode_prompt("word " * 400)
        arrival = Job(long_ids, SamplingParams(max_tokens=1, temperature=0), lambda j, e: events.put(("long", e)))
        sched.submit([arrival])
        between = 0
        while True:
            who, e = events.get(timeout=60)
            if who == "long":
                break
            between += 1
        # ceil(399 / 32) = 13 prefill chunks, each followed by a decode step of the running stream
        assert between >= (len(long_ids) - 1) // 32 - 1
        assert e.finish_reason == "length" and len(e.tokens) == 1
    finally:
        sched.stop()


def test_scheduler_computes_with_its_own_thread_count(llm_fast):
    """The forwards run on the scheduler thread with the team size it was given (the server keeps
    its main thread at one: two OpenMP teams on two cores throttle each other's spin-waits)."""
    import torch

    main_threads = torch.get_num_threads()
    wanted = 1 if main_threads > 1 else 2
    seen: queue.Queue = queue.Queue()
    sched = _serving(llm_fast, max_batch=1, max_queue=1, threads=wanted)
    sched.start()
    try:
        sched.submit([Job(llm_fast.encode_prompt("Hi"), SamplingParams(max_tokens=1, temperature=0),
                          lambda j, e: seen.put(torch.get_num_threads()))])     # runs on the scheduler thread
        assert seen.get(timeout=30) == wanted
    finally:
        sched.stop()
    assert torch.get_num_threads() == main_threads


def test_client_disconnect_cancels_and_frees_the_slot(llm_fast):
    server = RunningServer(llm_fast, max_batch=2, max_queue=2)
    body = {"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as resp:
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")
            assert server.scheduler.running == 1
        server.wait_idle(timeout=30)                             # closed mid-stream: slot freed
        assert server.scheduler.cache.lengths == [0, 0]
        with pytest.raises(httpx.ReadTimeout):                   # a non-streaming client gives up
            httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False}, timeout=1.0)
        server.wait_idle(timeout=30)
        assert 'hastelm_requests_total{outcome="cancelled"} 2' in httpx.get(f"{server.url}/metrics").text
        assert httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200
    finally:
        server.stop()


def test_full_queue_answers_429_with_retry_after(llm_fast):
    server = RunningServer(llm_fast, max_batch=1, max_queue=1)
    body = {"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as running:
            lines = running.iter_lines()     # kept referenced: a collected iterator closes the stream
            next(lines)                                          # holds the only slot
            waiting = threading.Thread(target=lambda: httpx.post(f"{server.url}/v1/completions",
                                                                 json={**body, "max_tokens": 3, "stream": False},
                                                                 timeout=60))
            waiting.start()
            deadline = time.monotonic() + 30
            while server.scheduler.queue_depth < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            rejected = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
            assert rejected.status_code == 429
            assert rejected.headers["retry-after"] == "1"
            assert rejected.json()["error"]["type"] == "rate_limit_error"
        waiting.join(60)                                         # admitted once the slot was freed
        server.wait_idle()
    finally:
        server.stop()
