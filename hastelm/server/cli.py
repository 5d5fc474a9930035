"""`hastelm serve`: load a model once and serve the OpenAI-compatible API with uvicorn."""
from __future__ import annotations

import os
from typing import Optional

import typer

from ..models.registry import DEFAULT_MODEL


def compute_threads(threads: int | None) -> int:
    """The scheduler thread's compute threads (default: every core), with this main thread kept to
    one. libgomp gives every thread that opens a parallel region its own team and, once teams hold
    more threads than there are cores, throttles their spin-wait so each of the many small regions
    of a decode step waits on a futex wake-up: a 2-thread team on the scheduler thread beside one
    left over from loading the model on this thread ran a decode step about 2x slower than one
    thread. With only the scheduler's team alive, 2 threads beat 1 at every batch size."""
    import torch

    from ..system import usable_cores

    torch.set_num_threads(1)
    return threads or usable_cores()


def serve(
    model: str = typer.Option(DEFAULT_MODEL, "-m", "--model", help="alias, .gguf file or Hugging Face folder"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    max_batch: int = typer.Option(8, "--max-batch", help="sequences decoded together (KV-cache slots)"),
    max_queue: int = typer.Option(64, "--max-queue", help="waiting requests before answering 429"),
    speculative: Optional[str] = typer.Option(
        None, "--speculative", help="comma list of the methods requests may name, all loaded now; the first is "
                                    "the default (list none first to default to plain): "
                                    "pld,recycling[:FILE],lookahead,layerskip,draft:MODEL,auto"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="HASTELM_API_KEY",
                                          help="require Authorization: Bearer KEY on /v1 routes and /metrics"),
    metrics_public: bool = typer.Option(False, "--metrics-public", help="serve /metrics without the API key"),
    max_body_mb: float = typer.Option(8.0, "--max-body-mb", help="largest request body (413 above)"),
    request_timeout: float = typer.Option(15.0, "--request-timeout",
                                          help="seconds to send a request's head, and between body chunks"),
    keep_alive: float = typer.Option(5.0, "--keep-alive", help="seconds an idle kept-alive connection stays open"),
    max_connections: Optional[int] = typer.Option(None, "--max-connections",
                                                  help="open connections (default: half the file limit, <= 1024)"),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="model id clients use"),
    context_length: Optional[int] = typer.Option(None, "--context-length", help="per-sequence context"),
    kv_policy: Optional[str] = typer.Option(None, "--kv-policy",
                                            help="KV-cache eviction: streamingllm|h2o|snapkv|pyramidkv|adakv"),
    kv_budget: Optional[str] = typer.Option(None, "--kv-budget",
                                            help="entries each sequence keeps: a ratio in (0, 1] or a token count"),
    prefill_chunk: int = typer.Option(256, "--prefill-chunk", help="prompt tokens per scheduler step"),
    dtype: str = typer.Option("auto", "--dtype", help="auto|fast|float32|bfloat16|invariant (CUDA: batch-invariant bf16)"),
    device: str = typer.Option("auto", "--device"),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="compute threads (default: all cores)"),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve the OpenAI-compatible API (chat, completions, streaming) with continuous batching."""

    import uvicorn

    from ..console import fail, load_llm
    from ..errors import HastelmError
    from .app import create_app
    from .limits import MB, ConnectionLimits, default_max_connections, server_config

    try:
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1 or (threads is not None and threads < 1):
            raise HastelmError("--max-batch, --prefill-chunk and --threads must be >= 1, --max-queue >= 0")
        try:
            limits = ConnectionLimits(int(max_body_mb * MB), request_timeout, keep_alive,
                                      max_connections or default_max_connections())
        except ValueError as exc:
            raise HastelmError(f"--max-body-mb, --request-timeout, --keep-alive, --max-connections: {exc}") from None
        threads = compute_threads(threads)
        llm = load_llm(model, dtype, device, None, context_length, kv_policy, kv_budget)
        app = create_app(llm, model_id=served_model_name, max_batch=max_batch, max_queue=max_queue,
                         prefill_chunk=prefill_chunk, speculative=speculative or [], api_key=api_key,
                         threads=threads, limits=limits, metrics_public=metrics_public)
    except HastelmError as exc:
        fail(str(exc))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.Server(server_config(app, host, port, limits, log_level)).run()
