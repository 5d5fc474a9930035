"""Microbenchmark of the int4 GEMM: `python -m hastelm.kernels.bench [--threads 2]`.

Prints, per weight shape and number of activation rows M, the time of torch's int4 op
(`_weight_int4pack_mm_for_cpu`), hastelm's kernel and a dense bf16 `F.linear` on the same
(dequantized) weight. Each figure is the median of many timed calls, which filters out the
stalls other processes sharing the machine cause; with `--threads 1` the clock is this thread's
CPU time, which other processes cannot inflate at all.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
import typer

from ..console import fail
from ..formats.ggml_blocks import int4_matmul, pack_int4_for_cpu
from .cpu import int4_gemm, native, pack_int4

SHAPES = ((3072, 576), (960, 576), (576, 1536))
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 512)


def median_us(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter,
              calls: int = 50, min_s: float = 0.1) -> float:
    """Median time of one call over at least `calls` calls and `min_s` seconds, in microseconds.

    Per-call medians ignore the multi-millisecond stalls a shared machine inflicts on a few calls
    (a thread of the pool descheduled at a barrier), which would dominate a mean.
    """
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < calls or time.perf_counter() - start < min_s:
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times) * 1e6


def random_weight(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    scale = torch.rand(n, k // 32, generator=g) * 0.02
    offset = -8 * scale + torch.randn(n, k // 32, generator=g) * 1e-3
    return q, scale, offset


def bench_shape(n: int, k: int, rows: tuple[int, ...], clock: Callable[[], float],
                calls: int) -> list[tuple[int, float, float, float]]:
    q, scale, offset = random_weight(n, k)
    tpacked, tsz = pack_int4_for_cpu(q, scale, offset)
    ours = pack_int4(q, scale, offset) if native() is not None else None
    dense = (q.float().view(n, k // 32, 32) * scale[..., None] + offset[..., None]).view(n, k).bfloat16()
    out = []
    for m in rows:
        x = torch.randn(m, k).bfloat16()
        t_torch = median_us(lambda: int4_matmul(x, tpacked, tsz), clock, calls)
        t_ours = median_us(lambda: int4_gemm(x, ours), clock, calls) if ours is not None else float("nan")
        t_dense = median_us(lambda: F.linear(x, dense), clock, calls)
        out.append((m, t_torch, t_ours, t_dense))
    return out


app = typer.Typer(add_completion=False)


@app.command(help=" ".join(__doc__.split("\n\n")[0].split()),   # the first paragraph
             context_settings={"allow_extra_args": True})
def main(
    ctx: typer.Context,
    threads: int = typer.Option(2, "--threads"),
    rows: Optional[list[int]] = typer.Option(
        None, "--rows", show_default=" ".join(map(str, ROWS)),
        help="activation rows M: --rows 1 8 512 (or --rows 1 --rows 8)"),
    calls: int = typer.Option(50, "--calls", help="timed calls per figure (the median counts)"),
) -> None:
    # a click option takes one value; the values after the first of `--rows 1 8 512` arrive as
    # extra arguments (argparse's nargs="*", which this command had, took them all)
    if ctx.args and not rows:
        fail(f"unexpected argument {ctx.args[0]!r} (row counts go after --rows: --rows 1 8 512)")
    try:
        rows = [*(rows or ROWS), *(int(a) for a in ctx.args)]
    except ValueError:
        fail(f"--rows takes whole numbers: {' '.join(ctx.args)!r}")
    if threads < 1 or calls < 1 or min(rows) < 1:
        fail("--threads, --calls and --rows must be >= 1")
    torch.set_num_threads(threads)
    if native() is None:
        print("hastelm int4 kernel unavailable here (see warnings); only torch columns are measured")
    # one thread runs in this thread, so its CPU time is the cost without other processes' share
    clock = time.thread_time if threads == 1 else time.perf_counter
    kind = "thread CPU time" if threads == 1 else "wall time"
    print(f"threads={threads}; median {kind} of one call, in microseconds (>= {calls} calls)")
    for n, k in SHAPES:
        print(f"\nweight {n}x{k}")
        print(f"{'M':>5} {'torch int4':>11} {'hastelm':>9} {'dense bf16':>11} {'vs torch':>9} {'vs own M=1':>11}")
        measured = bench_shape(n, k, tuple(rows), clock, calls)
        base = measured[0][2]
        for m, a, b, c in measured:
            print(f"{m:>5} {a:>11.1f} {b:>9.1f} {c:>11.1f} {a / b:>8.2f}x {b / base:>10.2f}x")


if __name__ == "__main__":
    app(prog_name="python -m hastelm.kernels.bench")
