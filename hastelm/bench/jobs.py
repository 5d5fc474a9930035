"""Plan the benchmark's jobs (one process each) and run them under one progress display."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .engines import PEER_METHODS
from .memory import BenchError, run_isolated


@dataclass
class Settings:
    model: Path
    engines: list[str]
    threads: int
    dtype: str
    context: int
    device: str = "cpu"      # "cpu" or "cuda" (llama.cpp runs its CPU build either way)


def core_jobs(s: Settings, prompt_tokens: int, gen_tokens: int, reps: int, batch: int = 0) -> list[dict[str, Any]]:
    """One process per engine runs its tests in turn, as llama-bench does; its peak RSS is the engine's.
    `batch` prompts x `gen_tokens` run through hastelm's `LLM.generate` one at a time and batched."""
    tests = [[test, n] for test, n in (("pp", prompt_tokens), ("tg", gen_tokens)) if n > 0]
    # llama-bench's context: just what the tests need (llama.cpp allocates its whole KV cache up front)
    context = prompt_tokens + gen_tokens + 16
    return [_job(s, engine, "plain", kind="core", reps=reps, context=context,
                 tests=tests + ([["batch", batch]] if engine == "hastelm" and batch and gen_tokens else []))
            for engine in s.engines]


def workload_jobs(s: Settings, workload: str, methods: list[str], limit: int,
                  peer_limit: int | None, max_tokens: int, rounds: int = 1) -> list[dict[str, Any]]:
    """hastelm's plain and speculative runs take turns `rounds` times, so a slow spell of a shared
    machine falls on all of them alike; peers run once."""
    common = {"kind": "workload", "workload": workload, "max_tokens": max_tokens}
    ours = ["plain", *methods] if "hastelm" in s.engines else []
    jobs = [_job(s, "hastelm", m, limit=limit, **common) for _ in range(rounds) for m in ours]
    peers_limit = min(limit, peer_limit) if peer_limit else limit
    for engine in s.engines:
        for method in PEER_METHODS.get(engine, ()):
            jobs.append(_job(s, engine, method, limit=peers_limit, **common))
    return jobs


def _job(s: Settings, engine: str, method: str, **extra: Any) -> dict[str, Any]:
    job = {"engine": engine, "method": method, "model": str(s.model), "threads": s.threads,
           "dtype": s.dtype, "context": s.context, "device": s.device}
    return {**job, **extra}


def run_jobs(jobs: list[dict[str, Any]], console: Console) -> list[dict[str, Any]]:
    """Run each job in its own process. A failing peer is reported and skipped; hastelm failing
    ends the benchmark with its one-line error."""
    results = []
    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for job in jobs:
            tests = " ".join(f"{t}{n}" for t, n in job.get("tests", []))
            name = f"{job['engine']} {job['method'] if not tests else tests}"
            task = progress.add_task(name, total=None)
            try:
                result = run_isolated(job, lambda done, total: progress.update(task, completed=done, total=total))
            except BenchError as exc:
                if job["engine"] == "hastelm":
                    raise
                progress.console.print(f"[yellow]skipped[/] {exc}", highlight=False)
                continue
            results.append({**result, **{k: job[k] for k in ("workload",) if k in job}})
    return results
