"""Peak resident memory, measured honestly: every engine runs in a process of its own, which reports
its own high-water mark, so one engine's allocations never count against another."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from ..errors import HastelmError

EVENT_PREFIX = "@hastelm-bench "   # marks the child's protocol lines among anything else on stdout


class BenchError(HastelmError):
    """A benchmark process failed; the message is the child's own one-line reason."""


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024   # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def peak_gpu_mb() -> dict[str, float]:
    """`{"peak_gpu_mb": ...}` where this process used CUDA (torch's allocator high-water mark), else {}."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def run_isolated(job: dict[str, Any], on_progress: Callable[[int, int], None]) -> dict[str, Any]:
    """Run `job` in a fresh `python -m hastelm.bench.child`; returns its result, or raises BenchError."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([sys.executable, "-m", "hastelm.bench.child"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=errors, text=True)
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        result, failure = None, None
        for line in proc.stdout:
            if not line.startswith(EVENT_PREFIX):
                continue
            event = json.loads(line[len(EVENT_PREFIX):])
            if "progress" in event:
                on_progress(*event["progress"])
            result = event.get("result", result)
            failure = event.get("error", failure)
        code = proc.wait()
        if result is not None and code == 0:
            return result
        errors.seek(0)
        tail = [ln for ln in errors.read().splitlines() if ln.strip()]
        reason = failure or (tail[-1] if tail else f"exit status {code}")
        raise BenchError(f"{job['engine']} ({job.get('method', 'plain')}): {reason}")
