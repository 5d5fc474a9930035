"""What one forward computes: the model's whole input, built by the runner (`engine/runner.py`).

`Transformer.forward(batch, cache)` is a function of this description and the cache's contents:
it writes the new keys and values where `starts` says and reads what the cache holds, but never
reserves, commits or trims entries. That bookkeeping is the runner's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ForwardBatch:
    tokens: torch.Tensor                 # [B, T] new tokens, rows padded to the longest
    positions: torch.Tensor              # [B, T] their RoPE positions
    slots: list[int]                     # the cache slot of each row
    starts: list[int]                    # cache index of each row's first new entry (its prefix length)
    tree_mask: torch.Tensor | None = None    # [B, T, T] True = may attend, among the new entries; None: causal
    layers: Sequence[int] | None = None  # run only these layers (self-speculative drafting)
    valid: list[int] | None = None       # real tokens per row of a padded causal batch (each row as alone)
    last_only: bool = False              # logits of the last column only

    @property
    def shape(self) -> tuple[int, int]:
        B, T = self.tokens.shape
        return B, T

    @property
    def single_slot(self) -> bool:
        return len(self.slots) == 1
