"""Slow, obviously-correct eviction policies, written from the papers with Python lists and loops,
that the fast ones (hastelm/kv/policies) must match entry for entry.

Each simulates one sequence token by token (after a first chunk): every (layer, KV head) holds a
list of (position, key) in order; queries are the model's rotated query rows; ties between equal
scores go to the older entry. Scores are Python floats (doubles).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

Entries = list[tuple[int, list[float]]]        # (position, key vector) of one column, oldest first


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def softmax_over(q: list[float], entries: Entries, q_pos: int, scale: float) -> list[float]:
    """Attention weights of one query over the entries it may see (position <= its own); 0 for the rest."""
    logits = [scale * dot(q, k) if p <= q_pos else None for p, k in entries]
    top = max(x for x in logits if x is not None)
    exps = [0.0 if x is None else math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def best(scores: list[float], k: int) -> list[int]:
    """Indices of the k highest scores, ties to the lower index."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:max(k, 0)]


# ---- StreamingLLM -----------------------------------------------------------------------------
def streaming(entries: Entries, budget: int, sinks: int) -> Entries:
    """Attention sinks (the first `sinks` tokens) plus the most recent ones."""
    return entries[:sinks] + entries[len(entries) - (budget - sinks):]


# ---- H2O --------------------------------------------------------------------------------------
def h2o(entries: Entries, scores: list[float], budget: int, recent_ratio: float = 0.5) -> tuple[Entries, list[float]]:
    """Heavy hitters by accumulated attention outside the recent window, plus the recent window."""
    rec = max(1, int(budget * recent_ratio))
    older = len(entries) - rec
    heavy = sorted(best(scores[:older], budget - rec))
    keep = heavy + list(range(older, len(entries)))
    return [entries[j] for j in keep], [scores[j] for j in keep]


# ---- SnapKV, PyramidKV, Ada-KV ---------------------------------------------------------------
def snap_votes(entries: Entries, window_queries: list[tuple[int, list[list[float]]]], scale: float,
               kernel: int) -> list[float]:
    """SnapKV's pooled votes for the entries before the window: the window's attention summed over
    its queries, averaged over the query heads of this KV head, max-pooled over `kernel` neighbours."""
    w = len(window_queries)
    prefix = len(entries) - w
    group = len(window_queries[0][1])
    votes = [0.0] * prefix
    for g in range(group):
        per_head = [0.0] * prefix
        for q_pos, heads in window_queries:
            weights = softmax_over(heads[g], entries, q_pos, scale)
            for j in range(prefix):
                per_head[j] += weights[j]
        for j in range(prefix):
            votes[j] += per_head[j] / group
    r = kernel // 2
    return [max(votes[max(0, j - r):j + r + 1]) for j in range(prefix)]


def snapkv(entries: Entries, window_queries: list, budget: int, scale: float, kernel: int = 7) -> Entries:
    w = len(window_queries)
    pooled = snap_votes(entries, window_queries, scale, kernel)
    keep = sorted(best(pooled, budget - w)) + list(range(len(entries) - w, len(entries)))
    return [entries[j] for j in keep]


def pyramid(base: int, candidates: int, layers: int, beta: int = 20) -> list[int]:
    """PyramidKV's budgets: linear from 2*base - base//beta at the first layer down, mean base."""
    low, high = base // beta, 2 * base - base // beta
    if high >= candidates:
        high, low = candidates, 2 * base - candidates
    return [high - i * ((high - low) // (layers - 1)) for i in range(layers)]


def adakv(columns: list[Entries], window_queries: list[list], budget: int, scale: float, kernel: int = 7,
          alpha: float = 0.2) -> list[Entries]:
    """Ada-KV over one layer's KV heads: the layer's heads * base best votes decide each head's
    share, floored at base * alpha; each head then keeps its own best plus the window."""
    w = len(window_queries[0])
    base = budget - w
    pooled = [snap_votes(col, wq, scale, kernel) for col, wq in zip(columns, window_queries)]
    order = [best(p, len(p)) for p in pooled]
    flat = [(pooled[h][j], h, r) for h in range(len(columns)) for r, j in enumerate(order[h])]
    flat.sort(key=lambda t: (-t[0], t[1], t[2]))
    counts = [0] * len(columns)
    for _, h, _ in flat[:len(columns) * base]:
        counts[h] += 1
    out = []
    for h, col in enumerate(columns):
        b = round(counts[h] * (1 - alpha) + int(base * alpha))
        keep = sorted(order[h][:b]) + list(range(len(col) - w, len(col)))
        out.append([col[j] for j in keep])
    return out


# ---- the simulation ---------------------------------------------------------------------------
def simulate(keys: torch.Tensor, queries: torch.Tensor, first_chunk: int, budget: int, interval: int,
             compress: Callable[..., None], scale: float, window: int = 0,
             accumulate: bool = False) -> tuple[list[list[Entries]], list]:
    """Feed `keys` `[layers, N, Hkv, D]` / `queries` `[layers, N, Hq, D]` into per-column lists: a
    first chunk, then one token at a time; after each, `compress(columns, window_queries, scores)`
    runs when the columns hold `budget + interval` entries on average (it replaces the lists in place)."""
    layers, n_tok, kv_heads, _ = keys.shape
    group = queries.shape[2] // kv_heads
    columns: list[list[Entries]] = [[[] for _ in range(kv_heads)] for _ in range(layers)]
    scores = [[[] for _ in range(kv_heads)] for _ in range(layers)]
    recent_q: list[tuple[int, torch.Tensor]] = []
    steps = [list(range(first_chunk))] + [[t] for t in range(first_chunk, n_tok)]
    for step in steps:
        for layer in range(layers):
            for h in range(kv_heads):
                col, sc = columns[layer][h], scores[layer][h]
                for t in step:
                    col.append((t, keys[layer, t, h].tolist()))
                    sc.append(0.0)
                if accumulate:
                    for t in step:
                        for g in range(group):
                            weights = softmax_over(queries[layer, t, h * group + g].tolist(), col, t, scale)
                            for j, wgt in enumerate(weights):
                                sc[j] += wgt
        recent_q = (recent_q + [(t, queries[:, t]) for t in step])[-window:] if window else []
        sizes = [len(c) for lay in columns for c in lay]
        if sum(sizes) / len(sizes) >= budget + interval:      # entries per column, on average
            def window_of(layer: int, h: int) -> list:
                return [(t, [q[layer, h * group + g].tolist() for g in range(group)]) for t, q in recent_q]
            compress(columns, scores, window_of)
    return columns, scores
