"""`hastelm bench`: pp/tg speed and peak memory against the peers, or a speculative workload.

`bench_app`'s callback is the benchmark itself; subcommands (`hastelm bench serve`, the server's
load test) register on `bench_app` and run instead of it.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..console import err, fail
from ..errors import HastelmError
from ..models.registry import DEFAULT_MODEL, resolve_model
from ..system import usable_cores
from . import INSTALL_HINT, require
from .engines import ENGINES, installed

bench_app = typer.Typer(help="Benchmarks: speed and memory against transformers and llama.cpp.",
                        invoke_without_command=True, no_args_is_help=False)
# tables keep their natural width when written to a file or pipe (rich would squeeze them to 80)
out = Console() if sys.stdout.isatty() else Console(width=200)


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    model: str = typer.Option(DEFAULT_MODEL, "-m", "--model", help="alias, .gguf file or Hugging Face folder"),
    engines: str = typer.Option(",".join(ENGINES), "--engines", help="comma list; peers not installed are skipped"),
    prompt_tokens: int = typer.Option(512, "-p", "--n-prompt", help="pp test size (0 skips it)"),
    gen_tokens: int = typer.Option(128, "-n", "--n-gen", help="tg test size (0 skips it)"),
    batch: int = typer.Option(32, "-b", "--batch",
                              help="prompts of -n tokens through LLM.generate, one at a time and batched (0 skips it)"),
    reps: int = typer.Option(5, "-r", "--repetitions", help="timed repetitions after one warm-up"),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="threads per engine (default: all cores)"),
    dtype: str = typer.Option("auto", "--dtype", help="hastelm's mode: auto|fast|float32|bfloat16|invariant"),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda, for hastelm and transformers"),
    speculative: Optional[str] = typer.Option(None, "--speculative", help="comma list of methods, or auto"),
    workload: Optional[str] = typer.Option(None, "--workload", help="humaneval|mixed|FILE.jsonl"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="your own workload (JSONL)"),
    limit: int = typer.Option(40, "--limit", help="first N prompts of each workload category"),
    max_tokens: int = typer.Option(256, "--max-tokens", help="new tokens per workload answer (greedy)"),
    peer_limit: Optional[int] = typer.Option(None, "--peer-limit", help="peers run only the first N per category"),
    rounds: int = typer.Option(1, "--rounds", help="hastelm's workload runs take turns N times (evens out a noisy machine)"),
    context: int = typer.Option(4096, "--ctx", help="context length of every engine in workload runs"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the results as JSON"),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="write a bar chart (PNG/SVG/PDF)"),
) -> None:
    """llama-bench style pp/tg and peak RSS per engine; with --speculative/--workload/--prompts,
    greedy generation over a workload, plain against each speculative method."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        if plot_path:
            require("matplotlib", "hastelm bench --plot")   # before the runs, not after them
        _check_counts({"-r/--repetitions": reps, "--limit": limit, "--max-tokens": max_tokens, "--ctx": context,
                       "--peer-limit": peer_limit or 1, "--rounds": rounds, "--threads": threads or 1})
        from .jobs import Settings
        settings = Settings(resolve_model(model), _engines(engines), threads or usable_cores(), dtype, context,
                            _device(device))
        spec = _workload_spec(workload, prompts, speculative)
        if spec is None:
            _core(settings, prompt_tokens, gen_tokens, reps, batch, json_path, plot_path)
        else:
            methods = _methods(speculative)
            _workload(settings, spec, methods, limit, peer_limit, max_tokens, rounds, json_path, plot_path)
    except HastelmError as exc:
        fail(str(exc))


def _core(s, prompt_tokens: int, gen_tokens: int, reps: int, batch: int, json_path: Optional[Path],
          plot_path: Optional[Path]) -> None:
    from . import report
    from .jobs import core_jobs, run_jobs

    if prompt_tokens < 0 or gen_tokens < 0 or batch < 0 or prompt_tokens + gen_tokens == 0:
        raise HastelmError("-p, -n and -b must be >= 0, and -p and -n not both 0")
    results = run_jobs(core_jobs(s, prompt_tokens, gen_tokens, reps, batch), err)
    rows = [{"engine": r["engine"], "method": r["method"], "dtype": r["dtype"], **test,
             "peak_rss_mb": r["peak_rss_mb"], **_gpu(r), "threads": s.threads}
            for r in results for test in r["tests"]]
    title = f"{s.model.name} · {_where(s)} · {reps} reps after 1 warm-up"
    out.print(report.core_table(rows, title))
    for r in rows:
        if "x_one_at_a_time" in r:
            same = "identical" if r["same_as_one_at_a_time"] else "DIFFERENT"
            out.print(f"{r['engine']} {r['test']}: {r['x_one_at_a_time']:.2f}x one at a time, outputs {same}")
    _save(rows, s, json_path, plot_path, "test", title)


