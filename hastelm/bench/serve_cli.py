"""`hastelm bench serve`, the command: options, `--launch` (start `hastelm serve` on a free port
first), and the table comparing the concurrency levels. The load itself is serve_load.py's."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..console import fail
from ..decoding.choices import public_name
from ..errors import HastelmError
from . import require
from .serve_load import LoadConfig, run_load

out = Console() if sys.stdout.isatty() else Console(width=160)


def render(results: list[dict[str, Any]]) -> Table:
    table = Table("metric", *[f"concurrency {r['concurrency']}" for r in results],
                  title="Serving benchmark (streaming, greedy, ignore_eos)")
    rows = [("successful requests", "completed", "{:d}"), ("failed requests", "failed", "{:d}"),
            ("duration (s)", "duration_s", "{:.2f}"), ("input tokens", "total_input_tokens", "{:d}"),
            ("generated tokens", "total_output_tokens", "{:d}"),
            ("request throughput (req/s)", "request_throughput", "{:.2f}"),
            ("output token throughput (tok/s)", "output_throughput", "{:.1f}"),
            ("total token throughput (tok/s)", "total_token_throughput", "{:.1f}")]
    for label, key, fmt in rows:
        table.add_row(label, *[fmt.format(r[key]) for r in results])
    for metric in ("ttft", "tpot", "itl"):
        for stat in ("mean", "p50", "p99"):
            table.add_row(f"{stat} {metric.upper()} (ms)", *[f"{r[metric + '_ms'][stat]:.1f}" for r in results])
    if len(results) > 1 and results[0]["output_throughput"]:
        base = results[0]["output_throughput"]
        table.add_row(f"output throughput vs concurrency {results[0]['concurrency']}",
                      *[f"{r['output_throughput'] / base:.2f}x" for r in results])
    return table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_server(model: str, port: int, max_batch: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "hastelm.cli", "serve", "-m", model, "--port", str(port),
           "--max-batch", str(max_batch), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hastelm serve exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("hastelm serve did not become healthy in 300 s")


def serve_bench(
    base_url: str = typer.Option("http://127.0.0.1:8000", "--base-url", help="server to load"),
    model: Optional[str] = typer.Option(None, "--model", help="model id (default: the server's first)"),
    endpoint: str = typer.Option("completions", "--endpoint", help="completions|chat"),
    num_prompts: int = typer.Option(32, "--num-prompts", "-n", help="requests per concurrency level"),
    duration: float = typer.Option(120.0, "--duration", help="seconds per concurrency level at most"),
    concurrency: list[int] = typer.Option([8], "--concurrency", "-c", help="max in-flight requests; repeat to compare"),
    request_rate: float = typer.Option(float("inf"), "--request-rate", help="requests/s (Poisson); inf = all at once"),
    input_words: int = typer.Option(64, "--input-words", help="synthetic prompt length in words"),
    output_len: int = typer.Option(128, "--output-len", help="tokens generated per request (ignore_eos)"),
    speculative: Optional[str] = typer.Option(None, "--speculative",
                                              help="per-request method (one the server enabled; --launch enables it)"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="HASTELM_API_KEY"),
    launch: Optional[str] = typer.Option(None, "--launch", help="start `hastelm serve -m MODEL` on a free port first"),
    launch_batch: int = typer.Option(8, "--launch-max-batch", help="--max-batch of the launched server"),
    seed: int = typer.Option(0, "--seed"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="also write the results here"),
) -> None:
    """Load-test an OpenAI-compatible server: throughput and TTFT/TPOT/ITL percentiles."""
    try:
        httpx = require("httpx", "hastelm bench serve")
    except HastelmError as exc:
        fail(str(exc))
    if endpoint not in ("completions", "chat") or num_prompts < 1 or duration <= 0 or min(concurrency) < 1:
        fail("--endpoint is completions|chat; --num-prompts, --duration and --concurrency must be positive")
    proc = None
    try:
        if launch:
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            # a request may only name a method the server enabled at start-up, and only by its public name
            proc = launch_server(launch, port, launch_batch, ["--speculative", f"none,{speculative}"] if speculative else [])
        requested = public_name(speculative) if speculative else None
        results = []
        for c in concurrency:
            cfg = LoadConfig(base_url, model, endpoint, num_prompts, duration, c, request_rate, input_words,
                             output_len, seed, api_key, requested)
            results.append(asyncio.run(run_load(cfg)))
    except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as exc:
        fail(str(exc))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    out.print(render(results))
    report = {"config": {"base_url": base_url, "endpoint": endpoint, "num_prompts": num_prompts,
                         "input_words": input_words, "output_len": output_len, "request_rate": str(request_rate),
                         "speculative": speculative},
              "results": results}
    text = json.dumps(report, indent=2)
    if json_path:
        json_path.write_text(text + "\n")
    print(text)
