"""KV cache bookkeeping: reserve, trim, keep, keep_tail, overflow."""
from __future__ import annotations

import pytest
import torch

from hastelm.errors import ContextOverflowError
from hastelm.kv.cache import KVCache


def _filled(n: int) -> KVCache:
    c = KVCache(num_layers=2, kv_heads=1, head_dim=2, capacity=16, slots=2)
    start = c.reserve(0, n)
    for layer in c.keys + c.values:
        layer[0, start:start + n] = torch.arange(n, dtype=torch.float32)[:, None, None]
    c.positions[0, :n] = torch.arange(n)
    c.commit(0, n)
    return c


def test_trim_and_keep():
    c = _filled(6)
    c.trim(2)
    assert c.length(0) == 4 and c.positions[0, 4:6].tolist() == [-1, -1]
    c.keep([0, 2, 3])
    assert c.length(0) == 3
    assert c.keys[1][0, :3, 0, 0].tolist() == [0.0, 2.0, 3.0]
    assert c.positions[0, :4].tolist() == [0, 2, 3, -1]


def test_keep_tail_compacts_an_accepted_path():
    c = _filled(8)                      # prefix 0..3, tree nodes 4..7
    c.keep_tail(4, [1, 3])
    assert c.length(0) == 6
    assert c.values[0][0, :6, 0, 0].tolist() == [0, 1, 2, 3, 5, 7]
    c2 = _filled(8)
    c2.keep_tail(4, [0, 1])             # contiguous path: a plain trim
    assert c2.length(0) == 6 and c2.values[0][0, :6, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]


def test_overflow_is_a_clear_error_and_slots_are_independent():
    c = _filled(6)
    with pytest.raises(ContextOverflowError, match="context length exceeded"):
        c.reserve(0, 11)
    assert c.reserve(1, 16) == 0 and c.length(1) == 0
