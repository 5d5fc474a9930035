"""`LLM`: load a model once; generate (batched), stream and chat, all through one `Scheduler`."""
from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from ..decoding.choices import DecodingChoices, Strategy
from ..decoding.plain import PlainDecoding
from ..decoding.sampling import SamplingParams
from ..decoding.step import Completion, StepResult
from ..errors import ContextOverflowError, HastelmError, InvalidParameterError
from ..kv.policies import DEFAULT_INTERVAL, make_kv_config
from ..models.loader import load_model
from ..models.registry import DEFAULT_MODEL
from .runner import PREFILL_CHUNK
from .jobs import Job
from .scheduler import Scheduler
from .outputs import Collector

if TYPE_CHECKING:
    from ..decoding.speculative import Target

UNBOUNDED = sys.maxsize   # the Python API queues every prompt it is given


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HastelmError("CUDA was requested but no GPU is available")
    return torch.device(device)


def resolve_mode(dtype: str, device: torch.device) -> str:
    modes = {"auto": "fast" if device.type == "cpu" else "bfloat16", "fast": "fast",
             "float32": "float32", "bfloat16": "bfloat16", "invariant": "invariant"}
    if dtype not in modes:
        raise InvalidParameterError(f"unknown dtype {dtype!r} (choose auto, fast, float32, bfloat16 or invariant)")
    return modes[dtype]


