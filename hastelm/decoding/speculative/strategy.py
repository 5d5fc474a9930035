"""Speculative decoding: propose -> one verification forward over the tree -> accept -> compact the
cache to the accepted path -> feed the target's logits back to the proposers.

The verifier sees only a `DraftTree`; it never knows which proposer made it. A step with nothing
worth verifying is exactly a plain step: the same forward, the same sampling, the same random draws.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...kv.cache import KVCache
from ...models.transformer import Transformer
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
    def step(self, model: Transformer, cache: KVCache, seq: Sequence) -> StepOutcome:
        return self.step_batch(model, cache, [seq])[0]

    def step_batch(self, model: Transformer, cache: KVCache, seqs: list[Sequence]) -> list[StepOutcome]:
        """Propose for every request, verify all their trees in one forward (continuous batching),
        then accept, compact and feed back per request."""
        plans = self._plan(model, cache, seqs)
        t0 = time.perf_counter()
        logits = self._verify(model, cache, seqs, plans)
        acceptances = [self._accept(s, p.tree, lg) for s, p, lg in zip(seqs, plans, logits)]
        t1 = time.perf_counter()
        outcomes = []
        for seq, plan, lg, acceptance in zip(seqs, plans, logits, acceptances):
            tree = plan.tree
            # the accepted path stays; rejected nodes and a batch's padding entries go
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

    def _plan(self, model: Transformer, cache: KVCache, seqs: list[Sequence]) -> list[_Planned]:
        requests, bases = [], []
        for seq in seqs:
            shadows = self._shadows(seq)
            shadows.resolve(seq.ids)
            base = cache.length(seq.slot)          # where the pending token's entry goes
            bases.append(base)
            budget = Budget(nodes=min(self.controller.max_nodes, cache.capacity - base - 1),
                            depth=seq.stopper.limit - seq.stopper.count - 1, cache=cache)
            costs = None
            if self.controller.fixed is None:
                costs = cost_model(model, cache, seq.slot, self.controller.max_nodes + 1)
            requests.append(Request(seq, budget, costs, shadows, len(seq.ids) - 1))   # root: its RoPE position
        plans = self.controller.plan_batch(self.proposers, requests)
        return [_Planned(plan.tree.limit_depth(max(r.budget.depth, 0)), base, r.root, r.costs)
                for r, plan, base in zip(requests, plans, bases)]

    @staticmethod
    def _verify(model: Transformer, cache: KVCache, seqs: list[Sequence],
                plans: list[_Planned]) -> list[torch.Tensor]:
        """Target logits `[N_i + 1, V]` at every request's root and draft nodes."""
        dev = model.device
        if len(seqs) == 1:
            seq, plan = seqs[0], plans[0]
            tokens = torch.tensor([[seq.pending, *plan.tree.tokens]], device=dev)
            is_chain = plan.tree.parents == list(range(len(plan.tree)))
            mask = None if is_chain else plan.tree.mask(dev)        # a chain is just causal attention
            return [model(tokens, plan.tree.positions(plan.root, dev)[None], cache, slots=[seq.slot],
                          tree_mask=mask)[0]]
        # one forward for all trees, padded to the largest; a padding entry sees only itself and
        # the prefix, and compaction to the accepted path drops it from the cache
        width = max(len(p.tree) for p in plans) + 1
        if any(p.base + width > cache.capacity for p in plans):
            return [SpeculativeDecoding._verify(model, cache, [s], [p])[0] for s, p in zip(seqs, plans)]
        tokens = torch.zeros(len(seqs), width, dtype=torch.long)
        positions = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.eye(width, dtype=torch.bool).repeat(len(seqs), 1, 1)
        for b, (seq, plan) in enumerate(zip(seqs, plans)):
            n = len(plan.tree) + 1
            tokens[b, :n] = torch.tensor([seq.pending, *plan.tree.tokens])
            positions[b, :n] = plan.tree.positions(plan.root)
            positions[b, n:] = plan.root + torch.arange(1, width - n + 1)
            mask[b, :n, :n] = plan.tree.mask()
        logits = model(tokens.to(dev), positions.to(dev), cache, slots=[s.slot for s in seqs],
                       tree_mask=mask.to(dev))
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
