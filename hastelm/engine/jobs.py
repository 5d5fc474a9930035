"""What the scheduler is given: a `Job` per sequence to generate, delivered its results through a
callback, and the errors that end jobs without a model fault."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..decoding.choices import Strategy
from ..decoding.sampling import SamplingParams
from ..decoding.sequence import Sequence
from ..decoding.step import StepResult, TokenLogprob
from ..errors import HastelmError

Event = StepResult | BaseException
Deliver = Callable[["Job", Event], None]


class QueueFullError(HastelmError):
    """The waiting queue is full; the caller should retry later."""


class SchedulerStopped(HastelmError):
    """The scheduler was shut down before the request finished."""


@dataclass(eq=False)
class Job:
    """One sequence to generate. `deliver` is called from the scheduler thread with each
    `StepResult`, or once with an exception that ends the job."""
    ids: list[int]
    params: SamplingParams
    deliver: Deliver
    index: int = 0
    speculative: str | None = None
    prompt_logprobs: int | None = None     # also score the prompt, with this many alternatives
    score_only: bool = False               # end after the prompt (echo with max_tokens=0)
    # set by the scheduler
    prompt_scores: list[TokenLogprob | None] = field(default_factory=list)
    seq: Sequence | None = None
    strategy: Strategy | None = None
    twin: Job | None = None        # a running job with the same prompt: its prefill is copied, not redone
    cancelled: bool = False
    done: bool = False

    def cancel(self) -> None:
        self.cancelled = True
