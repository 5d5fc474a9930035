"""Timing: llama-bench's conventions (a warm-up run, repetitions, the median and the spread)."""
from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engines import Engine

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


def core_tests(engine: Engine, tests: list[tuple[str, int]], reps: int, progress: Progress) -> list[dict[str, Any]]:
    """Each test in turn, with one progress count over all of them."""
    per_test = reps + 1
    total = per_test * len(tests)
    return [core_test(engine, test, n, reps, lambda done, _, k=k: progress(k * per_test + done, total))
            for k, (test, n) in enumerate(tests)]
