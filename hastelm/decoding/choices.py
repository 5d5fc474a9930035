"""The decoding methods a request may choose, fixed when the engine or server starts.

The operator names them (`hastelm serve --speculative none,pld,recycling:/srv/tr.npy`); each is
built once, here, with whatever it loads or writes. A request then picks one by its public name:
the method without its argument (`recycling`, `draft`, `pld@4`), so it never names, sees or
reaches a path, and nothing a request sends builds, loads or keeps anything new.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from ..errors import HastelmError, InvalidParameterError

if TYPE_CHECKING:        # names for the protocol only: the command line imports this module without torch
    from ..engine.runner import ModelRunner
    from .plain import StepOutcome
    from .sequence import Sequence

PLAIN = "none"
PLAIN_ALIASES = ("none", "plain")


class Strategy(Protocol):
    """A way to decode: plain, or speculative with its proposers."""
    name: str

    def step(self, runner: ModelRunner, seq: Sequence) -> StepOutcome: ...

    def step_batch(self, runner: ModelRunner, seqs: list[Sequence]) -> list[StepOutcome]: ...

    def release(self, seq: Sequence) -> None: ...


class StrategyError(HastelmError):
    """The requested decoding method is not one this engine enabled."""


def public_name(spec: str) -> str:
    """`recycling:/srv/m.npy@8` -> `recycling@8`: the method, without the file or model it uses."""
    if spec in PLAIN_ALIASES:
        return PLAIN
    method, at, size = spec.rpartition("@")
    if not (at and size.isdigit()):
        method, size = spec, ""
    return method.partition(":")[0] + (f"@{size}" if size else "")


def parse_specs(value: str | Iterable[str] | None) -> list[str]:
    """A comma list (the command line's form) or a list of method specs, blanks dropped."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip() for s in items if s.strip()]


class DecodingChoices:
    """Every enabled method, built at start-up; the first listed is the default (plain when none
    is listed). Plain decoding is always allowed."""

    def __init__(self, build: Callable[[str | None], Strategy], specs: str | Iterable[str] | None) -> None:
        specs = parse_specs(specs)
        self._by_name: dict[str, Strategy] = {PLAIN: build(None)}
        for spec in specs:
            name = public_name(spec)
            if name != PLAIN:
                if name in self._by_name:
                    raise InvalidParameterError(f"speculative method {name} is enabled twice")
                self._by_name[name] = build(spec)
        self.default = public_name(specs[0]) if specs else PLAIN

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def resolve(self, requested: str | None) -> Strategy:
        """The strategy a request asked for (None: the default); StrategyError if not enabled."""
        if requested is None:
            name = self.default
        else:
            name = PLAIN if requested in PLAIN_ALIASES else requested
        strategy = self._by_name.get(name)
        if strategy is None:      # the requested text is not echoed: it may be a path
            raise StrategyError(f"the requested speculative method is not enabled on this server "
                                f"(choose {', '.join(self.names)})")
        return strategy
