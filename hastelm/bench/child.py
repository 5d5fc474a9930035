"""One benchmark job in its own process (`python -m hastelm.bench.child`, job as JSON on stdin).

Imports only the engine it measures, so its peak RSS is that engine's alone. Protocol lines go to
the original stdout; anything the libraries print is sent to stderr instead.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from ..errors import HastelmError
from .memory import EVENT_PREFIX, peak_gpu_mb, peak_rss_mb


def make_engine(job: dict[str, Any]):
    engine, model, method, threads = job["engine"], Path(job["model"]), job["method"], job["threads"]
    if engine == "hastelm":
        from .engines import HastelmEngine
        return HastelmEngine(str(model), method, job["dtype"], threads, job["context"], job.get("device", "cpu"))
    if engine == "transformers":
        from .peers import TransformersEngine
        return TransformersEngine(model, method, threads, job.get("device", "cpu"))
    from .peers import LlamaCppEngine
    return LlamaCppEngine(model, method, threads, job["context"])


def run(job: dict[str, Any], emit) -> dict[str, Any]:
    def progress(done: int, total: int) -> None:
        emit(progress=[done, total])

    engine = make_engine(job)
    if job["kind"] == "core":
        from .runner import core_tests
        result = {"tests": core_tests(engine, job["tests"], job["reps"], progress)}
    else:
        from .conversation import load_tokenizer, run_workload
        from .workloads import load_workload
        items = load_workload(job["workload"], job.get("limit"))
        tokenizer = getattr(engine, "tokenizer", None) or load_tokenizer(Path(job["model"]))
        result = {"records": run_workload(engine, tokenizer, items, job["max_tokens"], progress)}
    return {"engine": engine.engine, "method": engine.method, "dtype": engine.dtype, **result,
            "peak_rss_mb": round(peak_rss_mb(), 1), **peak_gpu_mb()}


def main() -> int:
    job = json.loads(sys.stdin.read())
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)      # C libraries write to fd 1 directly; keep it off the protocol channel

    def emit(**event: Any) -> None:
        events.write(EVENT_PREFIX + json.dumps(event) + "\n")

    try:
        emit(result=run(job, emit))
        return 0
    except HastelmError as exc:
        emit(error=str(exc))
    except Exception as exc:   # a peer library failing: report it in one line, details on stderr
        traceback.print_exc()
        emit(error=f"{type(exc).__name__}: {exc}".splitlines()[0])
    return 1


if __name__ == "__main__":
    sys.exit(main())
