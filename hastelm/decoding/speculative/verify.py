"""Acceptance rules: which draft nodes the target model agrees with, and the token that follows.

Both walks start at the root and descend one accepted child at a time, so the output has exactly
the distribution plain decoding would give (greedy: the same tokens).

- Greedy: accept the child whose token is the target's argmax.
- Sampling, deterministic drafts (SpecInfer / EAGLE recursive rule): try the children in order;
  accept child x with probability p(x); on rejection set p(x) = 0 and renormalise; when every child
  is rejected, sample the next token from what is left of p.
- Sampling, drafts with probabilities q (Leviathan et al. 2023 / Chen et al. 2023): accept x with
  probability min(1, p(x) / q(x)); on rejection continue with p <- norm(max(p - q, 0)). Siblings
  must have been sampled independently from their q (a chain from a draft model always is).

The target's distribution at a node is computed lazily (only along the walk) from the history
prefix + path, so repetition/frequency/presence penalties see the same history plain decoding sees.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..sampling import Sampler
from .tree import DraftTree


@dataclass
class Acceptance:
    nodes: list[int]     # accepted draft nodes, from the root's child down
    tokens: list[int]    # the accepted draft tokens, then the target's own next token

    @property
    def accepted(self) -> int:
        return len(self.nodes)


# target(node, path_tokens) -> the target's greedy token / distribution at `node`, where
# `path_tokens` are the accepted draft tokens between the root and `node`
GreedyTarget = Callable[[int, list[int]], int]
ProbsTarget = Callable[[int, list[int]], torch.Tensor]


def accept_greedy(tree: DraftTree, target: GreedyTarget) -> Acceptance:
    node, nodes, path = 0, [], []
    while True:
        tok = target(node, path)
        child = tree.children[node].get(tok)
        if child is None:
            return Acceptance(nodes, path + [tok])
        nodes.append(child)
        path.append(tok)
        node = child


def accept_sampling(tree: DraftTree, target: ProbsTarget, sampler: Sampler) -> Acceptance:
    node, nodes, path = 0, [], []
    while True:
        p = target(node, path)
        chosen = None
        for tok, child in tree.children[node].items():   # the proposer's order: best guess first
            q = None if tree.probs is None else tree.probs[child - 1]
            if _accepts(p, q, tok, sampler.uniform()):
                chosen = child
                break
            p = _residual(p, q, tok)
        if chosen is None:
            return Acceptance(nodes, path + [sampler.sample_from(p)])
        nodes.append(chosen)
        path.append(tree.tokens[chosen - 1])
        node = chosen


def _accepts(p: torch.Tensor, q: torch.Tensor | None, tok: int, u: float) -> bool:
    if q is None:
        return u < float(p[tok])
    return u * float(q[tok]) < float(p[tok])       # u < p/q without dividing by a tiny q


def _residual(p: torch.Tensor, q: torch.Tensor | None, tok: int) -> torch.Tensor:
    if q is None:
        r = p.clone()
        r[tok] = 0.0
    else:
        r = (p - q).clamp_min_(0.0)
    total = float(r.sum())
    # zero only when p had all its mass on rejected drafts, which happens with probability 0
    return r / total if total > 0 else p
