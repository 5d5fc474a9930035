"""The scheduler jobs of one HTTP request, seen from the event loop.

The scheduler thread hands each event to the loop (`call_soon_threadsafe`); `next()` waits for
one while watching for the client going away, which cancels the jobs and frees their slots.
Metrics are recorded here, where the request's own clock runs.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ..decoding.step import StepResult, TokenLogprob
from ..engine.jobs import Job
from .errors import api_error

DISCONNECT_POLL_S = 0.25


class ClientGone(Exception):
    """The client closed the connection; the jobs were cancelled."""


@dataclass
class Choice:
    """What one job has produced so far."""
    job: Job
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    first_at: float | None = None
    last_at: float | None = None

    def add(self, r: StepResult, now: float) -> None:
        self.text.append(r.text)
        self.tokens += len(r.tokens)
        self.logprobs += r.logprobs or []
        self.finish_reason = r.finish_reason or self.finish_reason
        if r.tokens:
            self.first_at = self.first_at or now
            self.last_at = now


class Generation:
    def __init__(self, state: Any, jobs: list[Job]) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[Job, Any]] = asyncio.Queue()
        self.started = time.perf_counter()
        self.choices = {job.index: Choice(job) for job in jobs}
        self.open = set(jobs)
        self._check_at = time.monotonic() + DISCONNECT_POLL_S
        for job in jobs:
            job.deliver = self._deliver
        try:
            state.scheduler.submit(jobs)
        except Exception as exc:
            state.metrics.count_request("rejected")
            raise api_error(exc) from None
        state.metrics.prompt_tokens.inc(sum(len(j.ids) for j in jobs))

    def _deliver(self, job: Job, event: Any) -> None:      # scheduler thread
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (job, event))
        except RuntimeError:      # the event loop is already closed (server shut down): nobody listens
            pass

    @property
    def finished(self) -> bool:
        return not self.open

    async def next(self, request: Request | None) -> tuple[Choice, StepResult]:
        """The next step of any job; raises APIError if a job failed, ClientGone on disconnect.
        `request` is watched for disconnects (None once a streaming response owns the socket)."""
        while True:
            if request is not None and time.monotonic() >= self._check_at:
                # checked on a clock, not only when idle: a generating job never leaves the queue empty
                self._check_at = time.monotonic() + DISCONNECT_POLL_S
                if await request.is_disconnected():
                    self.cancel()
                    raise ClientGone()
            try:
                job, event = self.events.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    job, event = await asyncio.wait_for(self.events.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    continue
            return self._record(job, event)

    def _record(self, job: Job, event: Any) -> tuple[Choice, StepResult]:
        m = self.state.metrics
        choice = self.choices[job.index]
        if isinstance(event, BaseException):
            self.open.discard(job)
            m.count_request("error")
            self.cancel()
            raise api_error(event)
        now = time.perf_counter()
        if event.tokens and choice.first_at is None:
            m.ttft.observe(now - self.started)
        choice.add(event, now)
        m.count_step(len(event.tokens), event.proposed, event.accepted)
        if event.finish_reason:
            self.open.discard(job)
            m.count_request(event.finish_reason)
            if choice.tokens > 1:
                m.tpot.observe((choice.last_at - choice.first_at) / (choice.tokens - 1))
        return choice, event

    async def run(self, request: Request) -> list[Choice]:
        """Wait for every job to finish (non-streaming responses)."""
        while not self.finished:
            await self.next(request)
        return [self.choices[i] for i in sorted(self.choices)]

    def cancel(self) -> None:
        for job in list(self.open):
            self.state.scheduler.cancel(job)
            self.state.metrics.count_request("cancelled")
        self.open.clear()
