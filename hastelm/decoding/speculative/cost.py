"""What a forward over T tokens costs on this machine, measured rather than assumed.

On a 2-core CPU a forward over 8 tokens may cost several 1-token forwards (matmul kernels that
scale with rows); on a GPU, or with a kernel that reuses each weight for many rows, 16 tokens cost
barely more than 1. The controller needs the real curve, so it is measured once per model on first
use (a few forwards appended to the live cache and trimmed again), then tracked as steps run, so
it follows the machine's load.
"""
from __future__ import annotations

import time
import weakref

import torch

from ...engine.runner import ModelRunner, Row
from ...models.transformer import Transformer

POINTS = (1, 2, 4, 8, 16, 32, 64)
REPEATS = 5
STEEP = 6.0             # stop measuring once a forward costs this many 1-token forwards: never pays
TRACK_RATE = 0.05       # weight of one observed step in the running cost


class CostModel:
    def __init__(self, seconds: dict[int, float]) -> None:
        self.points = sorted(seconds)
        self.seconds = dict(seconds)
        self.load = 1.0        # how much slower than when measured the machine runs now

    def forward(self, tokens: int) -> float:
        """Seconds for one forward over `tokens` new tokens (interpolated between measured points)."""
        return self.load * self._measured(tokens)

    def _measured(self, tokens: int) -> float:
        pts = self.points
        if tokens <= pts[0]:
            return self.seconds[pts[0]]
        for lo, hi in zip(pts, pts[1:]):
            if tokens <= hi:
                w = (tokens - lo) / (hi - lo)
                return (1 - w) * self.seconds[lo] + w * self.seconds[hi]
        if len(pts) == 1:      # nothing measured beyond: assume cost grows with tokens
            return self.seconds[pts[0]] * tokens / pts[0]
        lo, hi = pts[-2], pts[-1]
        slope = (self.seconds[hi] - self.seconds[lo]) / (hi - lo)
        return self.seconds[hi] + slope * (tokens - hi)

    def observe(self, tokens: int, seconds: float) -> None:
        """Track a measured step. Other processes slow every size alike, so a step moves one load
        factor, never the curve's shape: moving single points let noise on the sizes that run
        often bend it (a 4-token forward once read as dear as a 16-token one)."""
        measured = self._measured(tokens)
        if measured <= 0:
            return
        ratio = min(max(seconds / measured, 0.33), 3.0)      # one stalled step must not dominate
        self.load *= (ratio / self.load) ** TRACK_RATE


_MODELS: weakref.WeakKeyDictionary[Transformer, CostModel] = weakref.WeakKeyDictionary()


def cost_model(runner: ModelRunner, slot: int, max_tokens: int) -> CostModel:
    """The model's cost curve, measured on first use (shared by every strategy on the model)."""
    if runner.model not in _MODELS:
        _MODELS[runner.model] = measure(runner, slot, max_tokens)
    return _MODELS[runner.model]


def measure(runner: ModelRunner, slot: int, max_tokens: int) -> CostModel:
    """Time forwards of T tokens after the slot's cached prefix, then trim them away.

    The sizes take turns, round after round, and each keeps its best time: a stretch of noise
    from other processes then slows every size alike instead of skewing the curve's shape."""
    cache = runner.cache
    room = cache.capacity - cache.length(slot)
    points = [t for t in POINTS if t <= min(max_tokens, room)] or [1]
    base = cache.length(slot)
    dev = runner.device

    def run(t: int) -> float:
        # priced as a tree (masked attention), the form most verification forwards take
        row = Row(slot, [0] * t, base, mask=torch.ones(t, t, dtype=torch.bool).tril() if t > 1 else None)
        _sync(dev)
        t0 = time.perf_counter()
        runner.forward([row])
        _sync(dev)
        seconds = time.perf_counter() - t0
        cache.trim(t, slot)
        return seconds

    for t in points:                                # warms caches and allocators
        run(t)
    seconds = {t: float("inf") for t in points}
    for _ in range(REPEATS):
        for t in list(seconds):
            seconds[t] = min(seconds[t], run(t))
            if seconds[t] > STEEP * seconds[points[0]]:    # this size never pays: stop here
                seconds = {p: s for p, s in seconds.items() if p <= t}
                break
    # a bigger forward never costs less than a smaller one; noise can say otherwise
    measured = sorted(seconds)
    for lo, hi in zip(measured, measured[1:]):
        seconds[hi] = max(seconds[hi], seconds[lo])
    return CostModel(seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
