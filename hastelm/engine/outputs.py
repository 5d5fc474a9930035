"""Gathering one request's step results into the `Completion` the Python API returns."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..decoding.step import Completion, StepResult, TokenLogprob
from .jobs import Event, Job


@dataclass
class Collector:
    """Receives a job's events (its `deliver` callback) and builds its `Completion`."""
    index: int
    prompt: str
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str = "length"
    error: BaseException | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    first_at: float | None = None
    last_at: float | None = None
    steps: int = 0            # decode steps after the one that gave the first token
    accepted: int = 0
    proposed: int = 0

    def deliver(self, job: Job, event: Event) -> None:
        if isinstance(event, BaseException):
            self.error = event
            return
        now = time.perf_counter()
        self._add(event, now)

    def _add(self, r: StepResult, now: float) -> None:
        if self.first_at is None:
            self.first_at = now
        else:
            self.steps += 1
        self.accepted += r.accepted      # the first step may verify drafts too
        self.proposed += r.proposed
        self.last_at = now
        self.tokens += r.tokens
        self.text.append(r.text)
        if r.logprobs:
            self.logprobs = (self.logprobs or []) + r.logprobs
        self.finish_reason = r.finish_reason or self.finish_reason

    def completion(self, wants_logprobs: bool) -> Completion:
        first = self.first_at or self.submitted_at
        return Completion(self.index, self.prompt, "".join(self.text), self.tokens, self.prompt_tokens,
                          self.finish_reason, first - self.submitted_at, (self.last_at or first) - first,
                          self.steps, self.accepted, self.proposed,
                          (self.logprobs or []) if wants_logprobs else None)
