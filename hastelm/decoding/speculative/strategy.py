"""Speculative decoding: propose -> one verification forward over the tree -> accept -> compact the
cache to the accepted path -> feed the target's logits back to the proposers.

The verifier sees only a `DraftTree`; it never knows which proposer made it. A step with nothing
worth verifying is exactly a plain step: the same forward, the same sampling, the same random draws.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...engine.runner import ModelRunner, Row
from ..plain import StepOutcome
from ..sampling import greedy_tokens
from ..sequence import Sequence
from .controller import Controller, Request
from .cost import CostModel, cost_model
from .proposers.base import Budget, Feedback, Proposer
from .shadow import Shadows
from .tree import DraftTree
from .verify import Acceptance, accept_greedy, accept_sampling


@dataclass
class _Planned:
    tree: DraftTree        # what this step verifies (empty: a plain step)
    base: int              # cache index of the pending token's entry
    root: int              # its RoPE position
    costs: CostModel | None


class SpeculativeDecoding:
    def __init__(self, name: str, proposers: list[Proposer], controller: Controller | None = None) -> None:
        self.name = name
        self.proposers = proposers
        self.controller = controller or Controller()
        self._key = f"shadows:{name}"      # per-request state key, apart from the proposers' own

    # ---- the engine's strategy protocol ---------------------------------------------------
    def step(self, runner: ModelRunner, seq: Sequence) -> StepOutcome:
        return self.step_batch(runner, [seq])[0]

    def step_batch(self, runner: ModelRunner, seqs: list[Sequence]) -> list[StepOutcome]:
        """Propose for every request, verify all their trees in one forward (continuous batching),
        then accept, compact and feed back per request."""
        cache = runner.cache
        plans = self._plan(runner, seqs)
        t0 = time.perf_counter()
        logits = self._verify(runner, seqs, plans)
        acceptances = [self._accept(s, p.tree, lg) for s, p, lg in zip(seqs, plans, logits)]
        t1 = time.perf_counter()
        outcomes = []
        for seq, plan, lg, acceptance in zip(seqs, plans, logits, acceptances):
            tree = plan.tree
            # the accepted path stays; rejected nodes go
            cache.keep_tail(plan.base, [0, *acceptance.nodes], seq.slot)
            feedback = Feedback(tree, lg, acceptance, seq.pending, plan.root)
            for p in self.proposers:
                p.update(seq, feedback)
            emitted = [lg[0], *(lg[n] for n in acceptance.nodes)]
            outcomes.append(StepOutcome(acceptance.tokens, emitted, acceptance.accepted, len(tree)))
        t2 = time.perf_counter()
        # the cost curve is that of one sequence's forward; batched steps do not feed it
        if len(seqs) == 1 and plans[0].costs is not None:
            plans[0].costs.observe(len(plans[0].tree) + 1, t1 - t0)
            if len(plans[0].tree):
                self.controller.observe_overhead(t2 - t1)
        return outcomes

    def release(self, seq: Sequence) -> None:
        seq.strategy_state.pop(self._key, None)
        for p in self.proposers:
            p.release(seq)

    # ---- pieces -----------------------------------------------------------------------------
    def _shadows(self, seq: Sequence) -> Shadows:
        return seq.strategy_state.setdefault(self._key, Shadows())

    def _plan(self, runner: ModelRunner, seqs: list[Sequence]) -> list[_Planned]:
        cache = runner.cache
        requests, bases = [], []
        for seq in seqs:
            shadows = self._shadows(seq)
            shadows.resolve(seq.ids)
            base = cache.length(seq.slot)          # where the pending token's entry goes
            bases.append(base)
            budget = Budget(nodes=min(self.controller.max_nodes, cache.capacity - base - 1),
                            depth=seq.stopper.limit - seq.stopper.count - 1, runner=runner)
            costs = None
            if self.controller.fixed is None:
                costs = cost_model(runner, seq.slot, self.controller.max_nodes + 1)
            requests.append(Request(seq, budget, costs, shadows, len(seq.ids) - 1))   # root: its RoPE position
        plans = self.controller.plan_batch(self.proposers, requests)
        return [_Planned(plan.tree.limit_depth(max(r.budget.depth, 0)), base, r.root, r.costs)
                for r, plan, base in zip(requests, plans, bases)]

    @staticmethod
    def _verify(runner: ModelRunner, seqs: list[Sequence], plans: list[_Planned]) -> list[torch.Tensor]:
        """Target logits `[N_i + 1, V]` at every request's root and draft nodes, all trees in one
        forward (a chain is just causal attention: no mask)."""
        rows = []
        for seq, plan in zip(seqs, plans):
            tree = plan.tree
            is_chain = tree.parents == list(range(len(tree)))
            rows.append(Row(seq.slot, [seq.pending, *tree.tokens], positions=[plan.root + d for d in [0, *tree.depths]],
                            mask=None if is_chain else tree.mask()))
        logits = runner.forward(rows)
        return [logits[b, :len(p.tree) + 1] for b, p in enumerate(plans)]

    @staticmethod
    def _accept(seq: Sequence, tree: DraftTree, logits: torch.Tensor) -> Acceptance:
        sampler, params = seq.sampler, seq.params
        if params.greedy and not params.adjusts_logits:
            targets = greedy_tokens(logits)          # one call for the whole tree
            return accept_greedy(tree, lambda node, path: targets[node])
        if params.greedy:
            return accept_greedy(tree, lambda node, path: int(sampler.process(logits[node], seq.ids + path).argmax()))
        return accept_sampling(tree, lambda node, path: sampler.probs(logits[node], seq.ids + path), sampler)
