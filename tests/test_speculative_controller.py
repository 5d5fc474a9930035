"""The controller: tree size follows the measured cost curve and acceptance; it backs off to plain
steps when drafts are not accepted, and probes costly proposers ever more rarely."""
from __future__ import annotations

from types import SimpleNamespace

from hastelm.decoding.sampling import SamplingParams
from hastelm.decoding.speculative import SpeculativeDecoding
from hastelm.decoding.speculative.controller import PROBE_START, Controller, Request
from hastelm.decoding.speculative.cost import CostModel
from hastelm.decoding.speculative.proposers.base import Budget
from hastelm.decoding.speculative.shadow import Shadows
from hastelm.decoding.speculative.stats import ChainStats, PrefixStats
from hastelm.decoding.speculative.tree import DraftTree

FLAT = CostModel({1: 1.0, 2: 1.0, 4: 1.01, 8: 1.02, 16: 1.05, 32: 1.1, 64: 1.3})    # GPU-like
STEEP = CostModel({1: 1.0, 2: 1.05, 4: 1.2, 8: 2.0, 16: 3.5, 32: 7.0, 64: 14.0})    # 2-core CPU-like


class TreeProposer:
    """Free proposer offering a fixed 64-node tree."""
    name = "tree"
    free = True

    def __init__(self) -> None:
        self.tree = DraftTree(list(range(1, 65)), [max(0, (i - 1) // 2) for i in range(1, 65)])

    def propose(self, seq, budget):
        return self.tree.prefix(budget.nodes)


class CostlyProposer:
    name = "costly"
    free = False
    prior_alpha = 0.5

    def __init__(self) -> None:
        self.calls = 0

    def propose(self, seq, budget):
        self.calls += 1
        return DraftTree.chain([7] * budget.nodes)

    def propose_batch(self, requests):
        return [self.propose(seq, budget) for seq, budget in requests]


def plan(controller: Controller, proposers, budget: Budget, costs: CostModel):
    return controller.plan_batch(proposers, [Request(None, budget, costs, Shadows(), 0)])[0]


def plan_size(controller: Controller, proposer, costs: CostModel) -> int:
    return len(plan(controller, [proposer], Budget(64, 64), costs).tree)


def trained() -> Controller:
    """Stats of a binary tree whose leftmost path is accepted to a depth uniform in 0..6."""
    c = Controller()
    stats = c.stats_for(TreeProposer(), "")
    leftmost = [1, 3, 7, 15, 31, 63]          # node k's children are 2k + 1 and 2k + 2
    for step in range(700):
        stats.observe(64, leftmost[:step % 7])
    return c


def test_large_trees_when_verification_is_cheap_small_when_it_is_not():
    c = trained()
    flat, steep = plan_size(c, TreeProposer(), FLAT), plan_size(c, TreeProposer(), STEEP)
    assert flat >= 16 and 0 < steep <= 4


def test_backs_off_when_drafts_are_never_accepted():
    c = Controller()
    stats = c.stats_for(TreeProposer(), "")
    for _ in range(50):
        stats.observe(64, [])
    assert plan_size(c, TreeProposer(), FLAT) == 0
    assert plan_size(c, TreeProposer(), STEEP) == 0


def test_costly_proposer_is_probed_ever_more_rarely():
    c = Controller()
    p = CostlyProposer()
    c.stats[(p.name, "")] = ChainStats(alpha=0.01)
    calls = []
    for step in range(2000):
        before = p.calls
        planned = plan(c, [p], Budget(8, 8), STEEP)
        if p.calls > before:
            calls.append(step)
            c.stats[(p.name, "")].observe(len(planned.proposed[0][1]), [])     # rejected again
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert calls and calls[0] >= PROBE_START - 1
    assert gaps == sorted(gaps) and gaps[-1] > 4 * gaps[0]
    assert len(calls) <= 8


def test_prefix_stats_credit_every_prefix_size():
    s = PrefixStats(rate=1.0)
    s.observe(8, [1, 3, 7])        # a path through nodes 1, 3 and 7 of an 8-node tree
    assert [s.expected(m) for m in (1, 2, 3, 4, 6, 8)] == [1, 1, 2, 2, 2, 3]
    assert s.expected(64) == 3     # larger sizes fall back to the largest one observed


class NeverRight:
    """Proposes a chain of a token the model never picks next."""
    name = "never"
    free = True

    def propose(self, seq, budget):
        return DraftTree.chain([seq.pending] * min(4, budget.depth)) if budget.depth > 0 else None

    def update(self, seq, feedback):
        pass

    def release(self, seq):
        pass


def test_real_model_backs_off_to_plain_steps(llm_f32):
    strategy = SpeculativeDecoding("never", [NeverRight()])
    ids = llm_f32.encode_prompt("The history of the printing press begins")
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    steps = list(llm_f32.stream(ids, params, speculative=strategy))
    verified = [r.proposed for r in steps[1:]]        # the decode steps after the first token
    plain = llm_f32.generate([ids], params)[0]
    assert [t for r in steps for t in r.tokens] == plain.token_ids
    # the shadow statistics learn from the first proposals; afterwards no draft is verified
    assert sum(1 for v in verified[4:] if v) == 0, verified


def test_a_busier_machine_scales_the_cost_curve_without_bending_it():
    costs = CostModel({1: 1.0, 2: 1.1, 4: 1.4, 8: 2.0})
    for _ in range(200):
        costs.observe(1, 2.0)            # every plain step now takes twice as long
    assert abs(costs.forward(1) - 2.0) < 0.01
    assert abs(costs.forward(4) / costs.forward(1) - 1.4) < 1e-9


def test_free_proposers_offer_only_trees_that_could_pay_here():
    c = trained()
    offered = {}

    class Recording(TreeProposer):
        def propose(self, seq, budget):
            offered[budget.nodes] = True
            return super().propose(seq, budget)

    plan(c, [Recording()], Budget(64, 64), STEEP)
    plan(c, [Recording()], Budget(64, 64), FLAT)
    assert sorted(offered) == [16, 64]      # STEEP: a 17-token forward costs 3.7 steps, 25 tokens 5.5
