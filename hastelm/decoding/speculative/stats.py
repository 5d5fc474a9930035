"""Running acceptance statistics: how many draft tokens a proposal of m nodes is expected to yield.

Observations come from the matched path of a proposed tree against the tokens the target really
produced (see `shadow.py`), whether or not all of the tree was verified. Because any prefix of a
tree's node list is a subtree, one observation of an n-node tree tells how many tokens every
prefix size m <= n would have accepted: the matched path up to its first node beyond m.
"""
from __future__ import annotations

SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)   # tree sizes the controller chooses among


class PrefixStats:
    """Expected accepted tokens per prefix size, as exponential moving averages.

    For proposers that are free to run (no model forwards): they always propose their full tree,
    so every size up to it is observed on every step.
    """

    def __init__(self, rate: float = 0.1, sizes: tuple[int, ...] = SIZES) -> None:
        self.rate = rate
        self.sizes = sizes
        self.mean = [0.0] * len(sizes)
        self.weight = [0.0] * len(sizes)     # how much evidence each mean rests on (decays)

    def observe(self, size: int, path: list[int]) -> None:
        """`path`: the matched draft nodes (1-based node numbers) of a tree with `size` nodes."""
        for i, m in enumerate(self.sizes):
            if m > size:
                break
            accepted = 0
            for node in path:
                if node > m:
                    break
                accepted += 1
            self.mean[i] += self.rate * (accepted - self.mean[i])
            self.weight[i] += self.rate * (1.0 - self.weight[i])

    def expected(self, m: int) -> float:
        """Expected accepted draft tokens for an m-node prefix (0 until observed)."""
        best = 0.0
        for i, size in enumerate(self.sizes):
            if size > m:
                break
            # early in the average, the estimate is biased towards 0: correct like Adam does
            if self.weight[i] > 0:
                best = self.mean[i] / self.weight[i]
        return best

    @property
    def observed(self) -> bool:
        return self.weight[0] > 0


class ChainStats:
    """Geometric model for chains from proposers that pay per drafted token (draft models, layer
    skipping): each draft token is accepted with probability alpha given its parent was, so a
    k-token chain yields alpha (1 - alpha^k) / (1 - alpha) tokens (Leviathan et al., 2023)."""

    def __init__(self, alpha: float = 0.5, rate: float = 0.05, prior_weight: float = 4.0) -> None:
        self.rate = rate
        # counts of accepted / rejected draft tokens, exponentially forgotten; a weak prior
        self.hits = alpha * prior_weight
        self.misses = (1 - alpha) * prior_weight

    @property
    def alpha(self) -> float:
        return self.hits / (self.hits + self.misses)

    def observe(self, size: int, path: list[int]) -> None:
        keep = 1.0 - self.rate
        accepted = len(path)
        self.hits = self.hits * keep ** (accepted + 1) + accepted
        self.misses = self.misses * keep ** (accepted + 1) + (1.0 if accepted < size else 0.0)

    def expected(self, m: int) -> float:
        a = min(self.alpha, 0.999)
        return a * (1 - a ** m) / (1 - a)

    @property
    def observed(self) -> bool:
        return True
