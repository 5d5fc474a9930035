"""Replay recorded greedy outputs through the speculative controller, offline and noise-free:
`python -m hastelm.bench.replay [--workload humaneval --limit 40] [--methods pld,recycling,auto]`.

Greedy decoding's output does not depend on the method, so one plain run per prompt (and the
target's top-k at every position, from one teacher-forced forward) tells what any free proposer's
tree would have accepted at every step. The replay runs the real proposers and the real
controller on that record, and prices each step with this machine's measured cost curve; next to
it, an oracle that knows before each step how much of the same tree will be accepted, and picks
the tree size that pays best. The gap between the two is what a better acceptance predictor could
still win; the oracle's figure is a ceiling for these proposers on this machine. Recycling learns
only from the accepted path here (the live engine also sees rejected nodes' logits).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import typer
from rich.console import Console
from rich.table import Table

from ..decoding.sampling import SamplingParams
from ..decoding.speculative import make_proposer
from ..decoding.speculative.controller import Controller, Request
from ..decoding.speculative.cost import CostModel
from ..decoding.speculative.proposers.base import Budget, Feedback, Proposer
from ..decoding.speculative.proposers.merged import Merged
from ..decoding.speculative.shadow import Shadows
from ..decoding.speculative.stats import SIZES
from ..decoding.speculative.tree import DraftTree
from ..decoding.speculative.verify import Acceptance
from ..console import fail
from ..engine import LLM
from ..engine.runner import teacher_forced_logits
from ..errors import HastelmError
from .conversation import run_item
from .step_cost import curve
from .workloads import load_workload

TOP_K = 8


@dataclass
class Record:
    category: str
    prompt: list[int]
    output: list[int]             # greedy tokens, the first one from the prompt's forward
    top: torch.Tensor             # [len(prompt) + len(output), TOP_K]: the target's ranking after each token


@dataclass
class Tally:
    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0          # priced by the cost curve
    plain_seconds: float = 0.0    # the same tokens decoded plainly

    def add(self, emitted: int, seconds: float, one: float) -> None:
        self.tokens += emitted
        self.steps += 1
        self.seconds += seconds
        self.plain_seconds += emitted * one

    @classmethod
    def total(cls, tallies: list[Tally]) -> Tally:
        return cls(*(sum(getattr(t, f) for t in tallies) for f in ("tokens", "steps", "seconds", "plain_seconds")))


def record(llm: LLM, workload: str, limit: int | None, max_tokens: int) -> list[Record]:
    """Plain greedy outputs of a workload, and the target's top-k after every token."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, stop_token_ids=sorted(llm.tokenizer.eos_ids))
    out: list[Record] = []

    def complete(ids: list[int]) -> SimpleNamespace:
        tokens = llm.generate([ids], params)[0].token_ids
        return SimpleNamespace(tokens=[t for t in tokens if t not in llm.tokenizer.eos_ids])

    for item in load_workload(workload, limit):
        for ids, gen in run_item(item, llm.tokenizer, complete):
            full = ids + gen.tokens
            logits = teacher_forced_logits(llm.model, full)
            out.append(Record(item.category, ids, gen.tokens, logits.topk(TOP_K, dim=-1).indices.cpu()))
    return out


def ranking_logits(rows: torch.Tensor, vocab: int) -> torch.Tensor:
    """Logit rows whose top tokens, in order, are `rows[i]` (what the proposers learn from)."""
    out = torch.zeros(len(rows), vocab)
    k = rows.shape[1]
    out.scatter_(1, rows.long(), torch.arange(k, 0, -1, dtype=torch.float32).expand(len(rows), -1))
    return out


