"""Draft trees and acceptance rules, checked exactly on toy distributions (no model needed).

The rejection-sampling rules are checked by enumerating every branch of their random choices:
`BranchingSampler` replays a script of accept/reject decisions and records each decision's
probability, so the exact output distribution of the real implementation can be summed up.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from hastelm.decoding.speculative.proposers.trie import merge_trees, trie_tree
from hastelm.decoding.speculative.tree import DraftTree
from hastelm.decoding.speculative.verify import accept_greedy, accept_sampling

# ---- trees -----------------------------------------------------------------------------------


def sample_tree() -> DraftTree:
    #   root ─ 10 ─ 11 ─ 12
    #        │    └ 13
    #        └ 20 ─ 21
    return DraftTree([10, 20, 11, 13, 21, 12], [0, 0, 1, 1, 2, 3])


def test_tree_mask_is_ancestors_and_self():
    tree = sample_tree()
    mask = tree.mask()
    ancestors = {0: [0], 1: [0, 1], 2: [0, 2], 3: [0, 1, 3], 4: [0, 1, 4], 5: [0, 2, 5], 6: [0, 1, 3, 6]}
    expected = torch.zeros(7, 7, dtype=torch.bool)
    for node, anc in ancestors.items():
        expected[node, anc] = True
    assert torch.equal(mask, expected)


def test_tree_positions_follow_depth():
    assert sample_tree().positions(100).tolist() == [100, 101, 101, 102, 102, 102, 103]
    assert sample_tree().depth == 3


def test_tree_prefix_select_and_path():
    tree = sample_tree()
    assert tree.prefix(3).tokens == [10, 20, 11] and tree.prefix(3).parents == [0, 0, 1]
    pruned = tree.limit_depth(1)
    assert pruned.tokens == [10, 20] and pruned.parents == [0, 0]
    assert tree.path(6) == [1, 3, 6]
    with pytest.raises(ValueError):
        tree.select([True, False, True, True, True, True])    # keeps 21 without its parent 20
    with pytest.raises(ValueError):
        DraftTree([1, 1], [0, 0])                                 # duplicate siblings


def test_tree_match_walks_the_real_continuation():
    tree = sample_tree()
    assert tree.match([10, 11, 12, 99]) == ([1, 3, 6], True)     # leaf reached
    assert tree.match([10, 13]) == ([1, 4], True)
    assert tree.match([20, 5]) == ([2], True)                     # mismatch
    assert tree.match([10]) == ([1], False)                       # could still grow


def test_trie_merges_shared_prefixes_best_first():
    tree = trie_tree([[1, 2, 3], [1, 2, 4], [5]], max_nodes=10, max_depth=10)
    assert tree.tokens == [1, 2, 3, 4, 5] and tree.parents == [0, 1, 2, 2, 0]
    assert trie_tree([[1, 2, 3], [5]], max_nodes=2, max_depth=10).tokens == [1, 2]
    assert trie_tree([[1, 2, 3]], max_nodes=10, max_depth=2).tokens == [1, 2]


def test_merged_trees_share_common_paths_and_keep_the_first_trees_nodes_first():
    first = DraftTree([10, 11, 12], [0, 1, 2])                    # a chain 10 11 12
    merged = merge_trees([first, sample_tree()], max_nodes=10, kind="k")
    # sample_tree's 10 and 11 are the chain's; its 13, 20, 21 and 11's child 12 (the chain's) join
    assert merged.tokens == [10, 11, 12, 20, 13, 21] and merged.parents == [0, 1, 2, 0, 1, 4]
    assert merged.kind == "k"
    assert merge_trees([first, sample_tree()], max_nodes=4).tokens == [10, 11, 12, 20]
    for path in ([10, 11, 12], [10, 13], [20, 21]):               # every path of either tree
        assert len(merged.match(path)[0]) == len(path)


# ---- greedy ----------------------------------------------------------------------------------


def test_greedy_accepts_the_argmax_path():
    tree = sample_tree()
    argmax = {0: 10, 1: 13, 4: 7}                                  # root -> 10 -> 13 -> 7
    acc = accept_greedy(tree, lambda node, path: argmax[node])
    assert acc.nodes == [1, 4] and acc.tokens == [10, 13, 7]
    acc = accept_greedy(tree, lambda node, path: 99)
    assert acc.nodes == [] and acc.tokens == [99]


# ---- rejection sampling, enumerated exactly ----------------------------------------------------


class _U:
    """A uniform draw whose comparisons follow a script; records P(decision)."""

    def __init__(self, owner: BranchingSampler, scale: float = 1.0) -> None:
        self.owner, self.scale = owner, scale

    def __mul__(self, k: float) -> _U:
        return _U(self.owner, self.scale * k)

    def __lt__(self, x: float) -> bool:
        threshold = min(max(x / self.scale, 0.0), 1.0)             # P(u * scale < x)
        return self.owner.decide(threshold)


class BranchingSampler:
    def __init__(self, script: list[int]) -> None:
        self.script, self.i, self.prob = script, 0, 1.0
        self.need = 0          # when the script ran out: how many options the next choice has

    def _next(self, n: int) -> int:
        if self.i == len(self.script):
            self.need = self.need or n
            return 0
        choice = self.script[self.i]
        self.i += 1
        return choice

    def decide(self, threshold: float) -> bool:
        accept = self._next(2) == 0
        self.prob *= threshold if accept else 1 - threshold
        return accept

    def uniform(self) -> _U:
        return _U(self)

    def sample_from(self, p: torch.Tensor) -> int:
        tok = self._next(len(p))
        self.prob *= float(p[tok])
        return tok


def exact_outcomes(tree: DraftTree, target) -> dict[tuple[int, ...], float]:
    """Probability of every token sequence one verification step can emit."""
    out: dict[tuple[int, ...], float] = {}
    frontier: list[list[int]] = [[]]
    while frontier:
        script = frontier.pop()
        s = BranchingSampler(script)
        acc = accept_sampling(tree, target, s)
        if s.need:             # the script ran out: branch on the next choice
            frontier += [script + [c] for c in range(s.need)]
            continue
        if s.prob > 0:
            out[tuple(acc.tokens)] = out.get(tuple(acc.tokens), 0.0) + s.prob
    return out


def dist(*values: float) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float64)
    return t / t.sum()


V = 5
ROOT = dist(0.35, 0.25, 0.2, 0.15, 0.05)
AFTER = {tok: dist(*[(tok + 1) * (j + 1) % 7 + 0.5 for j in range(V)]) for tok in range(V)}


def target_from_paths(tree: DraftTree):
    """p at a node depends on its last token (a toy 'model'); the root uses ROOT."""
    def target(node: int, path: list[int]) -> torch.Tensor:
        return ROOT if node == 0 else AFTER[tree.tokens[node - 1]]
    return target


def assert_matches_plain(outcomes: dict[tuple[int, ...], float]) -> None:
    """First token ~ ROOT; a second token, when the step emits one, ~ AFTER[first]."""
    assert sum(outcomes.values()) == pytest.approx(1.0, abs=1e-12)
    first = torch.zeros(V, dtype=torch.float64)
    second = torch.zeros(V, V, dtype=torch.float64)
    for seq, p in outcomes.items():
        first[seq[0]] += p
        if len(seq) > 1:
            second[seq[0], seq[1]] += p
    assert torch.allclose(first, ROOT, atol=1e-12)
    for tok in range(V):
        if second[tok].sum() > 0:
            assert torch.allclose(second[tok] / second[tok].sum(), AFTER[tok], atol=1e-12)


@pytest.mark.parametrize("children", [[0], [3], [1, 4], [4, 0, 2], [0, 1, 2, 3, 4]])
def test_recursive_rule_for_deterministic_children_is_exact(children):
    tree = DraftTree(children, [0] * len(children))
    assert_matches_plain(exact_outcomes(tree, target_from_paths(tree)))


def test_recursive_rule_on_a_two_level_tree_is_exact():
    tree = DraftTree([1, 3, 0, 2, 4], [0, 0, 1, 1, 2])
    outcomes = exact_outcomes(tree, target_from_paths(tree))
    assert_matches_plain(outcomes)
    assert max(len(s) for s in outcomes) == 3          # whole paths get accepted


def test_leviathan_rule_with_draft_probabilities_is_exact():
    q = dist(0.1, 0.5, 0.1, 0.2, 0.1)
    total: dict[tuple[int, ...], float] = {}
    for tok in range(V):           # one draft token sampled from q: mix over every value it takes
        tree = DraftTree([tok], [0], probs=q[None])
        for seq, p in exact_outcomes(tree, target_from_paths(tree)).items():
            total[seq] = total.get(seq, 0.0) + p * float(q[tok])
    assert_matches_plain(total)


def test_leviathan_chain_of_two_sampled_tokens_is_exact():
    q1 = dist(0.3, 0.3, 0.2, 0.1, 0.1)
    q2 = {t: dist(*[1 + ((t + j) % 3) for j in range(V)]) for t in range(V)}
    total: dict[tuple[int, ...], float] = {}
    for a, b in itertools.product(range(V), range(V)):
        tree = DraftTree.chain([a, b], probs=torch.stack([q1, q2[a]]))
        weight = float(q1[a] * q2[a][b])
        for seq, p in exact_outcomes(tree, target_from_paths(tree)).items():
            total[seq] = total.get(seq, 0.0) + p * weight
    assert_matches_plain(total)
