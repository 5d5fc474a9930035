"""What the batch-invariant mode costs and buys on a GPU: bf16 against "invariant".

    python -m hastelm.kernels.triton_invariant_bench [--model PATH] [--tokens 128] [--json FILE]

For each mode: greedy decoding speed, tg128 (one prompt, 128 tokens, the median of `--repeats`
runs after a warm-up that compiles the Triton kernels or captures the CUDA graphs), and over five
short code prompts decoded together, the fraction whose greedy `pld` and `auto` outputs equal plain
decoding token for token (with each method's tokens/s over the batch). The model is `--model`,
else $MODEL, else the packaged SmolLM2-135M. Prints a table; writes JSON to `--json`, else to
$OUT/triton_invariant_bench.json when $OUT is set. About a minute on an H200.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import HastelmError

CODE_PROMPTS = [
    'def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number (fibonacci(0) == 0)."""\n',
    'def is_palindrome(s: str) -> bool:\n    """Whether s reads the same backwards, ignoring case and spaces."""\n',
    'def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n    """Merge two sorted lists."""\n'
    '    result = []\n    i = j = 0\n',
    'def word_counts(text: str) -> dict[str, int]:\n    """Count how often each word occurs in text."""\n',
    'class Stack:\n    """A last-in, first-out stack."""\n\n    def __init__(self):\n        self.items = []\n\n'
    '    def push(self, item):\n',
]
TG_PROMPT = "Write a short story about a robot who learns to paint."
METHODS = ("pld", "auto")


def _model_path(arg: str | None) -> str:
    path = arg or os.environ.get("MODEL")
    if path:
        return path
    from ..models.registry import resolve_model
    return str(resolve_model("smollm2-135m"))


def _decode_speed(llm: Any, tokens: int, repeats: int) -> float:
    from ..decoding.sampling import SamplingParams
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    llm.generate(TG_PROMPT, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))  # warm-up
    return statistics.median(llm.generate(TG_PROMPT, params)[0].tokens_per_s for _ in range(repeats))


def _first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where two outputs differ (None: identical)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _identity(llm: Any, tokens: int) -> dict[str, Any]:
    """Plain, pld and auto over the code prompts (decoded together): each method's tokens/s and,
    for the speculative ones, which outputs equal plain decoding's."""
    from ..decoding.sampling import SamplingParams
    params = SamplingParams(temperature=0, max_tokens=tokens)
    out: dict[str, Any] = {}
    plain: list[list[int]] = []
    for method in ("plain", *METHODS):
        llm.generate(CODE_PROMPTS[:1], SamplingParams(temperature=0, max_tokens=8),   # warm-up, first use
                     speculative=None if method == "plain" else method, progress=False)
        t = time.perf_counter()
        done = llm.generate(CODE_PROMPTS, params, speculative=None if method == "plain" else method,
                            progress=False)
        wall = time.perf_counter() - t
        ids = [c.token_ids for c in done]
        row: dict[str, Any] = {"tokens_per_s": sum(map(len, ids)) / wall}
        if method == "plain":
            plain = ids
        else:
            diffs = [_first_difference(p, s) for p, s in zip(plain, ids)]
            row["equal"] = sum(d is None for d in diffs) / len(diffs)
            row["first_difference"] = diffs
            row["accepted_per_step"] = sum(c.accepted for c in done) / max(1, sum(c.steps for c in done))
        out[method] = row
    return out


def run(model: str, modes: list[str], tokens: int, repeats: int, device: str = "cuda") -> dict[str, Any]:
    from ..engine.llm import LLM
    name = torch.cuda.get_device_name(0) if device == "cuda" else device
    results: dict[str, Any] = {"model": model, "device": name, "tokens": tokens,
                               "torch": torch.__version__, "modes": {}}
    for mode in modes:
        t = time.perf_counter()
        llm = LLM(model, dtype=mode, device=device, context_length=2048, max_batch=8)
        row: dict[str, Any] = {"load_s": time.perf_counter() - t}
        row["tg_tokens_per_s"] = _decode_speed(llm, tokens, repeats)
        row.update(_identity(llm, tokens))
        row["total_s"] = time.perf_counter() - t
        results["modes"][mode] = row
        del llm
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def table(results: dict[str, Any]) -> str:
    modes = results["modes"]
    lines = [f"{results['model']} on {results['device']} (torch {results['torch']}), greedy, "
             f"{results['tokens']} tokens",
             f"{'mode':<10} {'tg t/s':>8} {'plain t/s':>10}" + "".join(
                 f" {m + ' t/s':>9} {m + ' =plain':>11}" for m in METHODS) + f" {'time s':>7}"]
    for mode, r in modes.items():
        lines.append(f"{mode:<10} {r['tg_tokens_per_s']:>8.1f} {r['plain']['tokens_per_s']:>10.1f}" + "".join(
            f" {r[m]['tokens_per_s']:>9.1f} {r[m]['equal']:>11.0%}" for m in METHODS) + f" {r['total_s']:>7.1f}")
    if "bfloat16" in modes and "invariant" in modes:
        cost = modes["invariant"]["tg_tokens_per_s"] / modes["bfloat16"]["tg_tokens_per_s"]
        lines.append(f"invariant / bfloat16 decode speed: {cost:.2f}x")
    for mode, r in modes.items():
        for m in METHODS:
            if r[m]["equal"] < 1:
                lines.append(f"{mode} {m}: first differing token per prompt {r[m]['first_difference']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hastelm.kernels.triton_invariant_bench",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a .gguf / HF folder (default: $MODEL, else the packaged SmolLM2-135M)")
    ap.add_argument("--modes", default="bfloat16,invariant")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="where to write the results (default: $OUT/triton_invariant_bench.json)")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only as a smoke test (TRITON_INTERPRET=1)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA device", file=sys.stderr)
        return 2
    try:
        results = run(_model_path(args.model), args.modes.split(","), args.tokens, args.repeats, args.device)
    except HastelmError as exc:       # a missing model, a mode this machine cannot run: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(results))
    dest = args.json or (os.path.join(os.environ["OUT"], "triton_invariant_bench.json") if os.environ.get("OUT") else None)
    if dest:
        Path(dest).write_text(json.dumps(results, indent=2))
        print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
