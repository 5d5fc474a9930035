"""Prompt lookup decoding (Saxena, 2023; the n-gram drafter of transformers and vLLM): when the
last few tokens occurred before in the prompt or the output, propose what followed them there.

Several earlier occurrences give several candidate continuations; they are merged into one tree,
longest n-gram match and most recent occurrence first. An incremental n-gram index per request
keeps each lookup O(1) instead of rescanning the context.
"""
from __future__ import annotations

from ...sequence import Sequence
from ..tree import DraftTree
from .base import Budget, Feedback
from .trie import trie_tree


class NgramIndex:
    """End positions of every n-gram (n = 1..max_n) of a growing token list."""

    def __init__(self, max_n: int) -> None:
        self.max_n = max_n
        self.ends: dict[tuple[int, ...], list[int]] = {}
        self.size = 0

    def extend(self, ids: list[int]) -> None:
        if len(ids) < self.size:          # the list was cut (should not happen within a request)
            self.ends.clear()
            self.size = 0
        for end in range(self.size, len(ids)):
            for n in range(1, min(self.max_n, end + 1) + 1):
                self.ends.setdefault(tuple(ids[end - n + 1:end + 1]), []).append(end)
        self.size = len(ids)

    def continuations(self, ids: list[int], n: int, length: int, limit: int) -> list[list[int]]:
        """Up to `limit` distinct continuations of the last n tokens, most recent occurrence first."""
        out: list[list[int]] = []
        last = len(ids) - 1
        for end in reversed(self.ends.get(tuple(ids[-n:]), ())):
            if end >= last:
                continue
            cont = ids[end + 1:end + 1 + length]
            if cont and cont not in out:
                out.append(cont)
                if len(out) >= limit:
                    break
        return out


class PromptLookup:
    name = "pld"
    free = True

    def __init__(self, max_ngram: int = 3, candidates: int = 4, length: int = 16) -> None:
        self.max_ngram = max_ngram
        self.candidates = candidates
        self.length = length

    def propose(self, seq: Sequence, budget: Budget) -> DraftTree | None:
        index = seq.strategy_state.setdefault(self.name, NgramIndex(self.max_ngram))
        ids = seq.ids
        index.extend(ids)
        found: list[list[int]] = []
        best_n = 0
        for n in range(min(self.max_ngram, len(ids)), 0, -1):
            for cont in index.continuations(ids, n, min(self.length, budget.depth), self.candidates):
                if cont not in found:
                    found.append(cont)
                    best_n = best_n or n
            if len(found) >= self.candidates:
                break
        if not found:
            return None
        return trie_tree(found[:self.candidates], budget.nodes, budget.depth, kind=f"n{best_n}")

    def update(self, seq: Sequence, feedback: Feedback) -> None:
        """Nothing to learn: the index follows the sequence's ids."""

    def release(self, seq: Sequence) -> None:
        seq.strategy_state.pop(self.name, None)
