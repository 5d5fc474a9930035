"""KV-cache eviction policies and the configuration a runner is started with.

`KVPolicyConfig` is fixed at start-up (`LLM(kv_policy="snapkv", kv_budget=0.25)`, `--kv-policy`
and `--kv-budget` on generate, chat and serve); requests never choose it. The runner
(`compressor.KVCompressor`) gathers what the policy reads during the forwards and, at the end of a
scheduler step, compresses every slot whose cache holds more than `budget + interval` entries back
to the budget. A ratio budget is a fraction of the tokens the slot has seen and applies once the
prompt is in (SnapKV's setting: the window is the prompt's end); a token budget also bounds the
cache while a long prompt is prefilled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...errors import InvalidParameterError
from .base import Budget, KVPolicy, Observation, Selection, parse_budget
from .snapkv import SnapKV
from .streaming import H2O, StreamingLLM

POLICIES: dict[str, Callable[[], KVPolicy]] = {
    "streamingllm": StreamingLLM,
    "h2o": H2O,
    "snapkv": SnapKV,
    "pyramidkv": lambda: SnapKV(name="pyramidkv", pyramid=True),
    "adakv": lambda: SnapKV(name="adakv", adaptive=True),
}
DEFAULT_INTERVAL = 32     # entries a slot may grow past its budget before the next compression


@dataclass(frozen=True)
class KVPolicyConfig:
    policy: KVPolicy
    budget: Budget
    interval: int = DEFAULT_INTERVAL

    def __str__(self) -> str:
        return f"{self.policy.name} (budget {self.budget}, every {self.interval} tokens)"


def make_kv_config(policy: str | None, budget: str | float | int | None,
                   interval: int = DEFAULT_INTERVAL) -> KVPolicyConfig | None:
    """Validate the user's choice; None when no policy is asked for. Errors are one line."""
    if policy is None or policy in ("", "none", "full"):
        if budget is not None:
            raise InvalidParameterError("kv budget needs a kv policy (choose " + ", ".join(POLICIES) + ")")
        return None
    if policy not in POLICIES:
        raise InvalidParameterError(f"unknown kv policy {policy!r} (choose {', '.join(POLICIES)})")
    if budget is None:
        raise InvalidParameterError(f"kv policy {policy} needs a kv budget (a ratio in (0, 1] or a token count)")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise InvalidParameterError(f"kv interval must be an integer >= 1, got {interval!r}")
    made = POLICIES[policy]()
    parsed = parse_budget(budget)
    if not parsed.is_ratio and parsed.value < made.min_tokens:
        raise InvalidParameterError(f"kv budget {parsed.value} is below what {policy} always keeps "
                                    f"(at least {made.min_tokens} tokens)")
    return KVPolicyConfig(made, parsed, interval)


__all__ = ["Budget", "H2O", "KVPolicy", "KVPolicyConfig", "Observation", "POLICIES", "Selection", "SnapKV",
           "StreamingLLM", "make_kv_config", "parse_budget"]
