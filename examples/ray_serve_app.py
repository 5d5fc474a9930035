"""Scale hastelm out: several replicas of the OpenAI-compatible server behind Ray Serve.

Each replica loads the model once and serves hastelm's own FastAPI app, with its own
continuous-batching scheduler; Ray Serve's HTTP proxy spreads requests over the replicas, so
clients see one OpenAI-compatible endpoint.

    pip install "hastelm[ray]"
    python examples/ray_serve_app.py --replicas 2 --port 8000
    # or with Ray's CLI:  serve run examples.ray_serve_app:app_builder replicas=2

Then point any OpenAI client at http://127.0.0.1:8000/v1.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from ray import serve
from ray.serve import Application


@serve.deployment
@serve.ingress()
class HastelmReplica:
    """One model copy and one scheduler; Ray builds the ASGI app after the constructor."""

    def __init__(self, model: str, threads: int, context_length: int | None, server_options: dict[str, Any]) -> None:
        import torch

        from hastelm import LLM

        torch.set_num_threads(threads)      # replicas share the machine's cores
        self.llm = LLM(model, context_length=context_length)
        self.server_options = server_options

    def __serve_build_asgi_app__(self) -> Any:
        from hastelm.server.app import create_app

        return create_app(self.llm, **self.server_options)


def build_app(model: str = "smollm2-135m", replicas: int = 2, threads: int | None = None,
              context_length: int | None = None, max_batch: int = 8, max_queue: int = 64,
              served_model_name: str | None = None) -> Application:
    """`replicas` copies of the server; by default the cores are divided evenly between them."""
    threads = threads or max(1, (os.cpu_count() or 1) // replicas)
    options = {"max_batch": max_batch, "max_queue": max_queue, "model_id": served_model_name or model}
    deployment = HastelmReplica.options(num_replicas=replicas, ray_actor_options={"num_cpus": threads})
    return deployment.bind(model, threads, context_length, options)


def app_builder(args: dict[str, str]) -> Application:
    """Entry point for `serve run examples.ray_serve_app:app_builder key=value ...`."""
    ints = {"replicas", "threads", "context_length", "max_batch", "max_queue"}
    return build_app(**{k: int(v) if k in ints else v for k, v in args.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="smollm2-135m")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per replica")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(args.model, args.replicas, args.threads, max_batch=args.max_batch),
              name="hastelm", route_prefix="/", blocking=True)


if __name__ == "__main__":
    main()
