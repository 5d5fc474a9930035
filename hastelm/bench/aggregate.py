"""Workload records -> report rows per engine, method and category (plus "overall").

Speedups compare with hastelm's plain decoding on the same items of the same run, so a peer run
on fewer prompts (`--peer-limit`) is compared with plain decoding on those prompts only.
"""
from __future__ import annotations

from typing import Any

OVERALL = "overall"


def workload_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    runs = merge_rounds(runs)
    plain = next((r for r in runs if r["engine"] == "hastelm" and r["method"] == "plain"), None)
    rows = []
    for run in runs:
        records = run["records"]
        categories = list(dict.fromkeys(r["category"] for r in records))
        for category in categories + ([OVERALL] if len(categories) > 1 else []):
            mine = _in(records, category)
            rows.append(_row(run, category, mine, plain))
    return rows


def merge_rounds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of the same engine and method (rounds of `--rounds`) as one: their records together,
    the highest peak memory."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        key = (run["engine"], run["method"])
        if key not in merged:
            merged[key] = {**run, "records": list(run["records"])}
            continue
        into = merged[key]
        into["records"] += run["records"]
        for peak in ("peak_rss_mb", "peak_gpu_mb"):
            if peak in run:
                into[peak] = max(into.get(peak, 0.0), run[peak])
    return list(merged.values())


def _row(run: dict[str, Any], category: str, mine: list[dict[str, Any]],
         plain: dict[str, Any] | None) -> dict[str, Any]:
    rate = _rate(mine)
    items = {r["item"] for r in mine}
    base = [r for r in plain["records"] if r["item"] in items] if plain else []
    row = {"engine": run["engine"], "method": run["method"], "test": f"workload:{run['workload']}",
           "category": category, "prompts": len(items), "generations": len(mine),
           "tokens": sum(r["tokens"] for r in mine), "seconds": sum(r["seconds"] for r in mine),
           "tokens_per_s": rate, "speedup_vs_plain": rate / _rate(base) if base and _rate(base) else None,
           "mean_accepted": _mean_accepted(mine), "mean_verified": _mean_verified(mine),
           "acceptance_rate": _acceptance(mine),
           "same_output_as_plain": _same_output(mine, base) if run["engine"] == "hastelm" else None,
           "peak_rss_mb": run["peak_rss_mb"], "dtype": run["dtype"],
           **({"peak_gpu_mb": run["peak_gpu_mb"]} if "peak_gpu_mb" in run else {}),
           "limited": bool(plain) and len(items) < len({r["item"] for r in _in(plain["records"], category)})}
    return row


def _in(records: list[dict[str, Any]], category: str) -> list[dict[str, Any]]:
    return [r for r in records if category in (OVERALL, r["category"])]


def _rate(records: list[dict[str, Any]]) -> float:
    seconds = sum(r["seconds"] for r in records)
    return sum(r["tokens"] for r in records) / seconds if seconds else 0.0


def _mean_accepted(records: list[dict[str, Any]]) -> float | None:
    """Tokens each verification step yields: accepted drafts plus the target's own token (plain: 1)."""
    if any(r["steps"] is None or r["accepted"] is None for r in records):
        return None
    steps = sum(r["steps"] for r in records)
    return 1 + sum(r["accepted"] for r in records) / steps if steps else None


def _mean_verified(records: list[dict[str, Any]]) -> float | None:
    """Draft nodes verified per step: the tree size the controller chose (0 on plain steps)."""
    if any(r["steps"] is None or r["proposed"] is None for r in records):
        return None
    steps = sum(r["steps"] for r in records)
    return sum(r["proposed"] for r in records) / steps if steps else None


def _acceptance(records: list[dict[str, Any]]) -> float | None:
    if any(r["proposed"] is None for r in records):
        return None
    proposed = sum(r["proposed"] for r in records)
    return sum(r["accepted"] for r in records) / proposed if proposed else None


def _same_output(mine: list[dict[str, Any]], base: list[dict[str, Any]]) -> float | None:
    """Fraction of generations token-identical to plain decoding's (greedy speculation is lossless)."""
    expected = {(r["item"], r["turn"]): r["output_sha1"] for r in base}
    pairs = [(r["output_sha1"], expected.get((r["item"], r["turn"]))) for r in mine]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs and base else None
