"""What one forward costs on this machine: `python -m hastelm.bench.step_cost [-m MODEL]`.

Prints the cost curve the speculative controller measures (`cost.measure`: the best of a few
forwards over a draft of T tokens after a cached prefix) and the median cost of one decode step
for B requests together (the server's continuous batch), in milliseconds and as a multiple of a
one-token step. Nothing here goes into tests.
"""
from __future__ import annotations

import statistics
import time

import torch
import typer

from ..console import fail
from ..decoding.speculative.cost import POINTS, CostModel, measure
from ..engine import LLM
from ..engine.runner import ModelRunner, Row
from ..errors import HastelmError
from ..models.transformer import Transformer

BATCHES = (1, 2, 4, 8, 16)


def median_ms(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def batch_ms(model: Transformer, prefix: int, rows: int, repeats: int) -> float:
    runner = ModelRunner(model, prefix + 1, slots=rows)
    for s in range(rows):
        runner.forward([Row(s, [0] * prefix, 0)], last_only=True)

    def run() -> None:
        runner.decode(range(rows), [0] * rows, [prefix] * rows)
        for s in range(rows):
            runner.cache.trim(1, s)
    return median_ms(run, repeats)


def curve(model: Transformer, prefix: int = 200) -> CostModel:
    """The controller's cost curve (`cost.measure`), measured after `prefix` cached tokens."""
    runner = ModelRunner(model, prefix + POINTS[-1])
    runner.forward([Row(0, [0] * prefix, 0)], last_only=True)
    return measure(runner, 0, POINTS[-1])


app = typer.Typer(add_completion=False)


@app.command(help=" ".join(__doc__.split("\n\n")[0].split()))   # the first paragraph
def main(
    model: str = typer.Option("smollm2-135m", "-m", "--model"),
    prefix: int = typer.Option(200, "--prefix", help="cached tokens before the measured step"),
    repeats: int = typer.Option(30, "--repeats"),
) -> None:
    try:
        transformer = LLM(model).model
    except HastelmError as exc:
        fail(str(exc))
    costs = curve(transformer, prefix)
    one = costs.seconds[1] * 1e3
    print(f"{'draft tokens':>12} {'ms':>8} {'x 1 token':>10}")
    for t in costs.points:
        ms = costs.seconds[t] * 1e3
        print(f"{t:>12} {ms:>8.2f} {ms / one:>9.2f}x")
    print(f"\n{'batch rows':>12} {'ms':>8} {'x 1 row':>10}")
    batch = {b: batch_ms(transformer, prefix, b, repeats) for b in BATCHES}
    for b, ms in batch.items():
        print(f"{b:>12} {ms:>8.2f} {ms / batch[1]:>9.2f}x")


if __name__ == "__main__":
    app(prog_name="python -m hastelm.bench.step_cost")