def _workload(s, spec: str, methods: list[str], limit: int, peer_limit: Optional[int], max_tokens: int, rounds: int,
              json_path: Optional[Path], plot_path: Optional[Path]) -> None:
    from . import report
    from .aggregate import workload_rows
    from .jobs import run_jobs, workload_jobs
    from .workloads import load_workload

    items = load_workload(spec, limit)     # fail on a bad file before starting any engine
    err.print(f"[dim]workload {spec}: {len(items)} prompts, {sum(i.requests for i in items)} generations[/]")
    rows = workload_rows(run_jobs(workload_jobs(s, spec, methods, limit, peer_limit, max_tokens, rounds), err))
    turns = f" · {rounds} rounds" if rounds > 1 else ""
    title = f"{Path(spec).name} · greedy, up to {max_tokens} new tokens{turns} · {_where(s)}"
    out.print(report.workload_table(rows, title))
    if any(r["limited"] for r in rows):
        out.print(f"* peers ran the first {peer_limit} prompts of each category; their × plain compares "
                  "with hastelm plain on those prompts")
    _save(rows, s, json_path, plot_path, "category", title, workload=spec, max_tokens=max_tokens, rounds=rounds)


def _gpu(result: dict[str, Any]) -> dict[str, Any]:
    return {"peak_gpu_mb": result["peak_gpu_mb"]} if "peak_gpu_mb" in result else {}


def _save(rows: list[dict[str, Any]], s, json_path: Optional[Path], plot_path: Optional[Path],
          group: str, title: str, **meta: Any) -> None:
    from . import report

    if json_path:
        report.write_json(json_path, rows, {**_meta(s), **meta})
        err.print(f"[dim]wrote {json_path}[/]")
    if plot_path:
        report.plot(plot_path, rows, group, title)
        err.print(f"[dim]wrote {plot_path}[/]")


def _check_counts(values: dict[str, int]) -> None:
    for flag, value in values.items():
        if value < 1:
            raise HastelmError(f"{flag} must be >= 1")


def _device(value: str) -> str:
    import torch

    if value not in ("auto", "cpu", "cuda"):
        raise HastelmError(f"unknown device {value!r} (choose auto, cpu or cuda)")
    if value == "cuda" and not torch.cuda.is_available():
        raise HastelmError("--device cuda: no GPU is available")
    return ("cuda" if torch.cuda.is_available() else "cpu") if value == "auto" else value


def _engines(value: str) -> list[str]:
    names = [e.strip() for e in value.split(",") if e.strip()]
    unknown = [e for e in names if e not in ENGINES]
    if unknown or not names:
        raise HastelmError(f"unknown engine {', '.join(unknown) or value!r} (choose from {', '.join(ENGINES)})")
    missing = [e for e in names if not installed(e)]
    for e in missing:
        err.print(f"[yellow]skipping {e}:[/] not installed ({escape(INSTALL_HINT)})", highlight=False)
    kept = [e for e in names if e not in missing]
    if not kept:
        raise HastelmError("none of the requested engines is installed")
    return kept


def _workload_spec(workload: Optional[str], prompts: Optional[Path], speculative: Optional[str]) -> Optional[str]:
    if workload and prompts:
        raise HastelmError("give either --workload or --prompts, not both")
    if prompts:
        return str(prompts)
    return workload or ("humaneval" if speculative else None)


def _methods(value: Optional[str]) -> list[str]:
    if not value:
        return []
    names = [n for n in dict.fromkeys(m.strip() for m in value.split(",")) if n and n not in ("plain", "none")]
    try:
        from ..decoding.speculative import NAMES
    except ImportError:
        raise HastelmError("speculative decoding is not available in this installation") from None
    kinds = {n.partition(":")[0] for n in NAMES}
    for name in names:
        if name.partition(":")[0] not in kinds:
            raise HastelmError(f"unknown speculative method {name!r} (choose {', '.join(NAMES)})")
    return names


def _where(s) -> str:
    if s.device == "cuda":
        import torch
        return f"CUDA {torch.cuda.get_device_name(0)}"
    return f"{s.threads} threads"


def _meta(s) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("hastelm", "torch", "transformers", "llama_cpp_python"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return {"model": str(s.model), "threads": s.threads, "dtype": s.dtype, "device": s.device, "engines": s.engines,
            "cpu": _cpu_name(), "machine": platform.machine(), "python": sys.version.split()[0],
            "versions": versions, "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()

# `hastelm bench serve` (the server's load test, serve_cli.py) registers here as bench_app.command("serve").
from .serve_cli import serve_bench  # noqa: E402  (the subcommand lives in its own module)

bench_app.command("serve")(serve_bench)
