"""Speculative decoding: propose -> one verification forward over the tree -> accept -> compact the
cache to the accepted path -> feed the target's logits back to the proposers.

The verifier sees only a `DraftTree`; it never knows which proposer made it. A step with nothing
worth verifying is exactly a plain step: the same forward, the same sampling, the same random draws.
"""
from __future__ import annotations

import time

import torch

from ...kv.cache import KVCache
from ...models.transformer import Transformer
from ..plain import StepOutcome
from ..sequence import Sequence
from .controller import Controller
from .cost import cost_model
from .proposers.base import Budget, Feedback, Proposer
from .shadow import Shadows
from .tree import DraftTree
from .verify import Acceptance, accept_greedy, accept_sampling


class SpeculativeDecoding:
    def __init__(self, name: str, proposers: list[Proposer], controller: Controller | None = None) -> None:
        self.name = name
        self.proposers = proposers
        self.controller = controller or Controller()
        self._key = f"shadows:{name}"      # per-request state key, apart from the proposers' own

    # ---- the engine's strategy protocol ---------------------------------------------------
    def step(self, model: Transformer, cache: KVCache, seq: Sequence) -> StepOutcome:
        shadows = self._shadows(seq)
        shadows.resolve(seq.ids)
        base = cache.length(seq.slot)          # where the pending token's entry goes
        root_pos = len(seq.ids) - 1            # and its RoPE position
        budget = Budget(nodes=min(self.controller.max_nodes, cache.capacity - base - 1),
                        depth=seq.stopper.limit - seq.stopper.count - 1, cache=cache)
        costs = None
        if self.controller.fixed is None:
            costs = cost_model(model, cache, seq.slot, self.controller.max_nodes + 1)
        plan = self.controller.plan(self.proposers, seq, budget, costs, shadows, root_pos)
        tree = plan.tree.limit_depth(max(budget.depth, 0))
        t0 = time.perf_counter()
        logits = self._forward(model, cache, seq, tree, root_pos)
        acceptance = self._accept(seq, tree, logits)
        t1 = time.perf_counter()
        if len(tree):
            cache.keep_tail(base, [0, *acceptance.nodes], seq.slot)
        feedback = Feedback(tree, logits, acceptance, seq.pending, root_pos)
        for p in self.proposers:
            p.update(seq, feedback)
        t2 = time.perf_counter()
        if costs is not None:
            costs.observe(len(tree) + 1, t1 - t0)
            if len(tree):
                self.controller.observe_overhead(t2 - t1)
        emitted = [logits[0], *(logits[n] for n in acceptance.nodes)]
        return StepOutcome(acceptance.tokens, emitted, acceptance.accepted, len(tree))

    def step_batch(self, model: Transformer, cache: KVCache, seqs: list[Sequence]) -> list[StepOutcome]:
        # trees differ per request, so each is verified on its own
        return [self.step(model, cache, s) for s in seqs]

    def release(self, seq: Sequence) -> None:
        seq.strategy_state.pop(self._key, None)
        for p in self.proposers:
            p.release(seq)

    # ---- pieces -----------------------------------------------------------------------------
    def _shadows(self, seq: Sequence) -> Shadows:
        return seq.strategy_state.setdefault(self._key, Shadows())

    @staticmethod
    def _forward(model: Transformer, cache: KVCache, seq: Sequence, tree: DraftTree, root_pos: int) -> torch.Tensor:
        dev = model.device
        tokens = torch.tensor([[seq.pending, *tree.tokens]], device=dev)
        positions = tree.positions(root_pos, dev)[None]
        is_chain = tree.parents == list(range(len(tree)))
        mask = None if is_chain else tree.mask(dev)        # a chain is just causal attention
        return model(tokens, positions, cache, slots=[seq.slot], tree_mask=mask)[0]

    @staticmethod
    def _accept(seq: Sequence, tree: DraftTree, logits: torch.Tensor) -> Acceptance:
        sampler, params = seq.sampler, seq.params
        if params.greedy and not params.has_penalties:
            targets = logits.argmax(-1).tolist()          # one op for the whole tree
            return accept_greedy(tree, lambda node, path: targets[node])
        if params.greedy:
            return accept_greedy(tree, lambda node, path: int(sampler.process(logits[node], seq.ids + path).argmax()))
        return accept_sampling(tree, lambda node, path: sampler.probs(logits[node], seq.ids + path), sampler)
