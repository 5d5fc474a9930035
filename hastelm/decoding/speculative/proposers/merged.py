"""Several free proposers as one: their trees merged into a single draft tree.

Prompt lookup is often right for many tokens when its n-gram matched, and has nothing to offer
elsewhere; Token Recycling always has a guess but a weaker first one. One tree with the first
proposer's nodes first and the others' after lets the controller verify a prefix that covers
both, instead of choosing one proposer per step. Every part sees every step's feedback.
"""
from __future__ import annotations

from ...sequence import Sequence
from ..tree import DraftTree
from .base import Budget, Feedback, Proposer
from .trie import merge_trees


class Merged:
    free = True

    def __init__(self, parts: list[Proposer]) -> None:
        if not parts or not all(p.free for p in parts):
            raise ValueError("Merged takes one or more free proposers")
        self.parts = parts
        self.name = "+".join(p.name for p in parts)

    def propose(self, seq: Sequence, budget: Budget) -> DraftTree | None:
        trees = [(p, p.propose(seq, budget)) for p in self.parts]
        trees = [(p, t) for p, t in trees if t is not None and len(t)]
        if not trees:
            return None
        # the statistics key: which part leads the tree, and in what context class
        first, tree = trees[0]
        return merge_trees([t for _, t in trees], budget.nodes, kind=f"{first.name}:{tree.kind}")

    def update(self, seq: Sequence, feedback: Feedback) -> None:
        for p in self.parts:
            p.update(seq, feedback)

    def release(self, seq: Sequence) -> None:
        for p in self.parts:
            p.release(seq)
