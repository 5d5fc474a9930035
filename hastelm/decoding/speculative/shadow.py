"""Score proposals against what the target really produced, at no model cost.

Every proposed tree is remembered with the position of its root; once the tokens after that root
are known (from this step's verification or later plain steps) the tree is walked along them. That
tells how many tokens the tree, and each prefix of it, would have accepted, also for the parts the
controller chose not to verify, and while speculation is backed off.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .tree import DraftTree


class Stats(Protocol):
    def observe(self, size: int, path: list[int]) -> None: ...


@dataclass
class Shadow:
    stats: Stats
    tree: DraftTree
    root: int          # index of the tree's root token in the sequence's ids


class Shadows:
    def __init__(self) -> None:
        self.pending: list[Shadow] = []

    def add(self, stats: Stats, tree: DraftTree, root: int) -> None:
        if len(tree):
            self.pending.append(Shadow(stats, tree, root))

    def resolve(self, ids: list[int]) -> None:
        """Score every proposal whose outcome `ids` now decides."""
        waiting = []
        for s in self.pending:
            path, done = s.tree.match(ids[s.root + 1:s.root + 1 + s.tree.depth + 1])
            if done:
                s.stats.observe(len(s.tree), path)
            else:
                waiting.append(s)
        self.pending = waiting
