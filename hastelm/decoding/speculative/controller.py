"""Hardware-aware controller: how much of which proposal to verify, or whether to speculate at all.

Every step it maximises expected tokens per second,

    value(m) = (1 + E[accepted | m nodes]) / (forward(1 + m) + drafting(m) + overhead)

against plain decoding's 1 / forward(1), where forward() is this machine's measured cost curve
(`cost.py`), E comes from each proposer's running acceptance statistics (`stats.py`), drafting is
the measured per-token cost of proposers that run a model, and overhead is the measured extra
bookkeeping of a speculative step. A cheap curve (GPU) makes large trees pay; a steep one (2-core
CPU) small ones; when nothing pays it backs off to plain steps. Free proposers keep being scored
in the shadow while backed off; proposers that cost forwards are probed at growing intervals.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import cast

from ..sequence import Sequence
from .cost import CostModel
from .proposers.base import Budget, DraftingProposer, Proposer
from .shadow import Shadows
from .stats import SIZES, ChainStats, PrefixStats
from .tree import DraftTree

MARGIN = 0.02          # speculate only when it is predicted to win by more than this
PROBE_START = 16       # plain steps before a backed-off costly proposer is tried again
PROBE_MAX = 1024
RATE = 0.1             # running averages of measured times
USEFUL_COST = 4.0      # free proposers offer trees up to the size whose forward costs this many steps


@dataclass
class Plan:
    proposer: Proposer | None      # None: a plain step
    tree: DraftTree                # what to verify (a prefix of the proposal; empty for plain)
    proposed: list[tuple[Proposer, DraftTree]] = field(default_factory=list)   # every proposal made


@dataclass
class Request:
    """One sequence to plan a step for."""
    seq: Sequence
    budget: Budget
    costs: CostModel | None
    shadows: Shadows
    root: int          # the pending token's RoPE position (the tree's root)


@dataclass
class _CostlyState:
    draft_s: float = 0.0          # seconds per drafted token (0 until measured)
    plain_steps: int = 0          # plain steps since this proposer last drafted
    probe_every: int = PROBE_START


class Controller:
    def __init__(self, max_nodes: int = 64, fixed: int | None = None,
                 chain_alpha: dict[str, float] | None = None) -> None:
        """`fixed`: always verify this many nodes (tests and experiments; no cost model needed).
        `chain_alpha`: prior per-token acceptance of costly proposers, by name."""
        self.max_nodes = max_nodes
        self.fixed = fixed
        self.chain_alpha = chain_alpha or {}
        self.stats: dict[tuple[str, str], PrefixStats | ChainStats] = {}
        self.costly: dict[str, _CostlyState] = {}
        self.overhead_s = 0.0

    def stats_for(self, proposer: Proposer, kind: str) -> PrefixStats | ChainStats:
        key = (proposer.name, kind)
        if key not in self.stats:
            if proposer.free:
                self.stats[key] = PrefixStats()
            else:
                drafting = cast(DraftingProposer, proposer)
                self.stats[key] = ChainStats(self.chain_alpha.get(proposer.name, drafting.prior_alpha))
        return self.stats[key]

    # ---- planning ----------------------------------------------------------------------
    def plan_batch(self, proposers: list[Proposer], requests: list[Request]) -> list[Plan]:
        """One plan per request. Proposers that run a model draft for all requests at once."""
        best = [Plan(None, DraftTree([], [])) for _ in requests]
        best_value = [0.0 if r.costs is None else (1 + MARGIN) / r.costs.forward(1) for r in requests]
        for p in proposers:
            if p.free:
                results = [self._plan_free(p, r) for r in requests]
            else:
                results = self._plan_costly(cast(DraftingProposer, p), requests)
            for i, (tree, m, value) in enumerate(results):
                if tree is not None and len(tree):
                    best[i].proposed.append((p, tree))
                if tree is not None and m > 0 and value > best_value[i]:
                    best[i] = Plan(p, tree.prefix(m), best[i].proposed)
                    best_value[i] = value
        return best

    def _plan_free(self, p: Proposer, r: Request) -> tuple[DraftTree | None, int, float]:
        budget = r.budget
        if self.fixed is None and r.costs is not None:
            # no larger tree than could ever pay here: building and scoring 64 nodes every step
            # costs a 2-core CPU more than the 16 it might verify
            budget = Budget(min(budget.nodes, self.useful_nodes(r.costs)), budget.depth, budget.runner)
        tree = p.propose(r.seq, budget)
        if tree is None or not len(tree):
            return None, 0, 0.0
        stats = self.stats_for(p, tree.kind)
        r.shadows.add(stats, tree, r.root)
        if self.fixed is not None:
            return tree, min(self.fixed, len(tree)), 1.0
        if r.costs is None or not stats.observed:
            return tree, 0, 0.0
        m, value = self._best_size(stats, r.costs, len(tree), 0.0)
        return tree, m, value

    def _chain_length(self, st: _CostlyState, stats: PrefixStats | ChainStats, r: Request) -> tuple[int, float]:
        """How many tokens a costly proposer should draft for this request (0: none) and the value."""
        limit = min(r.budget.nodes, r.budget.depth)
        if limit <= 0:
            return 0, 0.0
        if self.fixed is not None:
            return min(self.fixed, limit), 1.0
        if r.costs is None:
            return 0, 0.0
        k, value = self._best_size(stats, r.costs, limit, st.draft_s)
        if k == 0 or value * r.costs.forward(1) < 1 + MARGIN:
            st.plain_steps += 1
            if st.plain_steps < st.probe_every:
                return 0, 0.0
            # probe: draft anyway so the statistics can recover; back off longer each time
            st.probe_every = min(2 * st.probe_every, PROBE_MAX)
            k = max(k, 1)
        else:
            st.probe_every = PROBE_START
        st.plain_steps = 0
        return k, value

    def _plan_costly(self, p: DraftingProposer, requests: list[Request]) -> list[tuple[DraftTree | None, int, float]]:
        st = self.costly.setdefault(p.name, _CostlyState())
        stats = self.stats_for(p, "")
        choices = [self._chain_length(st, stats, r) for r in requests]
        asked = [(i, Budget(k, min(k, r.budget.depth), r.budget.runner))
                 for i, (r, (k, _)) in enumerate(zip(requests, choices)) if k > 0]
        results: list[tuple[DraftTree | None, int, float]] = [(None, 0, 0.0)] * len(requests)
        if not asked:
            return results
        t0 = time.perf_counter()
        trees = p.propose_batch([(requests[i].seq, b) for i, b in asked])
        drafted = sum(len(t) for t in trees if t is not None)
        if drafted:   # a batch's drafting time, shared by its tokens
            per_token = (time.perf_counter() - t0) / drafted
            st.draft_s = per_token if st.draft_s == 0 else st.draft_s + RATE * (per_token - st.draft_s)
        for (i, _), tree in zip(asked, trees):
            if tree is not None and len(tree):
                requests[i].shadows.add(stats, tree, requests[i].root)
                results[i] = (tree, len(tree), choices[i][1])
        return results

    def useful_nodes(self, costs: CostModel) -> int:
        """The largest tree size whose forward costs at most USEFUL_COST one-token forwards."""
        one = costs.forward(1)
        fits = [m for m in SIZES if m <= self.max_nodes and costs.forward(m + 1) <= USEFUL_COST * one]
        return max(fits, default=SIZES[0])

    def _best_size(self, stats: PrefixStats | ChainStats, costs: CostModel, limit: int,
                   draft_s: float) -> tuple[int, float]:
        best_m, best_v = 0, 0.0
        for m in SIZES:
            if m > min(limit, self.max_nodes):
                break
            seconds = costs.forward(m + 1) + m * draft_s + self.overhead_s
            v = (1 + stats.expected(m)) / seconds
            if v > best_v:
                best_m, best_v = m, v
        return best_m, best_v

    # ---- measurements ------------------------------------------------------------------
    def observe_overhead(self, seconds: float) -> None:
        self.overhead_s += RATE * (max(seconds, 0.0) - self.overhead_s)
