"""Timing: llama-bench's conventions (a warm-up run, repetitions, the median and the spread)."""
from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engines import BatchEngine, Engine

Progress = Callable[[int, int], None]


@dataclass
class Timing:
    samples: list[float]     # tokens/s of each repetition

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"tokens_per_s": self.median, "stdev": self.stdev, "min": min(self.samples),
                "max": max(self.samples), "samples": self.samples, "reps": len(self.samples)}


def measure(once: Callable[[int], float], reps: int, progress: Progress, warmup: int = 1) -> Timing:
    """Run `once(i)` (returns tokens/s) `warmup` times untimed, then `reps` times."""
    total = warmup + reps
    samples = []
    for i in range(total):
        rate = once(i)
        if i >= warmup:
            samples.append(rate)
        progress(i + 1, total)
    return Timing(samples)


def random_ids(n: int, vocab_size: int, seed: int) -> list[int]:
    # a fresh random prompt per repetition, so no engine can reuse a cached prefix
    rng = random.Random(seed)
    return [rng.randrange(vocab_size) for _ in range(n)]


def core_test(engine: Engine, test: str, n: int, reps: int, progress: Progress) -> dict[str, Any]:
    """`pp`: process n random tokens; `tg`: generate n tokens greedily from BOS, ignoring EOS."""
    if test == "pp":
        def once(i: int) -> float:
            ids = random_ids(n, engine.vocab_size, seed=i)
            t = time.perf_counter()
            engine.prompt_eval(ids)
            return n / (time.perf_counter() - t)
    else:
        def once(i: int) -> float:
            gen = engine.generate([engine.bos_id], n, set())
            return len(gen.tokens) / gen.seconds
    return {"test": f"{test}{n}", **measure(once, reps, progress).summary()}


BATCH_PROMPT_TOKENS = 16


def batch_tests(engine: BatchEngine, prompts: int, n: int, reps: int, progress: Progress) -> list[dict[str, Any]]:
    """`prompts` random prompts x `n` greedy tokens: once one prompt at a time, then `reps` times
    in one batched call after a warm-up; the batched outputs must equal the one-at-a-time ones."""
    ids = [random_ids(BATCH_PROMPT_TOKENS, engine.vocab_size, seed=1000 + k) for k in range(prompts)]
    t = time.perf_counter()
    alone = [engine.generate_all([p], n)[0] for p in ids]
    one_rate = sum(map(len, alone)) / (time.perf_counter() - t)
    progress(1, reps + 2)
    same = True

    def once(i: int) -> float:
        nonlocal same
        t = time.perf_counter()
        out = engine.generate_all(ids, n)
        rate = sum(map(len, out)) / (time.perf_counter() - t)
        same = same and out == alone
        return rate

    batched = measure(once, reps, lambda done, total: progress(done + 1, total + 1)).summary()
    name = f"{prompts}x{n}"
    return [{"test": f"one at a time {name}", **Timing([one_rate]).summary()},
            {"test": f"batched {name}", **batched, "x_one_at_a_time": batched["tokens_per_s"] / one_rate,
             "same_as_one_at_a_time": same}]


def core_tests(engine: Engine, tests: list[tuple[str, int]], reps: int, progress: Progress) -> list[dict[str, Any]]:
    """Each test in turn, with one progress count over all of them. `("batch", P)` generates the
    tg test's length for P prompts, one at a time and batched (engines with `generate_all`)."""
    counts = [reps + (2 if test == "batch" else 1) for test, _ in tests]   # progress ticks per test
    total = sum(counts)
    gen = next((n for test, n in tests if test == "tg"), 128)
    results: list[dict[str, Any]] = []
    for k, (test, n) in enumerate(tests):
        step = lambda done, _, before=sum(counts[:k]): progress(before + done, total)
        if test == "batch":
            results += batch_tests(engine, n, gen, reps, step)   # type: ignore[arg-type]
        else:
            results.append(core_test(engine, test, n, reps, step))
    return results
