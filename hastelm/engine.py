"""`LLM`: load a model once; generate, stream and chat; owns model, tokenizer, cache and strategy."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .decoding.plain import PlainDecoding, StepOutcome
from .decoding.sampling import Sampler, SamplingParams, top_logprobs
from .decoding.sequence import Sequence
from .decoding.step import Completion, StepResult, TokenLogprob
from .decoding.stopping import StopChecker
from .errors import ContextOverflowError, HastelmError, InvalidParameterError
from .models.loader import load_model
from .models.registry import DEFAULT_MODEL
from .system import keep_freed_memory

PREFILL_CHUNK = 256   # long prompts run in chunks: bounded activation memory (llama.cpp: n_ubatch)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HastelmError("CUDA was requested but no GPU is available")
    return torch.device(device)


def resolve_mode(dtype: str, device: torch.device) -> str:
    modes = {"auto": "fast" if device.type == "cpu" else "bfloat16", "fast": "fast",
             "float32": "float32", "bfloat16": "bfloat16"}
    if dtype not in modes:
        raise InvalidParameterError(f"unknown dtype {dtype!r} (choose auto, fast, float32 or bfloat16)")
    return modes[dtype]


class LLM:
    """A loaded model.

    `model`: a `.gguf` path, a Hugging Face folder, or an alias (`smollm2-135m`, `gemma3-270m`).
    `dtype`: "auto" (packed int4 + bf16 on CPU, bf16 on GPU), "float32" (exact reference), "bfloat16".
    `speculative`: default speculative proposer for every call (see `hastelm.decoding.speculative`).
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, dtype: str = "auto", device: str = "auto",
                 context_length: int | None = None, speculative: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.device = resolve_device(device)
        self.mode = resolve_mode(dtype, self.device)
        if context_length is not None and context_length < 1:
            raise InvalidParameterError(f"context_length must be >= 1, got {context_length}")
        loaded = load_model(model, self.mode, self.device, progress)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.model, self.tokenizer, self.config = loaded.model, loaded.tokenizer, loaded.config
        self.name, self.path = loaded.name, loaded.path
        limit = self.config.max_position_embeddings
        self.context_length = min(context_length or limit, limit)
        self.cache = self.model.new_cache(self.context_length)
        self._cached_ids: list[int] = []     # what slot 0 of the cache holds, for prefix reuse
        self.plain = PlainDecoding()
        self.default_speculative = speculative
        self._strategies: dict[str, Any] = {}
        if speculative:
            self.strategy(speculative)   # fail early on an unknown proposer

    # ---- strategies -------------------------------------------------------------------
    def strategy(self, speculative: str | None) -> Any:
        if not speculative or speculative in ("none", "plain"):
            return self.plain
        if speculative not in self._strategies:
            from .decoding.speculative import make_strategy
            self._strategies[speculative] = make_strategy(speculative, self)
        return self._strategies[speculative]

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

    # ---- request lifecycle (also used by the scheduler) --------------------------------
    def new_sequence(self, ids: list[int], params: SamplingParams, slot: int = 0, index: int = 0) -> Sequence:
        room = self.context_length - len(ids)
        params.check_vocab(self.config.vocab_size)
        return Sequence(ids=list(ids), prompt_len=len(ids), params=params,
                        sampler=Sampler(params, len(ids)),
                        stopper=StopChecker(params, self.tokenizer, room), slot=slot, index=index)

    def prefill(self, seq: Sequence, cache=None, reuse_prefix: bool = True) -> StepOutcome:
        """Run the prompt (reusing a cached common prefix in slot 0), sample the first token.

        As in the server's scheduler, chunks of PREFILL_CHUNK starting at its multiples cover
        `ids[:-1]` and the last prompt token runs as an ordinary decode step: a prompt's cache and
        first token are the same by either path, and a reused prefix is cut back to a chunk
        boundary so the rest is computed exactly as a fresh prefill would."""
        cache = cache or self.cache
        ids = seq.ids
        start = 0
        if reuse_prefix and cache is self.cache and seq.slot == 0:
            start = _common_prefix(self._cached_ids, ids[:-1]) // PREFILL_CHUNK * PREFILL_CHUNK
        cache.trim(cache.length(seq.slot) - start, seq.slot)
        for lo in range(start, len(ids) - 1, PREFILL_CHUNK):
            chunk = ids[lo:min(lo + PREFILL_CHUNK, len(ids) - 1)]
            toks = torch.tensor([chunk], device=self.device)
            pos = torch.arange(lo, lo + len(chunk), device=self.device)[None]
            self.model(toks, pos, cache, slots=[seq.slot], last_only=True)
        last = torch.tensor([[ids[-1]]], device=self.device)
        logits = self.model(last, torch.tensor([[len(ids) - 1]], device=self.device), cache, slots=[seq.slot])[0, -1]
        if cache is self.cache and seq.slot == 0:
            self._cached_ids = list(ids)
        return StepOutcome([seq.sampler.sample(logits, ids)], [logits])

    def advance(self, seq: Sequence, outcome: StepOutcome, elapsed: float) -> StepResult:
        """Apply stop conditions to a step's tokens and record them in the sequence."""
        update = seq.stopper.push(outcome.tokens)
        seq.ids.extend(update.tokens)
        logprobs = None
        if seq.params.logprobs is not None:
            logprobs = [TokenLogprob(t, *top_logprobs(l, t, seq.params.logprobs))
                        for t, l in zip(update.tokens, outcome.logits)]
        return StepResult(seq.index, update.tokens, update.text, outcome.accepted, outcome.proposed,
                          update.finish_reason, elapsed, logprobs)

    def finish(self, seq: Sequence, strategy: Any) -> None:
        strategy.release(seq)
        if seq.slot == 0:
            # the cache holds ids[:-1] of what was generated; remember it for the next prefix
            self._cached_ids = seq.ids[:self.cache.length(0)]

    # ---- public API ---------------------------------------------------------------------
    def stream(self, prompt: str | list[int], params: SamplingParams | None = None, *,
               speculative: str | None = None, index: int = 0) -> Iterator[StepResult]:
        """Yield one `StepResult` per decode step (the first one carries the first token)."""
        params = params or SamplingParams()
        ids = self.encode_prompt(prompt)
        yield from self._run(ids, params, speculative, index)

    def _run(self, ids: list[int], params: SamplingParams, speculative: str | None,
             index: int) -> Iterator[StepResult]:
        strategy = self.strategy(speculative if speculative is not None else self.default_speculative)
        seq = self.new_sequence(ids, params, index=index)
        try:
            t0 = time.perf_counter()
            result = self.advance(seq, self.prefill(seq), 0.0)
            result.elapsed_s = time.perf_counter() - t0
            yield result
            while result.finish_reason is None:
                t = time.perf_counter()
                outcome = strategy.step(self.model, self.cache, seq)
                result = self.advance(seq, outcome, 0.0)
                result.elapsed_s = time.perf_counter() - t
                yield result
        finally:
            self.finish(seq, strategy)

    def generate(self, prompts: str | list[int] | list[str | list[int]], params: SamplingParams | None = None,
                 *, speculative: str | None = None) -> list[Completion]:
        """Complete each prompt (text or token ids); returns one `Completion` per prompt."""
        single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int))
        batch = [prompts] if single else list(prompts)
        params = params or SamplingParams()
        encoded = [self.encode_prompt(p) for p in batch]   # validate all before running any
        return [self._complete(i, p, ids, params, speculative) for i, (p, ids) in enumerate(zip(batch, encoded))]

    def chat(self, messages: list[dict[str, Any]], params: SamplingParams | None = None, *,
             system: str | None = None, speculative: str | None = None) -> Completion:
        ids = self.chat_prompt(messages, system)
        return self._complete(0, messages[-1].get("content", ""), ids, params or SamplingParams(), speculative)

    def chat_stream(self, messages: list[dict[str, Any]], params: SamplingParams | None = None, *,
                    system: str | None = None, speculative: str | None = None) -> Iterator[StepResult]:
        yield from self._run(self.chat_prompt(messages, system), params or SamplingParams(), speculative, 0)

    def _complete(self, index: int, prompt: Any, ids: list[int], params: SamplingParams,
                  speculative: str | None) -> Completion:
        tokens: list[int] = []
        text, reason = [], "length"
        logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        prefill_s = decode_s = 0.0
        steps = accepted = proposed = 0
        for n, r in enumerate(self._run(ids, params, speculative, index)):
            tokens += r.tokens
            text.append(r.text)
            if logprobs is not None and r.logprobs:
                logprobs += r.logprobs
            if n == 0:
                prefill_s = r.elapsed_s
            else:
                decode_s += r.elapsed_s
                steps += 1
                accepted += r.accepted
                proposed += r.proposed
            reason = r.finish_reason or reason
        return Completion(index, prompt if isinstance(prompt, str) else self.tokenizer.decode(ids), "".join(text),
                          tokens, len(ids), reason, prefill_s, decode_s, steps, accepted, proposed, logprobs)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
