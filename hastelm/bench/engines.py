"""The one small interface every benchmarked engine implements, and hastelm's own adapter.

Engines receive token ids, never text, so every engine runs exactly the same prompts; the
benchmark counts generated tokens without the stop token, whichever engine produced them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Protocol


@dataclass
class Generation:
    tokens: list[int]              # generated tokens, the stop token excluded
    seconds: float                 # wall time, prompt processing included
    steps: int | None = None       # decode forward passes after the first token (None: not reported)
    accepted: int | None = None    # draft tokens accepted / proposed (speculative methods)
    proposed: int | None = None


class Engine(Protocol):
    engine: str      # "hastelm" | "transformers" | "llama.cpp"
    method: str      # "plain" or a speculative method
    dtype: str       # what the weights compute in, for the report
    vocab_size: int
    bos_id: int

    def prompt_eval(self, ids: list[int]) -> None:
        """Process `ids` from an empty cache up to the next-token logits (the pp test)."""

    def generate(self, ids: list[int], max_tokens: int, stop_ids: set[int]) -> Generation:
        """Greedy generation; stops at a token in `stop_ids` (empty: never) or after `max_tokens`."""


class BatchEngine(Engine, Protocol):
    def generate_all(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Greedy generation of `max_tokens` tokens for every prompt in one call (the engine's own batching)."""


ENGINES = ("hastelm", "transformers", "llama.cpp")
_MODULES = {"hastelm": "torch", "transformers": "transformers", "llama.cpp": "llama_cpp"}
# speculative methods each peer offers, besides plain decoding
PEER_METHODS = {"transformers": ("pld",), "llama.cpp": ("plain", "pld")}


def installed(engine: str) -> bool:
    return find_spec(_MODULES[engine]) is not None


class HastelmEngine:
    engine = "hastelm"

    def __init__(self, model: str, method: str, dtype: str, threads: int, context: int,
                 device: str = "cpu") -> None:
        import torch

        from hastelm import LLM

        torch.set_num_threads(threads)
        self.method = method
        self.llm = LLM(model, dtype=dtype, device=device, context_length=context,
                       speculative=None if method == "plain" else method)
        self.dtype = self.llm.mode
        self.tokenizer = self.llm.tokenizer     # peers load their own copy; hastelm's is already here
        self.vocab_size = self.llm.config.vocab_size
        self.bos_id = self.llm.tokenizer.bos_id or 0

    def _params(self, max_tokens: int, stop_ids: set[int]):
        from hastelm import SamplingParams

        # ignore_eos only when no stop is wanted (tg); otherwise the model's own stop tokens apply
        return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=not stop_ids,
                              stop_token_ids=sorted(stop_ids))

    def prompt_eval(self, ids: list[int]) -> None:
        self.llm.generate([ids], self._params(1, set()), speculative="plain")

    def generate_all(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        return [c.token_ids for c in self.llm.generate(prompts, self._params(max_tokens, set()), speculative="plain",
                                                        progress=False)]

    def generate(self, ids: list[int], max_tokens: int, stop_ids: set[int]) -> Generation:
        t = time.perf_counter()
        c = self.llm.generate([ids], self._params(max_tokens, stop_ids), speculative=self.method)[0]
        seconds = time.perf_counter() - t
        return Generation(c.token_ids, seconds, c.steps, c.accepted, c.proposed)
