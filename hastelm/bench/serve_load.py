"""Load-test a running OpenAI-compatible server over loopback (`hastelm bench serve`).

Like `vllm bench serve`: a bounded number of streaming requests (and a bounded duration) at a
fixed concurrency; it reports request and output-token throughput and the mean/p50/p99 of
TTFT (time to first token), TPOT (time per output token after the first, per request) and ITL
(gap between consecutive streamed chunks). Several `--concurrency` values run one after the
other against the same server, and the table compares them. The HTTP client, httpx, is the
`bench` extra's: it is imported when the load test runs, so `hastelm` starts without it.
This module is the load generator and its statistics; serve_cli.py is the command (options,
`--launch`, the table).
"""
from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

WORDS = ("time person year way day thing man world life hand part child eye woman place work week case "
         "point government company number group problem fact river mountain garden city music story "
         "window light water paper family money night friend question school state book house").split()


@dataclass
class LoadConfig:
    base_url: str
    model: str | None = None
    endpoint: str = "completions"        # or "chat"
    num_prompts: int = 32
    duration_s: float = 120.0
    concurrency: int = 8
    request_rate: float = float("inf")   # requests/s (Poisson arrivals); inf = all at once
    input_words: int = 64
    output_len: int = 128
    seed: int = 0
    api_key: str | None = None
    speculative: str | None = None


@dataclass
class RequestRecord:
    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""


def make_prompts(n: int, words: int, seed: int) -> list[str]:
    """Distinct synthetic prompts (no shared prefix), `words` words each."""
    rng = random.Random(seed)
    return [f"Request {i}: " + " ".join(rng.choice(WORDS) for _ in range(words)) for i in range(n)]


def _body(cfg: LoadConfig, prompt: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": cfg.model, "max_tokens": cfg.output_len, "temperature": 0.0,
                            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    if cfg.speculative:
        body["speculative"] = cfg.speculative
    if cfg.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def _chunk_text(chunk: dict[str, Any]) -> str:
    parts = []
    for c in chunk.get("choices") or []:
        parts.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
    return "".join(parts)


async def one_request(client: httpx.AsyncClient, cfg: LoadConfig, prompt: str) -> RequestRecord:
    import httpx

    path = "/v1/chat/completions" if cfg.endpoint == "chat" else "/v1/completions"
    rec = RequestRecord(ok=False)
    t0 = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", path, json=_body(cfg, prompt)) as resp:
            if resp.status_code != 200:
                rec.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode()[:200]}"
                return rec
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    rec.error = str(chunk["error"].get("message"))
                    return rec
                now = time.perf_counter()
                if _chunk_text(chunk):
                    if last is None:
                        rec.ttft = now - t0
                    else:
                        rec.itl.append(now - last)
                    last = now
                if chunk.get("usage"):
                    rec.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    rec.output_tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
        return rec
    rec.latency = time.perf_counter() - t0
    rec.ok = last is not None
    return rec


async def run_load(cfg: LoadConfig) -> dict[str, Any]:
    """Issue `num_prompts` requests, at most `concurrency` in flight, for at most `duration_s`."""
    import httpx

    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    limits = httpx.Limits(max_connections=cfg.concurrency + 2, max_keepalive_connections=cfg.concurrency + 2)
    async with httpx.AsyncClient(base_url=cfg.base_url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(None, connect=10.0)) as client:
        if cfg.model is None:
            cfg.model = (await client.get("/v1/models")).json()["data"][0]["id"]
        warm = await one_request(client, cfg, "Warm-up request.")
        if not warm.ok:
            raise RuntimeError(f"warm-up request failed: {warm.error}")
        prompts = make_prompts(cfg.num_prompts, cfg.input_words, cfg.seed)
        rng = random.Random(cfg.seed)
        gate = asyncio.Semaphore(cfg.concurrency)
        records: list[RequestRecord] = []

        async def worker(prompt: str) -> None:
            try:
                records.append(await one_request(client, cfg, prompt))
            finally:
                gate.release()

        start = time.perf_counter()
        deadline = start + cfg.duration_s
        tasks = []
        for prompt in prompts:
            await gate.acquire()
            if time.perf_counter() >= deadline:
                gate.release()
                break
            tasks.append(asyncio.create_task(worker(prompt)))
            if cfg.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(cfg.request_rate))
        _, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter())) if tasks else ((), ())
        for task in late:
            task.cancel()
        elapsed = time.perf_counter() - start
    return summarize(cfg, records, elapsed, cancelled=len(late))


def _stats_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def pct(p: float) -> float:   # linear interpolation, as numpy.percentile
        k = (len(ordered) - 1) * p / 100
        lo = int(k)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)

    return {"mean": statistics.fmean(ordered) * 1e3, "p50": pct(50) * 1e3, "p99": pct(99) * 1e3}


def summarize(cfg: LoadConfig, records: list[RequestRecord], elapsed: float, cancelled: int = 0) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    return {
        "concurrency": cfg.concurrency, "endpoint": cfg.endpoint, "model": cfg.model,
        "completed": len(ok), "failed": len(records) - len(ok), "cancelled_at_deadline": cancelled,
        "errors": sorted({r.error for r in records if not r.ok})[:5],
        "duration_s": elapsed, "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / elapsed if elapsed else 0.0,
        "output_throughput": out_tokens / elapsed if elapsed else 0.0,
        "total_token_throughput": (in_tokens + out_tokens) / elapsed if elapsed else 0.0,
        "ttft_ms": _stats_ms([r.ttft for r in ok]), "tpot_ms": _stats_ms(tpot),
        "itl_ms": _stats_ms([x for r in ok for x in r.itl]),
    }
