"""Proposers on toy data (no model): what Token Recycling learns, and the merged proposer."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from hastelm.bench.replay import ranking_logits
from hastelm.decoding.speculative.proposers.base import Budget, Feedback
from hastelm.decoding.speculative.proposers.merged import Merged
from hastelm.decoding.speculative.proposers.pld import PromptLookup
from hastelm.decoding.speculative.proposers.recycling import TokenRecycling
from hastelm.decoding.speculative.tree import DraftTree
from hastelm.decoding.speculative.verify import Acceptance


def seq(ids: list[int]) -> SimpleNamespace:
    return SimpleNamespace(ids=ids, pending=ids[-1], strategy_state={})


def test_recycling_learns_rank_acceptance_from_steps_that_verified_another_tree():
    rec = TokenRecycling(vocab_size=10, k=2, template_size=4)
    rec.matrix[1] = [2, 3]
    s = seq([5, 1])
    tree = rec.propose(s, Budget(nodes=4, depth=4))
    assert tree.tokens[:2] == [2, 3]          # token 1's successors, rank 0 then rank 1
    trials, hits = rec.trials.copy(), rec.hits.copy()
    # a plain step (nothing verified) found that 3, rank 1, followed the pending token
    rec.update(s, Feedback(DraftTree([], []), ranking_logits(torch.tensor([[3, 4]]), 10), Acceptance([], [3]), 1, 1))
    assert list(rec.trials - trials) == [1, 1] and list(rec.hits - hits) == [0, 1]
    assert list(rec.matrix[1]) == [3, 4]      # and the root's row follows the target's logits


def test_merged_proposer_puts_prompt_lookup_first_and_recycling_after():
    rec = TokenRecycling(vocab_size=10, k=2, template_size=4)
    rec.matrix[1] = [2, 3]
    merged = Merged([PromptLookup(), rec])
    s = seq([1, 7, 8, 1])                      # the last token occurred before, followed by 7 8 1
    tree = merged.propose(s, Budget(nodes=3, depth=8))
    assert tree.tokens == [7, 8, 1] and tree.kind == "pld:n1"
    tree = merged.propose(s, Budget(nodes=6, depth=8))
    assert tree.tokens[:5] == [7, 8, 1, 2, 3] and tree.parents[3:5] == [0, 0]
    assert merged.propose(seq([9]), Budget(nodes=4, depth=8)) is None   # neither has anything
