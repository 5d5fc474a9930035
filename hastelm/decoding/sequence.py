"""Per-request decoding state, shared by the engine loop, the scheduler and every strategy."""
from __future__ import annotations

from dataclasses import dataclass, field

from .sampling import Sampler, SamplingParams
from .stopping import StopChecker


@dataclass
class Sequence:
    """Invariant between steps: the cache holds `ids[:-1]`; `ids[-1]` (the pending token) has
    been sampled but not yet run through the model."""
    ids: list[int]
    prompt_len: int
    params: SamplingParams
    sampler: Sampler
    stopper: StopChecker
    slot: int = 0
    index: int = 0
    strategy_state: dict = field(default_factory=dict)   # proposers keep per-request data here

    @property
    def pending(self) -> int:
        return self.ids[-1]

    @property
    def output_ids(self) -> list[int]:
        return self.ids[self.prompt_len:]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two id lists, by bisection on C-speed slice comparisons."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
