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

from ..sequence import Sequence
from .cost import CostModel
from .proposers.base import Budget, Proposer
from .shadow import Shadows
from .stats import SIZES, ChainStats, PrefixStats
from .tree import DraftTree

MARGIN = 0.02          # speculate only when it is predicted to win by more than this
PROBE_START = 16       # plain steps before a backed-off costly proposer is tried again
PROBE_MAX = 1024
RATE = 0.1             # running averages of measured times


@dataclass
class Plan:
    proposer: Proposer | None      # None: a plain step
    tree: DraftTree                # what to verify (a prefix of the proposal; empty for plain)
    proposed: list[tuple[Proposer, DraftTree]] = field(default_factory=list)   # every proposal made


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
            prior = self.chain_alpha.get(proposer.name, getattr(proposer, "prior_alpha", 0.5))
            self.stats[key] = PrefixStats() if proposer.free else ChainStats(prior)
        return self.stats[key]

    # ---- planning ----------------------------------------------------------------------
    def plan(self, proposers: list[Proposer], seq: Sequence, budget: Budget, costs: CostModel | None,
             shadows: Shadows, root: int) -> Plan:
        best = Plan(None, DraftTree([], []))
        best_value = 0.0 if costs is None else (1 + MARGIN) / costs.forward(1)
        for p in proposers:
            if p.free:
                tree, m, value = self._plan_free(p, seq, budget, costs, shadows, root)
            else:
                tree, m, value = self._plan_costly(p, seq, budget, costs, shadows, root)
            if tree is not None and len(tree):
                best.proposed.append((p, tree))
            if tree is not None and m > 0 and value > best_value:
                best = Plan(p, tree.prefix(m), best.proposed)
                best_value = value
        return best

    def _plan_free(self, p: Proposer, seq: Sequence, budget: Budget, costs: CostModel | None,
                   shadows: Shadows, root: int) -> tuple[DraftTree | None, int, float]:
        tree = p.propose(seq, budget)
        if tree is None or not len(tree):
            return None, 0, 0.0
        stats = self.stats_for(p, tree.kind)
        shadows.add(stats, tree, root)
        if self.fixed is not None:
            return tree, min(self.fixed, len(tree)), 1.0
        if costs is None or not stats.observed:
            return tree, 0, 0.0
        m, value = self._best_size(stats, costs, len(tree), 0.0)
        return tree, m, value

    def _plan_costly(self, p: Proposer, seq: Sequence, budget: Budget, costs: CostModel | None,
                     shadows: Shadows, root: int) -> tuple[DraftTree | None, int, float]:
        st = self.costly.setdefault(p.name, _CostlyState())
        stats = self.stats_for(p, "")
        limit = min(budget.nodes, budget.depth)
        if limit <= 0:
            return None, 0, 0.0
        if self.fixed is not None:
            k, value = min(self.fixed, limit), 1.0
        elif costs is None:
            return None, 0, 0.0
        else:
            k, value = self._best_size(stats, costs, limit, st.draft_s)
            if k == 0 or value * costs.forward(1) < 1 + MARGIN:
                st.plain_steps += 1
                if st.plain_steps < st.probe_every:
                    return None, 0, 0.0
                # probe: draft anyway so the statistics can recover; back off longer each time
                st.probe_every = min(2 * st.probe_every, PROBE_MAX)
                k = max(k, 1)
            else:
                st.probe_every = PROBE_START
        st.plain_steps = 0
        t0 = time.perf_counter()
        tree = p.propose(seq, Budget(k, min(k, budget.depth), budget.cache))
        if tree is None or not len(tree):
            return None, 0, 0.0
        per_token = (time.perf_counter() - t0) / len(tree)
        st.draft_s = per_token if st.draft_s == 0 else st.draft_s + RATE * (per_token - st.draft_s)
        shadows.add(stats, tree, root)
        return tree, len(tree), value

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
