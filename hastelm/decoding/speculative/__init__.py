"""Lossless speculative decoding: proposers build draft trees, the target verifies a tree in one
forward, an acceptance rule keeps exactly what plain decoding would produce, and a controller
decides from measured costs and acceptance how much to verify, or to decode plainly.

Names accepted by `make_strategy` (and `LLM(speculative=...)`, `--speculative`):

    pld              prompt lookup / n-gram drafts from the prompt and output
    recycling[:FILE] Token Recycling; with FILE, its matrix is loaded from and saved to FILE
    lookahead        Jacobi window + n-gram pool
    layerskip        the target with some layers skipped drafts for itself
    draft:MODEL      a smaller model with the same tokenizer (alias, .gguf or HF folder)
    auto             one tree of pld's drafts, then recycling's; the controller picks how much
                     of it to verify each step, or a plain step

`NAME@N` (e.g. `recycling@8`) skips the controller and verifies up to N draft nodes every step:
for experiments and tests; it can be slower than plain decoding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InvalidParameterError
from ...formats.tokenizer import Tokenizer
from ...models.transformer import Transformer
from .controller import Controller
from .proposers.base import Proposer
from .strategy import SpeculativeDecoding

NAMES = ("pld", "recycling", "lookahead", "layerskip", "draft:MODEL", "auto")


@dataclass(frozen=True)
class Target:
    """What a proposer may use of the target it drafts for (not the whole engine)."""
    model: Transformer
    tokenizer: Tokenizer
    vocab_size: int
    mode: str                 # the numeric mode a draft model is loaded in, as the target's
    device: torch.device


def make_proposer(name: str, target: Target) -> Proposer:
    kind, _, arg = name.partition(":")
    if kind == "pld" and not arg:
        from .proposers.pld import PromptLookup
        return PromptLookup()
    if kind == "recycling":
        from .proposers.recycling import TokenRecycling
        return TokenRecycling(target.vocab_size, path=arg or None)
    if kind == "lookahead" and not arg:
        from .proposers.lookahead import Lookahead
        return Lookahead()
    if kind == "layerskip" and not arg:
        from .proposers.layerskip import LayerSkip
        return LayerSkip(target.model, target.tokenizer)
    if kind == "draft":
        return _draft_model(arg, target)
    raise InvalidParameterError(f"unknown speculative method {name!r} (choose {', '.join(NAMES)})")


def _draft_model(arg: str, target: Target) -> Proposer:
    from ...models.loader import load_model
    from .proposers.draft_model import DraftModel, check_compatible

    if not arg:
        raise InvalidParameterError("draft needs a model: draft:MODEL (alias, .gguf file or folder)")
    loaded = load_model(arg, target.mode, target.device)
    check_compatible(target.tokenizer, target.vocab_size, loaded.tokenizer, loaded.config.vocab_size, arg)
    return DraftModel(loaded.model)


def make_strategy(name: str, target: Target, controller: Controller | None = None) -> SpeculativeDecoding:
    """The decoding strategy for a speculative method name (see the module docstring)."""
    method, at, size = name.rpartition("@")
    if at and size.isdigit():
        if int(size) < 1:
            raise InvalidParameterError(f"{name!r}: the size after @ must be at least 1")
        controller = controller or Controller(fixed=int(size))
    else:
        method = name
    if method == "auto":
        from .proposers.merged import Merged
        # lookahead's pool holds the context's n-grams, as pld's index does, and its Jacobi
        # window advances only when its own tree is verified: in auto it added cost, not tokens
        proposers = [Merged([make_proposer("pld", target), make_proposer("recycling", target)])]
    else:
        proposers = [make_proposer(method, target)]
    return SpeculativeDecoding(name, proposers, controller)


__all__ = ["make_strategy", "make_proposer", "SpeculativeDecoding", "Controller", "NAMES", "Target"]