class LLM:
    """A loaded model.

    `model`: a `.gguf` path, a Hugging Face folder, or an alias (`smollm2-135m`, `gemma3-270m`).
    `dtype`: "auto" (packed int4 + bf16 on CPU, bf16 on GPU), "float32" (exact reference), "bfloat16".
    `speculative`: default speculative proposer for every call (see `hastelm.decoding.speculative`).
    `max_batch`: requests decoded together by `generate` (continuous batching, one cache slot each).
    `kv_policy`, `kv_budget`, `kv_interval`: KV-cache eviction (`streamingllm`, `h2o`, `snapkv`,
    `pyramidkv`, `adakv`; a budget ratio in (0, 1] of the tokens seen, or a token count; compress
    when a cache exceeds it by `kv_interval`), fixed for this `LLM`; plain decoding only.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, dtype: str = "auto", device: str = "auto",
                 context_length: int | None = None, speculative: str | None = None, max_batch: int = 16,
                 kv_policy: str | None = None, kv_budget: float | int | str | None = None,
                 kv_interval: int = DEFAULT_INTERVAL,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.device = resolve_device(device)
        self.mode = resolve_mode(dtype, self.device)
        if context_length is not None and context_length < 1:
            raise InvalidParameterError(f"context_length must be >= 1, got {context_length}")
        if max_batch < 1:
            raise InvalidParameterError(f"max_batch must be >= 1, got {max_batch}")
        self.kv_policy = make_kv_config(kv_policy, kv_budget, kv_interval)    # before the slow load
        if self.kv_policy is not None and speculative and speculative not in ("none", "plain"):
            raise InvalidParameterError("kv eviction (kv_policy) runs with plain decoding only: "
                                        "speculative methods are not supported with it yet")
        loaded = load_model(model, self.mode, self.device, progress)
        self.model, self.tokenizer, self.config = loaded.model, loaded.tokenizer, loaded.config
        if self.kv_policy is not None and self.kv_policy.policy.per_head and self.config.sliding_window is not None:
            raise InvalidParameterError(f"kv policy {self.kv_policy.policy.name} keeps different entries per head, "
                                        "which sliding-window models do not support yet (use streamingllm)")
        self.name, self.path = loaded.name, loaded.path
        limit = self.config.max_position_embeddings
        self.context_length = min(context_length or limit, limit)
        self.max_batch = max_batch
        self.plain = PlainDecoding()
        self.default_speculative = speculative
        self._strategies: dict[str, Strategy] = {}
        self._scheduler: Scheduler | None = None
        if speculative:
            self.strategy(speculative)   # fail early on an unknown proposer

    # ---- strategies -------------------------------------------------------------------
    def strategy(self, speculative: str | None) -> Strategy:
        """The strategy for a method name (built once, then kept: the Python caller is the operator)."""
        if not speculative or speculative in ("none", "plain"):
            return self.plain
        if speculative not in self._strategies:
            from ..decoding.speculative import make_strategy
            self._strategies[speculative] = make_strategy(speculative, self.target)
        return self._strategies[speculative]

    @property
    def target(self) -> "Target":
        """What proposers may use of this model (see `decoding.speculative.Target`)."""
        from ..decoding.speculative import Target
        return Target(self.model, self.tokenizer, self.config.vocab_size, self.mode, self.device)

    def _resolve(self, speculative: str | Strategy | None) -> Strategy:
        if speculative is None or isinstance(speculative, str):
            return self.strategy(speculative if speculative is not None else self.default_speculative)
        return speculative

    @property
    def scheduler(self) -> Scheduler:
        """The one scheduler every call of this `LLM` runs through (its cache is made on first use)."""
        if self._scheduler is None:
            self._scheduler = Scheduler(self.model, self.tokenizer, self.context_length,
                                        DecodingChoices(self.strategy, []), max_batch=self.max_batch,
                                        max_queue=UNBOUNDED, prefill_chunk=PREFILL_CHUNK, kv_policy=self.kv_policy)
        return self._scheduler

    def clear_prefix_cache(self) -> None:
        """Forget cached prompt prefixes (the next calls compute their prompts from scratch)."""
        if self._scheduler is not None:
            self._scheduler.clear_prefixes()

    # ---- text helpers -----------------------------------------------------------------
    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise InvalidParameterError("the prompt is empty")
        if len(ids) >= self.context_length:
            raise ContextOverflowError(f"the prompt has {len(ids)} tokens but the context holds "
                                       f"{self.context_length}")
        return ids

    def chat_prompt(self, messages: list[dict[str, Any]], system: str | None = None) -> list[int]:
        if not messages:
            raise InvalidParameterError("messages must not be empty")
        if system and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": system}, *messages]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        bos = self.tokenizer.bos_id
        has_bos = bos is not None and text.startswith(self.tokenizer.token_text(bos))
        return self.encode_prompt(self.tokenizer.encode(text, add_special=not has_bos))

    # ---- public API ---------------------------------------------------------------------
    def generate(self, prompts: str | list[int] | list[str | list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None, *,
                 speculative: str | Strategy | list[str | Strategy | None] | None = None,
                 progress: bool | None = None) -> list[Completion]:
        """Complete every prompt (text or token ids), all continuously batched; one `Completion`
        per prompt, in order. `params` and `speculative` may be one value or one per prompt.
        `progress`: a progress bar on stderr (default: for several prompts, on a terminal)."""
        single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int))
        batch = [prompts] if single else list(prompts)
        plist = _per_prompt(params or SamplingParams(), len(batch), "params")
        slist = _per_prompt(speculative, len(batch), "speculative")
        encoded = [self.encode_prompt(p) for p in batch]   # validate all before running any
        strategies = [self._resolve(s) for s in slist]
        collectors = [Collector(i, p if isinstance(p, str) else self.tokenizer.decode(ids), len(ids))
                      for i, (p, ids) in enumerate(zip(batch, encoded))]
        jobs = [Job(ids, p, deliver=c.deliver, index=i, strategy=st)
                for i, (ids, p, c, st) in enumerate(zip(encoded, plist, collectors, strategies))]
        self._drive(jobs, len(batch) > 1 if progress is None else progress)
        for c in collectors:
            if c.error is not None:
                raise c.error
        return [c.completion(p.logprobs is not None) for c, p in zip(collectors, plist)]

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None, *,
               speculative: str | Strategy | None = None, index: int = 0) -> Iterator[StepResult]:
        """Yield one `StepResult` per decode step (the first one carries the first token)."""
        yield from self._stream(self.encode_prompt(prompt), params or SamplingParams(), speculative, index)

    def chat(self, messages: list[dict[str, Any]], params: SamplingParams | None = None, *,
             system: str | None = None, speculative: str | Strategy | None = None) -> Completion:
        ids = self.chat_prompt(messages, system)
        return self.generate([ids], params, speculative=speculative, progress=False)[0]

    def chat_stream(self, messages: list[dict[str, Any]], params: SamplingParams | None = None, *,
                    system: str | None = None, speculative: str | Strategy | None = None) -> Iterator[StepResult]:
        yield from self._stream(self.chat_prompt(messages, system), params or SamplingParams(), speculative, 0)

    # ---- driving the scheduler -------------------------------------------------------------
    def _stream(self, ids: list[int], params: SamplingParams, speculative: str | Strategy | None,
                index: int) -> Iterator[StepResult]:
        events: deque = deque()
        job = Job(ids, params, deliver=lambda _, e: events.append(e), index=index,
                  strategy=self._resolve(speculative))
        sched = self.scheduler
        sched.submit([job])
        started = time.perf_counter()
        try:
            while True:
                if not events:
                    sched.step()
                    continue
                event = events.popleft()
                if isinstance(event, BaseException):
                    raise event
                now = time.perf_counter()
                event.elapsed_s, started = now - started, now    # this request's own clock
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            if not job.done:
                sched.cancel(job)      # the caller stopped reading: the next step frees the slot

    def _drive(self, jobs: list[Job], progress: bool) -> None:
        """Step the scheduler until every job is done (others, e.g. an open stream, advance too)."""
        from rich.progress import Progress

        sched = self.scheduler
        sched.submit(jobs)
        with Progress(transient=True, disable=not progress or not sys.stderr.isatty(),
                      console=None) as bar:
            task = bar.add_task("generating", total=len(jobs))
            try:
                while True:
                    finished = sum(j.done for j in jobs)
                    bar.update(task, completed=finished)
                    if finished == len(jobs):
                        return
                    sched.step()
            except BaseException:
                for job in jobs:
                    if not job.done:
                        sched.cancel(job)
                raise


def _per_prompt(value: Any, n: int, name: str) -> list[Any]:
    if isinstance(value, list):
        if len(value) != n:
            raise InvalidParameterError(f"{name} has {len(value)} entries for {n} prompts")
        return value
    return [value] * n
