"""Token Recycling (Luo et al., 2024, "Turning Trash into Treasure: Accelerating Inference of Large
Language Models with Token Recycling").

An adjacency matrix holds, for every token, the top-k tokens the target predicted after its most
recent verified occurrence; it is refreshed from the target's logits at every verified node,
accepted or not, and kept across requests (optionally saved to a file). A draft is a fixed tree
template: node (parent, rank) takes the rank-th successor of its parent's token, filled level by
level from the matrix. The template is grown best-first from how often each rank is accepted, so
its first m nodes are the m most promising, which lets the controller verify any prefix.
"""
from __future__ import annotations

import heapq
import os
from pathlib import Path

import numpy as np

from ....errors import InvalidParameterError
from ...sampling import top_tokens
from ...sequence import Sequence
from ..tree import DraftTree
from .base import Budget, Feedback

PRIOR = (0.45, 0.15, 0.08, 0.05, 0.04, 0.03, 0.02, 0.02)   # acceptance by rank before any data
PRIOR_WEIGHT = 20.0
REBUILD_EVERY = 32     # steps between template rebuilds from the measured rank acceptance


def build_template(accept: list[float], size: int) -> list[tuple[int, int]]:
    """(parent, rank) of `size` template nodes (parent 0 = root, i = i-th node), best-first by the
    product of rank acceptance along the path, so parents precede children."""
    nodes: list[tuple[int, int]] = []
    heap = [(-accept[r], 0, r) for r in range(len(accept))]
    heapq.heapify(heap)
    while heap and len(nodes) < size:
        neg, parent, rank = heapq.heappop(heap)
        nodes.append((parent, rank))
        me = len(nodes)
        for r in range(len(accept)):
            heapq.heappush(heap, (neg * accept[r], me, r))
    return nodes


class TokenRecycling:
    name = "recycling"
    free = True

    def __init__(self, vocab_size: int, k: int = 8, template_size: int = 64, path: str | None = None) -> None:
        self.k = k
        self.template_size = template_size
        self.matrix = np.full((vocab_size, k), -1, dtype=np.int32)   # -1: nothing seen yet
        self.path = Path(path) if path else None
        if self.path and self.path.exists():
            self.load(self.path)
        elif self.path:
            self.save(self.path)    # a path that cannot be written fails now, at start-up, not per request
        self.hits = np.array(PRIOR[:k] + (0.01,) * max(0, k - len(PRIOR)), dtype=np.float64) * PRIOR_WEIGHT
        self.trials = np.full(k, PRIOR_WEIGHT)
        self.template = build_template(list(self.hits / self.trials), template_size)
        self.updates = 0

    # ---- proposing ---------------------------------------------------------------------------
    def propose(self, seq: Sequence, budget: Budget) -> DraftTree | None:
        tokens: list[int] = []
        parents: list[int] = []
        ranks: list[int] = []
        node_of = [0]            # template node -> draft node (-1 when it could not be filled)
        node_tok = [seq.pending]
        depth = [0]
        rows: dict[int, list[int]] = {}
        for t_parent, rank in self.template:
            if len(tokens) >= budget.nodes:
                break
            parent = node_of[t_parent]
            if parent < 0 or depth[parent] >= budget.depth:
                node_of.append(-1)
                continue
            ptok = node_tok[parent]
            row = rows.get(ptok)
            if row is None:
                row = rows[ptok] = self.matrix[ptok].tolist()
            tok = row[rank]
            if tok < 0:
                node_of.append(-1)
                continue
            tokens.append(tok)
            parents.append(parent)
            ranks.append(rank)
            node_tok.append(tok)
            depth.append(depth[parent] + 1)
            node_of.append(len(tokens))
        if not tokens:
            return None
        tree = DraftTree(tokens, parents)
        seq.strategy_state[self.name] = (tree, ranks)
        return tree

    # ---- learning ----------------------------------------------------------------------------
    def update(self, seq: Sequence, feedback: Feedback) -> None:
        top = top_tokens(feedback.logits, self.k).cpu().numpy().astype(np.int32)
        self.matrix[feedback.node_tokens] = top
        mine = seq.strategy_state.pop(self.name, None)
        if mine:   # score this step's own proposal, whether or not it was the tree verified
            self._count_ranks(*mine, feedback.acceptance.tokens)
        self.updates += 1
        if self.updates % REBUILD_EVERY == 0:
            self.template = build_template(list(self.hits / self.trials), self.template_size)

    def _count_ranks(self, tree: DraftTree, ranks: list[int], truth: list[int]) -> None:
        """Walk the proposed tree along the tokens that really followed the root: at each node
        reached, which ranks its children had and which one (if any) was taken."""
        node = 0
        for tok in truth:
            kids = tree.children[node]
            taken = kids.get(tok, -1)
            for child in kids.values():
                self.trials[ranks[child - 1]] += 1
                if child == taken:
                    self.hits[ranks[child - 1]] += 1
            if taken < 0:
                return
            node = taken

    def release(self, seq: Sequence) -> None:
        seq.strategy_state.pop(self.name, None)
        if self.path:
            self.save(self.path)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                np.save(f, self.matrix)
            os.replace(tmp, path)          # a reader never sees a half-written matrix
        except OSError as exc:
            raise InvalidParameterError(f"cannot write the recycling matrix {path}: {exc.strerror}") from None

    def load(self, path: str | Path) -> None:
        try:
            matrix = np.load(path)
        except (OSError, ValueError) as exc:
            raise InvalidParameterError(f"cannot read the recycling matrix {path}: {exc}") from None
        if matrix.shape != self.matrix.shape:
            raise InvalidParameterError(f"recycling matrix {path} has shape {matrix.shape}, "
                                        f"this model needs {self.matrix.shape}")
        self.matrix = matrix.astype(np.int32)
