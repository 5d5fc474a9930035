"""What one forward costs on this machine: `python -m hastelm.bench.step_cost [-m MODEL]`.

Prints the cost curve the speculative controller measures (one forward over a draft of T tokens
after a cached prefix) and the cost of one decode step for B requests together (the server's
continuous batch), in milliseconds and as a multiple of a one-token step. Medians of repeated
runs; nothing here goes into tests.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ..decoding.speculative.cost import POINTS
from ..engine import LLM
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


def tree_ms(model: Transformer, prefix: int, tokens: int, repeats: int) -> float:
    cache = model.new_cache(prefix + tokens)
    model(torch.zeros(1, prefix, dtype=torch.long), torch.arange(prefix)[None], cache)
    mask = torch.ones(tokens, tokens, dtype=torch.bool).tril()

    def run() -> None:
        model(torch.zeros(1, tokens, dtype=torch.long), torch.arange(prefix, prefix + tokens)[None], cache,
              tree_mask=mask if tokens > 1 else None)
        cache.trim(tokens)
    return median_ms(run, repeats)


def batch_ms(model: Transformer, prefix: int, rows: int, repeats: int) -> float:
    cache = model.new_cache(prefix + 1, slots=rows)
    for s in range(rows):
        model(torch.zeros(1, prefix, dtype=torch.long), torch.arange(prefix)[None], cache, slots=[s])

    def run() -> None:
        model(torch.zeros(rows, 1, dtype=torch.long), torch.full((rows, 1), prefix), cache, slots=list(range(rows)))
        for s in range(rows):
            cache.trim(1, s)
    return median_ms(run, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("--prefix", type=int, default=200, help="cached tokens before the measured step")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    model = LLM(args.model).model
    one = tree_ms(model, args.prefix, 1, args.repeats)
    print(f"{'draft tokens':>12} {'ms':>8} {'x 1 token':>10}")
    for t in POINTS[:6]:
        ms = one if t == 1 else tree_ms(model, args.prefix, t, args.repeats)
        print(f"{t:>12} {ms:>8.2f} {ms / one:>9.2f}x")
    print(f"\n{'batch rows':>12} {'ms':>8} {'x 1 row':>10}")
    for b in BATCHES:
        ms = batch_ms(model, args.prefix, b, args.repeats)
        print(f"{b:>12} {ms:>8.2f} {ms / one:>9.2f}x")


if __name__ == "__main__":
    main()
