"""Sampling parameters and the sampler chain: logit bias -> penalties -> temperature -> top-k ->
top-p -> min-p.

The same `Sampler.probs` gives the target distribution to plain sampling and to speculative
verification, so a lossless acceptance rule compares against exactly what plain decoding samples.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InvalidParameterError
from ..kernels.cpu import argmax_rows, native, topk_rows

# Stop strings are checked after every token: bounded in number and length, a check costs at
# most MAX_STOP_STRINGS x MAX_STOP_CHARS characters whatever the output's length.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
# Below this temperature sampling is argmax in all but name, and dividing by it overflows float32.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0          # 0 = greedy
    top_k: int = 0                    # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0   # HF/CTRL style, over prompt and output
    frequency_penalty: float = 0.0    # OpenAI style, over output tokens
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None       # return the top-N log-probabilities of each token
    logit_bias: dict[int, float] = field(default_factory=dict)   # OpenAI's: token id -> added to its logit

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens must be an integer >= 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
            (len(self.stop) <= MAX_STOP_STRINGS and all(len(s) <= MAX_STOP_CHARS for s in self.stop),
             f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} characters"),
            (all(isinstance(t, int) and t >= 0 and -100 <= b <= 100 for t, b in self.logit_bias.items()),
             "logit_bias maps token ids >= 0 to biases in [-100, 100]"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidParameterError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1 or self.frequency_penalty != 0 or self.presence_penalty != 0

    @property
    def adjusts_logits(self) -> bool:
        """Whether the chosen token can differ from the raw logits' argmax even when greedy."""
        return self.has_penalties or bool(self.logit_bias)

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids the request names (logit_bias, stop_token_ids) must exist in the vocabulary."""
        named = [*self.logit_bias, *self.stop_token_ids]
        if any(not 0 <= t < vocab_size for t in named):
            raise InvalidParameterError(f"logit_bias and stop_token_ids take token ids in [0, {vocab_size})")


class Sampler:
    """Per-request sampler: owns the request's random generator (same seed, same text)."""

    def __init__(self, params: SamplingParams, prompt_len: int = 0) -> None:
        self.params = params
        self.prompt_len = prompt_len
        self.generator = torch.Generator().manual_seed(
            params.seed if params.seed is not None else random.randrange(2**63))
        self.bias_ids = torch.tensor(list(params.logit_bias), dtype=torch.long)
        self.bias = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32)

    def process(self, logits: torch.Tensor, history: Sequence[int]) -> torch.Tensor:
        """Penalised, temperature-scaled and truncated logits (float32 `[V]`); -inf = excluded."""
        p = self.params
        logits = logits.float().cpu()   # the generator lives on the CPU, whatever the model's device
        if p.logit_bias:
            logits = logits.index_add(0, self.bias_ids, self.bias)
        if p.has_penalties and history:
            logits = self._penalize(logits.clone(), history)
        if p.greedy:
            return logits
        logits = logits / p.temperature
        if p.top_k and p.top_k < logits.shape[-1]:
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) >= p.top_p   # keep the token that crosses top_p
            drop[0] = False     # and the best one, even when top_p underflows float32 (5e-324 -> 0)
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        if p.min_p > 0:
            probs = logits.softmax(-1)
            logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
        return logits

    def _penalize(self, logits: torch.Tensor, history: Sequence[int]) -> torch.Tensor:
        p = self.params
        if p.repetition_penalty != 1:
            seen = torch.tensor(sorted(set(history)), dtype=torch.long)
            vals = logits[seen]
            logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        out = history[self.prompt_len:]
        if out and (p.frequency_penalty or p.presence_penalty):
            counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[-1]).float()
            logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        return logits

    def probs(self, logits: torch.Tensor, history: Sequence[int]) -> torch.Tensor:
        """The distribution plain decoding samples from (one-hot at the argmax when greedy)."""
        processed = self.process(logits, history)
        if self.params.greedy:
            return _one_hot_argmax(processed)
        probs = processed.softmax(-1)
        # extreme penalties can exclude or overflow everything; then only the best token is left
        return probs if bool(torch.isfinite(probs).all()) else _one_hot_argmax(logits.float().cpu())

    def sample(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        if self.params.greedy:
            return greedy_tokens(self.process(logits, history)[None])[0]
        return self.sample_from(self.probs(logits, history))

    def sample_from(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))


def _native_rows(logits: torch.Tensor) -> bool:
    """Whether hastelm's row kernels (csrc/argmax.h) can take these logits."""
    return logits.device.type == "cpu" and logits.dtype == torch.float32 and native() is not None


def greedy_tokens(logits: torch.Tensor) -> list[int]:
    """The argmax of each row of `logits` `[R, V]`: hastelm's CPU kernel for float32 rows (a
    vocabulary-sized row in ~6 us, torch's scan ~45 us), else torch."""
    if _native_rows(logits):
        return argmax_rows(logits).tolist()
    return logits.argmax(-1).tolist()


def top_tokens(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices `[R, k]` of each row's k largest logits, largest first (hastelm's CPU kernel for
    float32 rows: ~10x torch.topk, lower index first among equal logits)."""
    if _native_rows(logits) and k <= 64:
        return topk_rows(logits, k)
    return logits.topk(k, dim=-1).indices


def _one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(logits.argmax(), logits.shape[-1]).float()


def top_logprobs(logits: torch.Tensor, token: int, n: int) -> tuple[float, list[tuple[int, float]]]:
    """Log-probability of `token` under the model's raw distribution, and the top-n alternatives."""
    logp = torch.log_softmax(logits.float(), -1)
    top = torch.topk(logp, n) if n else None
    alts = [] if top is None else [(int(i), float(v)) for v, i in zip(top.values, top.indices)]
    return float(logp[token]), alts
