"""KV-cache eviction policies (hastelm/kv/policies): every policy's choice equals a slow reference
written from its paper (tests/kv_references.py) on small random tensors, driven through the cache
and the compressor the runner uses; bad settings are one-line errors. The engine-level checks are
in test_kv_eviction_engine.py."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import kv_references as ref
from hastelm.cli import app
from hastelm.errors import InvalidParameterError
from hastelm.kv.cache import KVCache
from hastelm.kv.policies import KVPolicyConfig, make_kv_config, parse_budget
from hastelm.kv.policies.base import Budget
from hastelm.kv.policies.compressor import KVCompressor
from hastelm.kv.policies.snapkv import SnapKV, pyramid_budgets
from hastelm.kv.policies.streaming import H2O, StreamingLLM

SCALE = 0.35


# ---- the fast policies against the references ------------------------------------------------
def run_fast(policy, keys: torch.Tensor, queries: torch.Tensor, first_chunk: int, budget: int,
             interval: int) -> list[list[list[int]]]:
    """Drive a real KVCache + KVCompressor as the runner does; returns each column's visible
    positions, after checking every kept key is the one written at its position."""
    layers, n_tok, kv_heads, dim = keys.shape
    cache = KVCache(layers, kv_heads, dim, n_tok, slots=1, dtype=torch.float64)
    comp = KVCompressor(KVPolicyConfig(policy, Budget(budget), interval), cache, SCALE)
    for step in [list(range(first_chunk))] + [[t] for t in range(first_chunk, n_tok)]:
        start, n = cache.reserve(0, len(step)), len(step)
        for layer in range(layers):
            cache.keys[layer][0, start:start + n] = keys[layer, step]
            cache.values[layer][0, start:start + n] = keys[layer, step]
        cache.positions[0, start:start + n] = torch.tensor(step)
        comp.begin([0], [start], [n], [step])
        for layer in range(layers):
            comp.observe(layer, queries[layer, step][None])
        comp.end()
        cache.commit(0, n)
        comp.maintain(0)
    assert comp.compressions > 0
    pos, vis, n = cache.entry_positions(0), cache.visible(0), cache.length(0)
    assert cache.seen(0) == n_tok
    out = []
    for layer in range(layers):
        cols = []
        for h in range(kv_heads):
            live = [j for j in range(n) if vis is None or bool(vis[layer, j, h])]
            cols.append([int(pos[layer, j, h]) for j in live])
            for j in live:
                assert torch.equal(cache.keys[layer][0, j, h], keys[layer, int(pos[layer, j, h]), h])
        out.append(cols)
    return out


def positions_of(columns: list[list[ref.Entries]]) -> list[list[list[int]]]:
    return [[[p for p, _ in col] for col in layer] for layer in columns]


def random_qk(seed: int, layers: int = 2, n_tok: int = 64, kv_heads: int = 2, group: int = 2, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(layers, n_tok, kv_heads, dim, generator=g, dtype=torch.float64)
    queries = torch.randn(layers, n_tok, kv_heads * group, dim, generator=g, dtype=torch.float64)
    return keys, queries


def reference(name: str, keys, queries, first_chunk: int, budget: int, interval: int, window: int):
    def compress(columns, scores, window_of):
        layers = len(columns)
        for layer in range(layers):
            for h, col in enumerate(columns[layer]):
                if name == "streamingllm":
                    columns[layer][h] = ref.streaming(col, budget, 4)
                elif name == "h2o":
                    columns[layer][h], scores[layer][h] = ref.h2o(col, scores[layer][h], budget)
                elif name == "snapkv":
                    columns[layer][h] = ref.snapkv(col, window_of(layer, h), budget, SCALE)
        if name == "pyramidkv":
            w = len(window_of(0, 0))
            cand = max(p for lay in columns for c in lay for p, _ in c) + 1 - w     # tokens seen
            budgets = ref.pyramid(budget - w, cand, layers)
            for layer in range(layers):
                columns[layer] = [ref.snapkv(col, window_of(layer, h), budgets[layer] + w, SCALE)
                                  for h, col in enumerate(columns[layer])]
        if name == "adakv":
            for layer in range(layers):
                columns[layer] = ref.adakv(columns[layer], [window_of(layer, h) for h in range(len(columns[layer]))],
                                           budget, SCALE)

    columns, _ = ref.simulate(keys, queries, first_chunk, budget, interval, compress, SCALE, window=window,
                              accumulate=name == "h2o")
    return positions_of(columns)


CASES = [  # policy, first chunk, budget, interval
    (StreamingLLM(), 30, 12, 3),
    (H2O(), 20, 12, 3),
    (SnapKV(window=8), 40, 16, 8),
    (SnapKV(name="pyramidkv", window=8, pyramid=True), 40, 20, 8),
    (SnapKV(name="adakv", window=8, adaptive=True), 40, 16, 8),
]


@pytest.mark.parametrize("policy,first_chunk,budget,interval", CASES, ids=[c[0].name for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_policy_keeps_what_the_reference_keeps(policy, first_chunk: int, budget: int, interval: int,
                                                    seed: int) -> None:
    keys, queries = random_qk(seed)
    fast = run_fast(policy, keys, queries, first_chunk, budget, interval)
    slow = reference(policy.name, keys, queries, first_chunk, budget, interval, policy.window)
    assert fast == slow


def test_adakv_gives_heads_different_budgets_and_pyramid_layers_different_ones() -> None:
    """The head- and layer-wise cases really hide entries (so the reference test covers masks)."""
    keys, queries = random_qk(5, layers=3)
    ada = run_fast(SnapKV(name="adakv", window=8, adaptive=True), keys, queries, 40, 16, 20)
    assert len({len(c) for c in ada[0]}) > 1
    pyr = run_fast(SnapKV(name="pyramidkv", window=8, pyramid=True), keys, queries, 40, 20, 20)
    assert len(pyr[0][0]) > len(pyr[2][0])
    assert sum(pyramid_budgets(12, 32, 3)) == 3 * 12


# ---- configuration and errors ----------------------------------------------------------------
def test_budgets_parse_as_ratio_or_tokens() -> None:
    assert parse_budget("0.25") == Budget(0.25) and parse_budget("512") == Budget(512)
    assert parse_budget(1.0).tokens(10) == 10 and parse_budget(0.25).tokens(10) == 3
    assert str(make_kv_config("snapkv", 0.25)) == "snapkv (budget 0.25, every 32 tokens)"


@pytest.mark.parametrize("policy,budget,fragment", [
    ("nope", 0.5, "unknown kv policy 'nope'"),
    ("snapkv", None, "needs a kv budget"),
    (None, 0.5, "kv budget needs a kv policy"),
    ("snapkv", 0.0, "ratio must be in (0, 1]"),
    ("snapkv", 1.5, "ratio must be in (0, 1]"),
    ("h2o", -3, "at least 1 token"),
    ("snapkv", "abc", "ratio in (0, 1] or a token count"),
    ("snapkv", 20, "below what snapkv always keeps"),
    ("streamingllm", 4, "below what streamingllm always keeps"),
])
def test_bad_values_are_one_line_errors(policy, budget, fragment: str) -> None:
    with pytest.raises(InvalidParameterError, match=None) as info:
        make_kv_config(policy, budget)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_the_command_line_rejects_bad_kv_values_in_one_line() -> None:
    result = CliRunner().invoke(app, ["generate", "--no-stats", "-m", "/nonexistent.gguf", "-p", "hi",
                                      "--kv-policy", "snapkv", "--kv-budget", "2.5"])
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "ratio must be in (0, 1]" in lines[0], result.stderr
