"""The proposer protocols: `propose(seq, budget) -> DraftTree | None` and `update(seq, feedback)`;
a proposer that runs a model to draft also drafts for many requests at once (`propose_batch`) and
states its prior acceptance. Everything the controller calls is declared here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from ...sequence import Sequence
from ..tree import DraftTree
from ..verify import Acceptance

if TYPE_CHECKING:
    from ....engine.runner import ModelRunner


@dataclass
class Budget:
    nodes: int      # at most this many draft nodes
    depth: int      # and no deeper than this (tokens the request may still produce, minus one)
    runner: ModelRunner | None = None   # the target's runner (its cache holds ids[:-1]), for self-speculation


@dataclass
class Feedback:
    """What one verification step learned, given to every proposer of the strategy (the tree may
    come from another proposer, or be empty for a plain step)."""
    tree: DraftTree
    logits: torch.Tensor          # [N + 1, V] target logits at the root and at every draft node
    acceptance: Acceptance
    root_token: int               # the token that was pending (the root)
    root_position: int            # its position

    @property
    def node_tokens(self) -> list[int]:
        """Token of every verified node, root first."""
        return [self.root_token, *self.tree.tokens]


class Proposer(Protocol):
    name: str
    # True when proposing costs no model forward: the proposer then always offers its full tree
    # and the controller verifies the prefix that pays; otherwise it is asked for a chain of a
    # chosen length, and what it costs to draft is measured.
    free: bool

    def propose(self, seq: Sequence, budget: Budget) -> DraftTree | None: ...

    def update(self, seq: Sequence, feedback: Feedback) -> None: ...

    def release(self, seq: Sequence) -> None: ...


class DraftingProposer(Proposer, Protocol):
    """A proposer that runs a model to draft (`free` is False): the controller asks it for chains
    of a chosen length, for all requests of a step in one call, and measures what drafting costs."""
    prior_alpha: float      # per-token acceptance assumed before any is measured

    def propose_batch(self, requests: list[tuple[Sequence, Budget]]) -> list[DraftTree | None]: ...
