"""Merge candidate continuations into one draft tree (shared prefixes become shared nodes)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..tree import DraftTree


def trie_tree(candidates: Iterable[list[int]], max_nodes: int, max_depth: int, kind: str = "") -> DraftTree:
    """Insert candidates best first; node order keeps a better candidate's nodes before a worse
    one's, so verifying a prefix of the node list verifies the best candidates."""
    return _merge(((c[:max_depth], range(min(len(c), max_depth))) for c in candidates), max_nodes, kind)


def merge_trees(trees: Iterable[DraftTree], max_nodes: int, kind: str = "") -> DraftTree:
    """One tree holding every node of `trees`, first tree's nodes first (a node two trees share,
    same tokens from the root, appears once); stops at `max_nodes`."""
    return _merge(((t.tokens, t.parents) for t in trees), max_nodes, kind)


def _merge(parts: Iterable[tuple[Sequence[int], Sequence[int]]], max_nodes: int, kind: str) -> DraftTree:
    """Insert each part's nodes (tokens, parent indices: 0 = root, k = the part's k-th token) in
    order; a chain is a part whose parents are 0, 1, 2, ..."""
    tokens: list[int] = []
    parents: list[int] = []
    children: list[dict[int, int]] = [{}]
    for part_tokens, part_parents in parts:
        if len(tokens) >= max_nodes:
            break
        where = [0]                    # this part's node -> merged node (-1: over the budget)
        for tok, parent in zip(part_tokens, part_parents):
            at = where[parent]
            node = -1 if at < 0 else children[at].get(tok, -1)
            if at >= 0 and node < 0 and len(tokens) < max_nodes:
                tokens.append(tok)
                parents.append(at)
                children.append({})
                node = children[at][tok] = len(tokens)
            where.append(node)
    return DraftTree(tokens, parents, kind=kind)
