"""Continuous batching of many requests over one model, one synchronous `step()` at a time.

The scheduler owns a `ModelRunner` (and through it a KV cache of `max_batch` slots). Every `step()`
1. drops cancelled requests and frees their slots,
2. admits queued requests into free slots (a slot whose cache still holds a prefix of the new
   prompt, in whole prefill chunks, keeps it: multi-turn chats skip what they already computed;
   a request whose prompt equals a running one's, as the n choices of one request do, copies
   that prompt's cache entries once they are computed instead of computing them again),
3. prefills prompts in chunks of `prefill_chunk` tokens (at most about two chunks' worth per
   step, so a long prompt never stalls the streams already running for long), the chunks of
   several new requests together in one padded forward,
4. runs one decode step for every request past its prefill: plain requests share one batched
   forward (`PlainDecoding.step_batch`); requests with the same speculative proposer verify their
   draft trees together in one forward (`SpeculativeDecoding.step_batch`).

`LLM.generate` and `LLM.stream` call `step()` until their requests finish; the server calls it
from its own thread (`server/worker.py`). Results reach each job through its `deliver` callback.

Prefill covers `ids[:-1]`; the last prompt token is the sequence's pending token, so the first
output token comes from an ordinary decode step, the same path as every later token. Chunk
boundaries are multiples of `prefill_chunk` whatever else is running, so a request's numerics do
not depend on its neighbours.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

from ..decoding.choices import DecodingChoices
from ..decoding.plain import PlainDecoding, StepOutcome
from ..decoding.sampling import top_logprobs
from ..decoding.sequence import common_prefix
from ..decoding.step import StepResult, TokenLogprob
from ..errors import HastelmError, InvalidParameterError
from ..formats.tokenizer import Tokenizer
from ..kv.policies import KVPolicyConfig
from ..models.transformer import Transformer
from .jobs import Job, QueueFullError
from .runner import ModelRunner, Row
from .sequence import apply_step, start_sequence

log = logging.getLogger("hastelm.scheduler")
_KV_PLAIN_ONLY = "kv eviction (kv_policy) runs with plain decoding only: speculative methods are not supported with it yet"

class Scheduler:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, context_length: int, choices: DecodingChoices, *,
                 max_batch: int = 8, max_queue: int = 64, prefill_chunk: int = 256,
                 kv_policy: KVPolicyConfig | None = None) -> None:
        """`choices`: the decoding methods a job may name (a job may also bring its own strategy);
        `kv_policy`: evict cache entries (plain decoding only; slots then keep no prefix between
        requests, since what an evicting slot holds is no longer a prefix)."""
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise HastelmError("max_batch and prefill_chunk must be >= 1, max_queue >= 0")
        if kv_policy is not None and len(choices.names) > 1:
            raise InvalidParameterError(_KV_PLAIN_ONLY)
        self.kv_policy = kv_policy
        self.model, self.tokenizer, self.context_length = model, tokenizer, context_length
        self.choices = choices
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.runner = ModelRunner(model, context_length, slots=max_batch, kv_policy=kv_policy)
        self.cache = self.runner.cache
        self.queue: deque[Job] = deque()
        self.slots: list[Job | None] = [None] * max_batch
        self.cached_ids: list[list[int]] = [[] for _ in range(max_batch)]   # what a free slot's cache holds
        self.lock = threading.Condition()      # submit/cancel may come from other threads
        self.decode_steps = 0       # batched plain forwards run, and the rows they carried (mean batch size)
        self.decode_rows = 0
        self.peak_batch = 0

    # ---- requests in ------------------------------------------------------------------------
    def submit(self, jobs: list[Job]) -> None:
        """Queue all of `jobs` or none: raises QueueFullError when they do not fit."""
        with self.lock:
            room = self.max_queue + self.free_slots - len(self.queue)
            if len(jobs) > room:
                raise QueueFullError(f"server busy: {len(self.queue)} requests waiting "
                                     f"(limit {self.max_queue}); retry later")
            self.queue.extend(jobs)
            self.lock.notify()

    def cancel(self, job: Job) -> None:
        """Stop generating for `job` and free its slot (at the next step boundary)."""
        with self.lock:
            job.cancel()
            self.lock.notify()

    @property
    def has_work(self) -> bool:
        return bool(self.queue) or self.running > 0

    @property
    def free_slots(self) -> int:
        return sum(j is None for j in self.slots)

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    @property
    def running(self) -> int:
        return self.max_batch - self.free_slots

    def clear_prefixes(self) -> None:
        """Forget what free slots hold: the next requests compute their prompts from scratch."""
        with self.lock:
            for slot, job in enumerate(self.slots):
                if job is None:
                    self.cache.reset(slot)
                    self.cached_ids[slot] = []

    # ---- one step ------------------------------------------------------------------------------
    def step(self) -> None:
        """Retire, admit, prefill and decode once. A failure fails the requests it touched, never
        the scheduler: the next step serves the rest."""
        with self.lock:
            try:
                self._reap()
                self._admit()
            except Exception as exc:
                self._fail_running(exc)
        try:
            self._copy_twins()
            self._prefill()
            self._copy_twins()
            self._decode()
            self._evict()
        except Exception as exc:
            self._fail_running(exc)

    def fail_all(self, exc: BaseException) -> None:
        """End every queued and running job with `exc` (shutdown, or a crashed serving thread)."""
        with self.lock:
            pending = list(self.queue) + [j for j in self.slots if j is not None]
            self.queue.clear()
        for job in pending:
            self._fail(job, exc)

    def _fail_running(self, exc: Exception) -> None:
        log.exception("scheduler step failed", exc_info=exc)
        for job in [j for j in self.slots if j is not None]:
            self._fail(job, exc)

    def _reap(self) -> None:
        for job in [j for j in self.queue if j.cancelled]:
            self.queue.remove(job)
        for job in self.slots:
            if job is not None and job.cancelled:
                self._release(job)

    def _admit(self) -> None:
        while self.queue and self.free_slots:
            job = self.queue.popleft()
            slot = self._slot_for(job)
            self.slots[slot] = job
            try:
                job.strategy = job.strategy or self.choices.resolve(job.speculative)
                if self.kv_policy is not None and not isinstance(job.strategy, PlainDecoding):
                    raise InvalidParameterError(_KV_PLAIN_ONLY)
                job.seq = start_sequence(job.ids, job.params, self.tokenizer, self.context_length,
                                         self.model.config.vocab_size, slot=slot, index=job.index)
            except Exception as exc:
                self._fail(job, exc)
                continue
            if job.prompt_logprobs is not None:
                job.prompt_scores = [None]        # nothing predicts the first prompt token
            else:
                job.twin = self._twin_of(job)

    def _twin_of(self, job: Job) -> Job | None:
        """A running job with the same prompt whose cache will hold it (n choices, or the same
        prompt sent many times): the prompt is then computed once and copied."""
        prompt = job.ids[:-1]
        if self._todo(job) == 0 or self.kv_policy is not None:   # holds it already / will evict it
            return None
        for other in self.slots:
            if (other is not None and other is not job and other.seq is not None and other.twin is None
                    and other.prompt_logprobs is None and other.ids[:-1] == prompt):
                return other
        return None

    def _copy_twins(self) -> None:
        """Followers whose twin has its prompt cached copy it; a twin that ended early leaves its
        follower to prefill on its own."""
        for job in self.slots:
            if job is None or job.twin is None or job.seq is None:
                continue
            twin, need = job.twin, len(job.ids) - 1
            if twin.done or twin.seq is None:
                job.twin = None
            elif self.cache.length(twin.seq.slot) >= need:
                self.cache.copy_prefix(twin.seq.slot, job.seq.slot, need)
                job.twin = None

    def _slot_for(self, job: Job) -> int:
        """The free slot whose cache holds the longest prefix of the job's prompt (in whole chunks,
        so what is left is computed exactly as a fresh prefill would); that prefix stays cached."""
        best, keep = -1, -1
        for slot, held in enumerate(self.slots):
            if held is None:
                n = 0 if job.prompt_logprobs is not None or self.kv_policy is not None else \
                    common_prefix(self.cached_ids[slot], job.ids[:-1])
                n = n // self.prefill_chunk * self.prefill_chunk
                if n > keep:
                    best, keep = slot, n
        if keep > 0:
            self.cache.trim(self.cache.length(best) - keep, best)
        else:
            self.cache.reset(best)
        self.cached_ids[best] = []
        return best

    def _prefilling(self) -> list[Job]:
        return [j for j in self.slots if j is not None and j.seq and j.twin is None and self._todo(j) > 0]

    def _todo(self, job: Job) -> int:
        return len(job.seq.ids) - 1 - self.cache.seen(job.seq.slot)     # seen: evicted entries count

    def _prefill(self) -> None:
        """The next chunk of each prefilling request, about two chunks' worth of tokens per
        step, in one padded forward: each row computes exactly what it would alone (matmul
        rows are batch-independent; each row gets its own attention)."""
        budget = 2 * self.prefill_chunk
        chunks: list[tuple[Job, int, int]] = []
        for job in self._prefilling():
            if budget <= 0:
                break
            slot, c = job.seq.slot, self.prefill_chunk
            lo = self.cache.seen(slot)
            hi = min(len(job.ids) - 1, (lo // c + 1) * c)
            if job.prompt_logprobs is not None:
                self._run_prefill([(job, lo, hi)])     # scoring needs every position's logits
            else:
                chunks.append((job, lo, hi))
            budget -= hi - lo
        if chunks:
            self._run_prefill(chunks)

    def _run_prefill(self, chunks: list[tuple[Job, int, int]]) -> None:
        try:
            self._forward_chunks(chunks)
        except Exception as exc:
            for job, _, _ in chunks:
                self._fail(job, exc)

    def _forward_chunks(self, chunks: list[tuple[Job, int, int]]) -> None:
        """Run chunks `ids[lo:hi]` of several requests into their slots in one forward."""
        job, lo, hi = chunks[0]
        scoring = job.prompt_logprobs is not None
        logits = self.runner.forward([Row(j.seq.slot, j.ids[lo:hi], lo) for j, lo, hi in chunks], last_only=not scoring)
        if scoring:
            for i, tok in enumerate(job.ids[lo + 1:hi + 1]):
                job.prompt_scores.append(TokenLogprob(tok, *top_logprobs(logits[0, i], tok, job.prompt_logprobs)))

    def _decode(self) -> None:
        ready = [j for j in self.slots if j is not None and j.seq and self._todo(j) == 0]
        for job in [j for j in ready if j.score_only]:
            self._emit(job, StepResult(job.index, [], "", finish_reason="length"))
        ready = [j for j in ready if not j.score_only]
        groups: dict[int, list[Job]] = {}
        for job in ready:       # one forward per strategy: plain rows together, each proposer's trees together
            groups.setdefault(id(job.strategy), []).append(job)
        for jobs in groups.values():
            strategy = jobs[0].strategy
            if isinstance(strategy, PlainDecoding):
                self.decode_steps += 1
                self.decode_rows += len(jobs)
                self.peak_batch = max(self.peak_batch, len(jobs))
            t0 = time.perf_counter()
            try:
                outcomes = strategy.step_batch(self.runner, [j.seq for j in jobs])
            except Exception as exc:
                for job in jobs:
                    self._fail(job, exc)
                continue
            elapsed = time.perf_counter() - t0
            for job, outcome in zip(jobs, outcomes):
                self._advance(job, outcome, elapsed)

    def _evict(self) -> None:
        """Compress the slots over their KV budget (ratio budgets wait for the whole prompt)."""
        if self.kv_policy is None:
            return
        jobs = [j for j in self.slots if j is not None and j.seq is not None and not j.done]
        self.runner.apply_kv_policy([j.seq.slot for j in jobs], [self._todo(j) > 0 for j in jobs])

    def _advance(self, job: Job, outcome: StepOutcome, elapsed: float) -> None:
        try:
            result = apply_step(job.seq, outcome, elapsed)
        except Exception as exc:
            self._fail(job, exc)
            return
        self._emit(job, result)

    def _emit(self, job: Job, result: StepResult) -> None:
        if result.finish_reason is not None:
            self._release(job, finished=True)
        if not job.cancelled:
            job.deliver(job, result)

    def _fail(self, job: Job, exc: BaseException) -> None:
        self._release(job)
        if not job.cancelled:
            job.deliver(job, exc)

    def _release(self, job: Job, finished: bool = False) -> None:
        """Free the job's slot; a finished job's cache stays as a prefix for the next request."""
        job.done = True
        if job not in self.slots:
            return
        slot = self.slots.index(job)
        self.slots[slot] = None
        seq = job.seq
        if finished and seq is not None and job.prompt_logprobs is None and self.kv_policy is None:
            # the cache holds ids[:-1] (or more, when a stop string cut accepted tokens)
            held = min(self.cache.length(slot), len(seq.ids) - 1)
            self.cache.trim(self.cache.length(slot) - held, slot)
            self.cached_ids[slot] = seq.ids[:held]
        else:
            self.cache.reset(slot)
            self.cached_ids[slot] = []
        if job.strategy is not None and seq is not None:
            try:
                job.strategy.release(seq)
            except Exception:     # e.g. a proposer's file could not be written: the request is done anyway
                log.exception("releasing a request's decoding state failed")
