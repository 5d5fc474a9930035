"""`hastelm` command line: generate | chat | models | serve | bench."""
from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .console import err, fail, load_llm
from .errors import HastelmError
from .models.registry import ALIASES, DEFAULT_MODEL, alias_location

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="hastelm: LLM inference with built-in, verified decoding accelerations.")


def sampling_params(max_tokens: int, temp: float, top_k: int, top_p: float, min_p: float,
                    seed: Optional[int], repeat_penalty: float = 1.0, stop: Optional[list[str]] = None):
    from .decoding.sampling import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                          seed=seed, repetition_penalty=repeat_penalty, stop=stop or [])


ModelOpt = typer.Option(DEFAULT_MODEL, "-m", "--model", help="alias, .gguf file or Hugging Face folder")
SpecOpt = typer.Option(None, "--speculative", help="recycling|pld|lookahead|layerskip|draft:MODEL|auto")
KvPolicyOpt = typer.Option(None, "--kv-policy", help="KV-cache eviction: streamingllm|h2o|snapkv|pyramidkv|adakv")
KvBudgetOpt = typer.Option(None, "--kv-budget", help="entries each sequence keeps: a ratio in (0, 1] or a token count")


@app.command()
def generate(
    prompt: str = typer.Option(..., "-p", "--prompt", help="prompt text, or - to read stdin"),
    model: str = ModelOpt,
    max_tokens: int = typer.Option(256, "--max-tokens", "-n"),
    temp: float = typer.Option(0.8, "--temp", help="0 = greedy"),
    top_k: int = typer.Option(40, "--top-k"),
    top_p: float = typer.Option(0.95, "--top-p"),
    min_p: float = typer.Option(0.05, "--min-p"),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    system: Optional[str] = typer.Option(None, "--system", help="system prompt; implies the chat template"),
    chat: bool = typer.Option(True, "--chat/--raw", help="apply the model's chat template"),
    stop: Optional[list[str]] = typer.Option(None, "--stop"),
    speculative: Optional[str] = SpecOpt,
    kv_policy: Optional[str] = KvPolicyOpt,
    kv_budget: Optional[str] = KvBudgetOpt,
    dtype: str = typer.Option("auto", "--dtype", help="auto|fast|float32|bfloat16|invariant (CUDA: batch-invariant bf16)"),
    device: str = typer.Option("auto", "--device"),
    ctx_size: Optional[int] = typer.Option(None, "-c", "--ctx-size", help="context length (default: the model's)"),
    stats: bool = typer.Option(True, "--stats/--no-stats", help="print speed on stderr"),
) -> None:
    """Complete one prompt, streaming the text to stdout."""
    try:
        text = sys.stdin.read() if prompt == "-" else prompt
        params = sampling_params(max_tokens, temp, top_k, top_p, min_p, seed, repeat_penalty, stop)
        llm = load_llm(model, dtype, device, speculative, ctx_size, kv_policy, kv_budget)
        if chat or system:
            steps = llm.chat_stream([{"role": "user", "content": text}], params, system=system)
        else:
            steps = llm.stream(text, params)
        _print_stream(steps, stats)
    except HastelmError as exc:
        fail(str(exc))


def _print_stream(steps, stats: bool) -> None:
    import time

    n = drafts = accepted = proposed = 0
    t0 = time.perf_counter()
    first = None
    for r in steps:
        sys.stdout.write(r.text)
        sys.stdout.flush()
        n += len(r.tokens)
        accepted += r.accepted
        proposed += r.proposed
        drafts += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    sys.stdout.write("\n")
    if stats and first is not None:
        rate = (n - 1) / (end - first) if n > 1 and end > first else 0.0
        # per decode step (the prefill's result is not one), as the bench counts: 1 + accepted drafts
        per_step = 1 + accepted / max(drafts - 1, 1)
        spec = f", {accepted / proposed:.0%} of drafted tokens accepted" if proposed else ""
        err.print(f"[dim]{n} tokens, first after {first - t0:.2f}s, {rate:.1f} tokens/s, "
                  f"{per_step:.2f} tokens/step{spec}[/]", highlight=False)


@app.command("chat")
def chat_cmd(
    model: str = ModelOpt,
    system: Optional[str] = typer.Option(None, "--system"),
    max_tokens: int = typer.Option(512, "--max-tokens", "-n"),
    temp: float = typer.Option(0.7, "--temp"),
    top_k: int = typer.Option(40, "--top-k"),
    top_p: float = typer.Option(0.95, "--top-p"),
    min_p: float = typer.Option(0.05, "--min-p"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    speculative: Optional[str] = SpecOpt,
    kv_policy: Optional[str] = KvPolicyOpt,
    kv_budget: Optional[str] = KvBudgetOpt,
    dtype: str = typer.Option("auto", "--dtype"),
) -> None:
    """Interactive streaming conversation (empty line or Ctrl-D to quit; /reset clears history)."""
    try:
        params = sampling_params(max_tokens, temp, top_k, top_p, min_p, seed)
        llm = load_llm(model, dtype, speculative=speculative, kv_policy=kv_policy, kv_budget=kv_budget)
    except HastelmError as exc:
        fail(str(exc))
    history: list[dict[str, str]] = []
    err.print(f"[dim]chatting with {model}; empty line to quit, /reset to start over[/]")
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            break
        if not line.strip():
            break
        if line.strip() == "/reset":
            history.clear()
            continue
        history.append({"role": "user", "content": line})
        reply = []
        try:
            for r in llm.chat_stream(history, params, system=system):
                sys.stdout.write(r.text)
                sys.stdout.flush()
                reply.append(r.text)
        except HastelmError as exc:
            err.print(f"[red]error:[/] {exc}")
            history.pop()
            continue
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})


@app.command()
def models() -> None:
    """List model aliases and where their files are."""
    table = Table("alias", "description", "file")
    for name, alias in ALIASES.items():
        table.add_row(name, alias.description, alias_location(name))
    Console().print(table)


def _register_optional_commands() -> None:
    from .bench.cli import bench_app
    from .server.cli import serve

    app.add_typer(bench_app, name="bench")
    app.command("serve")(serve)


_register_optional_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
