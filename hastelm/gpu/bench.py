"""Decode speed: eager `Transformer.forward` against `GraphDecoder` (CUDA graphs), bf16.

    python -m hastelm.gpu.bench [--model PATH] [--batches 1,8,64] [--json out.json] [--compile]

For each batch size B, B slots hold a 128-token prompt (computed once, then trimmed back before
every run); each run decodes greedily (one host read of the tokens per step, as an engine does) and
reports tokens/s (B x steps / wall time), the median of `--repeats` runs. For the graphs it also
reports the GPU time of one step (back-to-back replays between CUDA events) and the weight bytes
read per second at that rate. Without `--model` (or $MODEL) it times a SmolLM2-135M-shaped llama
with random weights: the speed of a dense bf16 step does not depend on the weights' values.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch

from ..engine.runner import ModelRunner, Row
from ..models.config import ModelConfig
from ..models.transformer import LayerWeights, Transformer
from ..quant.linear import DenseLinear


def random_smollm2(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Transformer:
    """SmolLM2-135M's shapes (30 layers, hidden 576, 9 q / 3 kv heads, vocab 49152, tied) with random weights."""
    c = ModelConfig(architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                    rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True)
    g = torch.Generator(device).manual_seed(seed)

    def lin(out: int, inp: int) -> DenseLinear:
        return DenseLinear(torch.randn(out, inp, device=device, generator=g).mul_(inp ** -0.5).to(dtype))

    def norm() -> torch.Tensor:
        return torch.ones(c.hidden_size, device=device, dtype=dtype)

    h, d = c.hidden_size, c.head_dim
    layers = [LayerWeights(attn_norm=norm(), qkv=lin((c.num_attention_heads + 2 * c.num_key_value_heads) * d, h),
                           o=lin(h, c.num_attention_heads * d), ffn_norm=norm(),
                           gate_up=lin(2 * c.intermediate_size, h), down=lin(h, c.intermediate_size))
              for _ in range(c.num_hidden_layers)]
    emb = DenseLinear(torch.randn(c.vocab_size, h, device=device, generator=g).to(dtype))
    return Transformer(c, emb, layers, norm(), emb, dtype).eval()


def weight_bytes(model: Transformer) -> int:
    """Bytes a decode step reads: every parameter once (a tied table counted once)."""
    seen = {id(p): p for p in model.parameters()}
    return sum(p.numel() * p.element_size() for p in seen.values())


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _trim(runner: ModelRunner, slots: list[int], length: int) -> None:
    for s in slots:
        runner.cache.trim(runner.length(s) - length, s)


def _timed(run: Callable[[], list[list[int]]]) -> tuple[float, list[list[int]]]:
    _sync()
    t0 = time.perf_counter()
    out = run()
    _sync()
    return time.perf_counter() - t0, out


def _greedy(runner: ModelRunner, slots: list[int], start: list[int], prompt: int, n: int) -> list[list[int]]:
    """`n` greedy decode steps of every slot after its `prompt` cached tokens (one host read a step)."""
    toks, out = start, []
    for i in range(n):
        toks = runner.decode(slots, toks, [prompt + i] * len(slots)).argmax(-1).tolist()
        out.append(toks)
    return out


def bench_batch(runners: dict[str, ModelRunner], B: int, prompt: int, steps: int, eager_steps: int,
                repeats: int) -> dict:
    """Eager (`runners["eager"]`) against each graph runner, B rows decoding together."""
    slots = list(range(B))
    ids = [[(7 * s + 13 * i) % 1000 + 1 for i in range(prompt)] for s in slots]
    start: list[int] = []
    for runner in runners.values():
        for s in slots:
            runner.cache.reset(s)
        first = runner.forward([Row(s, ids[s], 0) for s in slots], last_only=True)
        start = first.argmax(-1).tolist()
    row: dict = {"batch": B}
    out: dict[str, list[list[int]]] = {}
    for name, runner in runners.items():
        n = eager_steps if name == "eager" else steps
        _trim(runner, slots, prompt)
        t0 = time.perf_counter()
        _greedy(runner, slots, start, prompt, 1)       # captures (and compiles) this bucket
        _sync()
        row[f"{name}_capture_s"] = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            _trim(runner, slots, prompt)
            dt, out[name] = _timed(lambda: _greedy(runner, slots, start, prompt, n))
            times.append(dt)
        row[f"{name}_tok_s"] = B * n / statistics.median(times)
        row[f"{name}_ms_step"] = 1e3 * statistics.median(times) / n
        if name != "eager":
            m = min(len(out[name]), len(out["eager"]))
            row[f"{name}_agree_eager"] = sum(a == b for x, y in zip(out[name][:m], out["eager"][:m])
                                             for a, b in zip(x, y)) / (m * B)
            if torch.cuda.is_available():
                row[f"{name}_gpu_ms_step"] = _gpu_step_ms(runner, slots, prompt)
        _trim(runner, slots, prompt)
    return row