def replay(records: list[Record], make: Callable[[], Proposer], costs: CostModel, overhead_s: float, vocab: int,
           oracle: bool = False) -> dict[str, Tally]:
    """Per category: what the controller (or the oracle) would have decoded, priced by `costs`."""
    proposer: Proposer = make()
    controller = Controller()
    controller.overhead_s = overhead_s
    one = costs.forward(1)
    result: dict[str, Tally] = defaultdict(Tally)
    for rec in records:
        seq = SimpleNamespace(ids=[], pending=0, strategy_state={}, params=None)
        shadows = Shadows()
        j = 1
        while j < len(rec.output):
            seq.ids = rec.prompt + rec.output[:j]
            seq.pending = seq.ids[-1]
            truth = rec.output[j:]
            budget = Budget(controller.max_nodes, len(truth), None)
            if oracle:
                tree = _oracle_tree(proposer, controller, seq, budget, truth, costs, overhead_s)
            else:
                shadows.resolve(seq.ids)
                request = Request(seq, budget, costs, shadows, len(seq.ids) - 1)
                tree = controller.plan_batch([proposer], [request])[0].tree
            accepted = len(tree.match(truth)[0]) if len(tree) else 0
            base = len(seq.ids) - 1                       # the pending token's position
            path = truth[:accepted]
            feedback = Feedback(DraftTree.chain(path), ranking_logits(rec.top[base:base + accepted + 1], vocab),
                                Acceptance(list(range(1, accepted + 1)), truth[:accepted + 1]), seq.pending, base)
            proposer.update(seq, feedback)
            emitted = min(accepted + 1, len(truth))
            seconds = costs.forward(len(tree) + 1) + (overhead_s if len(tree) else 0.0)
            result[rec.category].add(emitted, seconds, one)
            j += emitted
        proposer.release(seq)
    return result


def _oracle_tree(proposer: Proposer, controller: Controller, seq: SimpleNamespace, budget: Budget,
                 truth: list[int], costs: CostModel, overhead_s: float) -> DraftTree:
    """The prefix of the proposer's tree that pays best, knowing what will be accepted."""
    nodes = min(budget.nodes, controller.useful_nodes(costs))
    tree = proposer.propose(seq, Budget(nodes, budget.depth, None))
    best, best_value = 0, 1.0 / costs.forward(1)
    if tree is not None and len(tree):
        path = tree.match(truth)[0]
        for m in SIZES:
            if m > len(tree):
                break
            accepted = next((i for i, node in enumerate(path) if node > m), len(path))
            value = (1 + accepted) / (costs.forward(m + 1) + overhead_s)
            if value > best_value:
                best, best_value = m, value
    return tree.prefix(best) if best else DraftTree([], [])


def methods(llm: LLM) -> dict[str, Callable[[], Proposer]]:
    target = llm.target
    return {"pld": lambda: make_proposer("pld", target), "recycling": lambda: make_proposer("recycling", target),
            "auto": lambda: Merged([make_proposer("pld", target), make_proposer("recycling", target)])}


FREE_PROPOSERS = ("pld", "recycling", "auto")     # methods()'s names, checked before loading a model

app = typer.Typer(add_completion=False)


@app.command(help=" ".join(__doc__.split("\n\n")[0].split()))   # the first paragraph
def main(
    model: str = typer.Option("smollm2-135m", "-m", "--model"),
    workload: str = typer.Option("humaneval", "--workload"),
    limit: int = typer.Option(40, "--limit", help="first N prompts of each category"),
    max_tokens: int = typer.Option(256, "--max-tokens"),
    methods_: str = typer.Option("pld,recycling,auto", "--methods"),
    overhead_ms: float = typer.Option(0.4, "--overhead-ms", help="bookkeeping of a speculative step"),
) -> None:
    chosen = methods_.split(",")
    unknown = [m for m in chosen if m not in FREE_PROPOSERS]
    if unknown:
        fail(f"replay covers free proposers only: {', '.join(FREE_PROPOSERS)} (not {', '.join(unknown)})")
    try:
        llm = LLM(model)
        available = methods(llm)
        console = Console()
        with console.status("recording plain greedy outputs"):
            records = record(llm, workload, limit, max_tokens)
            costs = curve(llm.model)
    except HastelmError as exc:
        fail(str(exc))
    table = Table(title=f"{workload} replay · cost curve of this machine · "
                        f"1 token {costs.forward(1) * 1e3:.2f} ms, 4 tokens {costs.forward(4) / costs.forward(1):.2f}x")
    for col in ("method", "policy", "category", "tokens/step", "decode × plain"):
        table.add_column(col)
    vocab = llm.config.vocab_size
    for name in chosen:
        for policy in ("controller", "oracle"):
            result = replay(records, available[name], costs, overhead_ms * 1e-3, vocab, oracle=policy == "oracle")
            rows = dict(result)
            if len(rows) > 1:
                rows["overall"] = Tally.total(list(result.values()))
            for category, t in rows.items():
                table.add_row(name, policy, category, f"{t.tokens / t.steps:.2f}", f"{t.plain_seconds / t.seconds:.2f}×")
    console.print(table)


if __name__ == "__main__":
    app(prog_name="python -m hastelm.bench.replay")
