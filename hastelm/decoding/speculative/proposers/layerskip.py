"""Self-speculative decoding by layer skipping (Zhang et al., 2024, "Draft & Verify"; Elhoushi et
al., 2024, "LayerSkip"): the draft is the target itself with some layers skipped, so there are no
extra weights and the draft shares the target's KV cache (drafted entries are trimmed before the
verification forward rewrites them with every layer).

A short calibration at load picks the layers: teacher-forced on a fixed text, each layer's
removal is scored by how often the next-token argmax still agrees with the full model; the least
important layers are dropped in growing numbers, and the set with the best predicted speedup
(agreement as the acceptance rate, measured draft time against a full forward) is kept.
"""
from __future__ import annotations

import time

import torch

from ....engine.runner import ModelRunner, Row, teacher_forced_logits
from ....formats.tokenizer import Tokenizer
from ....models.transformer import Transformer
from ...sequence import Sequence
from ..tree import DraftTree
from .base import Budget, Feedback
from .chain import draft_chains

CALIBRATION_TEXT = (
    "def moving_average(values, window):\n"
    "    \"\"\"Return the averages of each run of `window` consecutive values.\"\"\"\n"
    "    if window <= 0:\n        raise ValueError(\"window must be positive\")\n"
    "    return [sum(values[i:i + window]) / window for i in range(len(values) - window + 1)]\n\n"
    "The river rises in the hills north of the town and flows south through farmland before it "
    "reaches the sea. In spring the water is high and fast; by late summer it is shallow enough "
    "to cross on foot. Question: where does the river reach the sea? Answer: south of the town."
)
SKIP_COUNTS = (1, 2, 3, 4, 6, 8, 10, 12)


def _agreement(model: Transformer, ids: list[int], reference: torch.Tensor, layers: list[int] | None) -> float:
    guess = teacher_forced_logits(model, ids, layers).argmax(-1)
    return float((guess == reference).float().mean())


def _step_seconds(model: Transformer, layers: list[int] | None, repeats: int = 3) -> float:
    runner = ModelRunner(model, 8, cuda_graphs=False)
    best = float("inf")
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        runner.forward([Row(0, [0], i)], layers=layers)
        best = min(best, time.perf_counter() - t0)
    return best


def _predicted_speedup(alpha: float, draft_ratio: float, max_len: int = 8) -> float:
    """Best chain length's tokens per unit time, taking a verification forward as one forward."""
    best = 0.0
    for k in range(1, max_len + 1):
        tokens = sum(alpha ** i for i in range(k + 1))
        best = max(best, tokens / (1 + k * draft_ratio))
    return best


def calibrate(model: Transformer, tokenizer: Tokenizer, text: str = CALIBRATION_TEXT) -> tuple[list[int], float]:
    """Layers to run when drafting, and their measured agreement with the full model."""
    n = len(model.layers)
    ids = tokenizer.encode(text)[:64]
    reference = teacher_forced_logits(model, ids).argmax(-1)
    # the first and last layers stay: skipping them wrecks every model we tried
    scores = {i: _agreement(model, ids, reference, [j for j in range(n) if j != i]) for i in range(1, n - 1)}
    order = sorted(scores, key=lambda i: -scores[i])
    full_s = _step_seconds(model, None)
    best: tuple[float, list[int], float] = (0.0, list(range(n)), 1.0)
    for count in SKIP_COUNTS:
        if count > len(order):
            break
        skip = set(order[:count])
        layers = [j for j in range(n) if j not in skip]
        alpha = _agreement(model, ids, reference, layers)
        speedup = _predicted_speedup(alpha, _step_seconds(model, layers) / full_s)
        if speedup > best[0]:
            best = (speedup, layers, alpha)
    return best[1], best[2]


class LayerSkip:
    name = "layerskip"
    free = False

    def __init__(self, model: Transformer, tokenizer: Tokenizer, layers: list[int] | None = None) -> None:
        self.model = model
        if layers is None:
            layers, self.prior_alpha = calibrate(model, tokenizer)
        else:
            self.prior_alpha = 0.5
        self.layers = layers

    def propose(self, seq: Sequence, budget: Budget) -> DraftTree | None:
        return self.propose_batch([(seq, budget)])[0]

    def propose_batch(self, requests: list[tuple[Sequence, Budget]]) -> list[DraftTree | None]:
        """Chains for several requests of one cache, each drafting step one batched forward of the
        kept layers (rows attend over their own slots, as alone)."""
        out: list[DraftTree | None] = [None] * len(requests)
        todo = [i for i, (_, b) in enumerate(requests) if b.runner is not None and b.nodes > 0 and b.depth > 0]
        if not todo:
            return out
        runner = requests[todo[0]][1].runner
        assert runner is not None
        cache = runner.cache
        seqs = [requests[i][0] for i in todo]
        lengths = [min(requests[i][1].nodes, requests[i][1].depth) for i in todo]
        slots = [s.slot for s in seqs]
        bases = [cache.length(s) for s in slots]
        roots = [len(s.ids) - 1 for s in seqs]

        def run(rows: list[int], tokens: list[int], step: int) -> torch.Tensor:
            return runner.forward([Row(slots[r], [t], roots[r] + step) for r, t in zip(rows, tokens)],
                                  layers=self.layers, last_only=True)

        try:
            first = run(list(range(len(seqs))), [s.pending for s in seqs], 0)
            trees = draft_chains(seqs, lengths, first, lambda rows, tokens, i: run(rows, tokens, i + 1))
        finally:
            for slot, base in zip(slots, bases):    # the verifier rewrites them with every layer
                cache.trim(cache.length(slot) - base, slot)
        for i, tree in zip(todo, trees):
            out[i] = tree
        return out

    def update(self, seq: Sequence, feedback: Feedback) -> None:
        """Nothing to learn per step; acceptance is tracked by the controller."""

    def release(self, seq: Sequence) -> None:
        """Nothing kept per request."""