def _gpu_step_ms(runner: ModelRunner, slots: list[int], prompt: int, n: int = 50) -> float:
    """GPU time of one step: `n` back-to-back replays of the same step (it rewrites one entry)."""
    _trim(runner, slots, prompt)
    runner.decode(slots, [1] * len(slots), [prompt] * len(slots))
    dec = runner._graphs
    assert dec is not None
    bb, key_len = dec.bucket(len(slots), prompt)
    graph = dec._captured[(bb, 1, key_len)].graph
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.environ.get("MODEL") or None, help=".gguf / HF folder / alias")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--steps", type=int, default=128, help="graph decode steps per run")
    p.add_argument("--eager-steps", type=int, default=32, help="eager decode steps per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--capacity", type=int, default=512)
    p.add_argument("--compile", action="store_true", help="also time GraphDecoder(compile=True)")
    p.add_argument("--no-plain", action="store_true", help="skip the uncompiled graphs")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.model:
        from ..models.loader import load_model
        model = load_model(a.model, "bfloat16" if device == "cuda" else "float32", device).model
    else:
        model = random_smollm2(device, torch.bfloat16 if device == "cuda" else torch.float32)
    batches = [int(b) for b in a.batches.split(",")]
    runners = {"eager": ModelRunner(model, a.capacity, max(batches), cuda_graphs=False)}
    if not a.no_plain:
        runners["graphs"] = ModelRunner(model, a.capacity, max(batches))
    if a.compile:
        runners["compiled"] = ModelRunner(model, a.capacity, max(batches), compile_graphs=True)
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "model": a.model or "random SmolLM2-135M-shaped llama", "dtype": str(model.dtype),
            "weight_mb": weight_bytes(model) / 1e6, "prompt": a.prompt, "steps": a.steps,
            "eager_steps": a.eager_steps, "repeats": a.repeats}
    rows = []
    for B in batches:
        row = bench_batch(runners, B, a.prompt, a.steps, a.eager_steps, a.repeats)
        decoders = [n for n in runners if n != "eager"]
        for name in decoders:
            if f"{name}_gpu_ms_step" in row:
                row[f"{name}_gb_s"] = info["weight_mb"] / 1e3 / (row[f"{name}_gpu_ms_step"] / 1e3)
        rows.append(row)
        _print_row(row, decoders)
    result = {"info": info, "rows": rows}
    print(json.dumps(info))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def _print_row(row: dict, decoders: list[str]) -> None:
    parts = [f"B={row['batch']:>3}  eager {row['eager_tok_s']:9.1f} t/s ({row['eager_ms_step']:.2f} ms/step)"]
    for name in decoders:
        gpu = row.get(f"{name}_gpu_ms_step")
        parts.append(f"{name} {row[f'{name}_tok_s']:9.1f} t/s ({row[f'{name}_ms_step']:.3f} ms/step"
                     + (f", GPU {gpu:.3f} ms, {row[f'{name}_gb_s']:.0f} GB/s" if gpu else "")
                     + f", x{row[f'{name}_tok_s'] / row['eager_tok_s']:.1f}, capture {row[f'{name}_capture_s']:.1f} s,"
                     f" agree {row[f'{name}_agree_eager']:.2f})")
    print(" | ".join(parts), flush=True)


if __name__ == "__main__":
    main()
