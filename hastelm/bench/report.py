"""Benchmark output: a rich table, a JSON file and a matplotlib bar chart (the `bench` extra)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from . import require


def core_table(rows: list[dict[str, Any]], title: str) -> Table:
    gpu = any("peak_gpu_mb" in r for r in rows)
    table = _table(title, "engine", "dtype", "test", "t/s (median ± sd)", "min–max",
                   "engine peak RSS MB", *(["peak GPU MB"] if gpu else []))
    for r in rows:
        table.add_row(r["engine"], r["dtype"], r["test"], f"{r['tokens_per_s']:.1f} ± {r['stdev']:.1f}",
                      f"{r['min']:.1f}–{r['max']:.1f}", f"{r['peak_rss_mb']:.0f}", *_gpu_cell(r, gpu))
    return table


def _gpu_cell(row: dict[str, Any], shown: bool) -> list[str]:
    if not shown:
        return []
    return [f"{row['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in row else "–"]


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for name in columns:
        table.add_column(name, no_wrap=True)
    return table


def workload_table(rows: list[dict[str, Any]], title: str) -> Table:
    gpu = any("peak_gpu_mb" in r for r in rows)
    table = _table(title, "engine", "method", "category", "prompts", "tokens", "t/s", "× plain", "tokens/step",
                   "nodes/step", "accept", "= plain", "peak RSS MB", *(["peak GPU MB"] if gpu else []))
    for r in rows:
        prompts = f"{r['prompts']}*" if r["limited"] else str(r["prompts"])
        table.add_row(r["engine"], r["method"], r["category"], prompts, str(r["tokens"]),
                      f"{r['tokens_per_s']:.1f}", _fmt(r["speedup_vs_plain"], "{:.2f}×"),
                      _fmt(r["mean_accepted"], "{:.2f}"), _fmt(r.get("mean_verified"), "{:.1f}"),
                      _fmt(r["acceptance_rate"], "{:.0%}"),
                      _fmt(r["same_output_as_plain"], "{:.0%}"), f"{r['peak_rss_mb']:.0f}", *_gpu_cell(r, gpu),
                      end_section=r["category"] == "overall")
    return table


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def write_json(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


def plot(path: Path, rows: list[dict[str, Any]], group: str, title: str) -> None:
    """Grouped bars of tokens/s (one group per `group` value, one bar per engine/method) beside
    each engine/method's peak RSS."""
    matplotlib = require("matplotlib", "hastelm bench --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys(_label(r) for r in rows))
    groups = list(dict.fromkeys(r[group] for r in rows))
    rate = {(_label(r), r[group]): r["tokens_per_s"] for r in rows}
    memory: dict[str, float] = {}
    for r in rows:   # one process per test: an engine's peak is the largest of its tests'
        memory[_label(r)] = max(memory.get(_label(r), 0.0), r["peak_rss_mb"])
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, [rate.get((name, g), 0) for g in groups], width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
    ax.set_ylabel("tokens/s (higher is better)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    mem.barh(series, [memory[s] for s in series], color="gray")
    mem.set_xlabel("peak RSS, MB (lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label(row: dict[str, Any]) -> str:
    return row["engine"] if row.get("method", "plain") == "plain" else f"{row['engine']} {row['method']}"
