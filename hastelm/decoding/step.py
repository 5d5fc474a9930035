"""The typed results shared by the Python API, the CLI, the server and the benchmark."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class StepResult:
    """What one decode step added to one request."""
    index: int                       # position of the request among the prompts of a call
    tokens: list[int]                # output tokens added by this step (after stop handling)
    text: str                        # text delta safe to display
    accepted: int = 0                # draft tokens accepted by verification (0 for plain decoding)
    proposed: int = 0                # draft tokens proposed
    finish_reason: str | None = None  # "stop" | "length" | None while running
    elapsed_s: float = 0.0           # wall time of the step
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Completion:
    index: int
    prompt: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    prefill_s: float                 # time to first token
    decode_s: float                  # time after the first token
    steps: int = 0                   # decode steps after the first token (forward passes)
    accepted: int = 0
    proposed: int = 0
    logprobs: list[TokenLogprob] | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first over the time spent producing them."""
        return (self.completion_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def tokens_per_step(self) -> float:
        return (self.completion_tokens - 1) / self.steps if self.steps else 1.0
