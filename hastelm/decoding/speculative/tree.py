"""Draft trees: the one thing every proposer hands to the verifier.

Node numbering used everywhere in this package: node 0 is the root, the sequence's pending token
(sampled, certain, not yet run through the model); draft node i (0-based in `tokens`) is node i + 1.
Parents always come before their children, so any prefix of the node list is itself a tree; the
controller relies on this to verify only the first m nodes of a proposal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch


@dataclass
class DraftTree:
    tokens: list[int]                 # draft tokens, parents first
    parents: list[int]                # parent node of each draft token: 0 = root, k = tokens[k - 1]
    probs: torch.Tensor | None = None  # [N, V] distribution each token was sampled from; None = deterministic
    kind: str = ""                    # proposer-defined context class, keys the acceptance statistics
    depths: list[int] = field(init=False)        # depth of each draft node (children of the root: 1)
    children: list[dict[int, int]] = field(init=False)   # per node (root included): token -> child node

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError("a draft tree needs one parent per token")
        depths = [0]
        children: list[dict[int, int]] = [{}]
        for i, (tok, parent) in enumerate(zip(self.tokens, self.parents), start=1):
            if not 0 <= parent < i:
                raise ValueError(f"node {i}: parent {parent} must be an earlier node")
            if tok in children[parent]:
                raise ValueError(f"node {i}: duplicate sibling token {tok}")
            children[parent][tok] = i
            children.append({})
            depths.append(depths[parent] + 1)
        self.depths = depths[1:]
        self.children = children

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def depth(self) -> int:
        return max(self.depths, default=0)

    @classmethod
    def chain(cls, tokens: list[int], probs: torch.Tensor | None = None, kind: str = "") -> DraftTree:
        return cls(list(tokens), list(range(len(tokens))), probs, kind)

    def prefix(self, m: int) -> DraftTree:
        """The first m draft nodes (a tree, since parents come first)."""
        if m >= len(self):
            return self
        probs = None if self.probs is None else self.probs[:m]
        return DraftTree(self.tokens[:m], self.parents[:m], probs, self.kind)

    def select(self, keep: list[bool]) -> DraftTree:
        """The draft nodes where `keep` is True; a dropped node's descendants must be dropped too."""
        new_index = [0]
        tokens: list[int] = []
        parents: list[int] = []
        for i, k in enumerate(keep, start=1):
            if k:
                parent = new_index[self.parents[i - 1]]
                if parent < 0:
                    raise ValueError(f"node {i} kept but its parent was dropped")
                tokens.append(self.tokens[i - 1])
                parents.append(parent)
                new_index.append(len(tokens))
            else:
                new_index.append(-1)
        probs = None if self.probs is None else self.probs[[i for i, k in enumerate(keep) if k]]
        return DraftTree(tokens, parents, probs, self.kind)

    def limit_depth(self, max_depth: int) -> DraftTree:
        if self.depth <= max_depth:
            return self
        return self.select([d <= max_depth for d in self.depths])

    def path(self, node: int) -> list[int]:
        """Draft nodes from the root's child down to `node` (empty for the root)."""
        out = []
        while node:
            out.append(node)
            node = self.parents[node - 1]
        return out[::-1]

    def mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """`[N + 1, N + 1]` bool, True where a node may attend another: its ancestors and itself."""
        return _ancestor_mask(tuple(self.parents)).to(device)

    def positions(self, root_position: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """RoPE position of every node: the root's position plus the node's depth."""
        return root_position + torch.tensor([0, *self.depths], device=device)

    def match(self, tokens: list[int]) -> tuple[list[int], bool]:
        """Walk the tree along `tokens` (what followed the root): (matched nodes, walk finished).

        The walk is finished when a token matched no child or a leaf was reached; otherwise more
        tokens could still extend the match.
        """
        node, nodes = 0, []
        for tok in tokens:
            node = self.children[node].get(tok, -1)
            if node < 0:
                return nodes, True
            nodes.append(node)
        return nodes, not self.children[nodes[-1] if nodes else 0]


@lru_cache(maxsize=256)
def _ancestor_mask(parents: tuple[int, ...]) -> torch.Tensor:
    # static templates repeat the same shape every step: cache the mask per shape
    n = len(parents) + 1
    ancestors: list[list[int]] = [[0]]
    for i, p in enumerate(parents, start=1):
        ancestors.append(ancestors[p] + [i])
    rows = [i for i, a in enumerate(ancestors) for _ in a]
    cols = [j for a in ancestors for j in a]
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[rows, cols] = True
    return mask
