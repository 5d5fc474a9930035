"""Merge candidate continuations into one draft tree (shared prefixes become shared nodes)."""
from __future__ import annotations

from collections.abc import Iterable

from ..tree import DraftTree


def trie_tree(candidates: Iterable[list[int]], max_nodes: int, max_depth: int, kind: str = "") -> DraftTree:
    """Insert candidates best first; node order keeps a better candidate's nodes before a worse
    one's, so verifying a prefix of the node list verifies the best candidates."""
    tokens: list[int] = []
    parents: list[int] = []
    children: list[dict[int, int]] = [{}]
    for cand in candidates:
        node = 0
        for tok in cand[:max_depth]:
            nxt = children[node].get(tok)
            if nxt is None:
                if len(tokens) >= max_nodes:
                    break
                tokens.append(tok)
                parents.append(node)
                children.append({})
                nxt = len(tokens)
                children[node][tok] = nxt
            node = nxt
        if len(tokens) >= max_nodes:
            break
    return DraftTree(tokens, parents, kind=kind)


def merge_trees(trees: Iterable[DraftTree], max_nodes: int, kind: str = "") -> DraftTree:
    """One tree holding every node of `trees`, first tree's nodes first (a node two trees share,
    same tokens from the root, appears once); stops at `max_nodes`."""
    tokens: list[int] = []
    parents: list[int] = []
    children: list[dict[int, int]] = [{}]
    for tree in trees:
        where = [0]                    # this tree's node -> merged node (-1: over the budget)
        for tok, parent in zip(tree.tokens, tree.parents):
            at = where[parent]
            node = -1 if at < 0 else children[at].get(tok, -1)
            if at >= 0 and node < 0 and len(tokens) < max_nodes:
                tokens.append(tok)
                parents.append(at)
                children.append({})
                node = children[at][tok] = len(tokens)
            where.append(node)
    return DraftTree(tokens, parents, kind=kind)
