"""Run the hastelm app with uvicorn on a free loopback port inside the test process, so tests
drive it over real HTTP (the official `openai` client, httpx) and can still look at the
scheduler's state."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from hastelm.server.app import create_app
from hastelm.server.limits import ConnectionLimits, server_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, llm: Any, limits: ConnectionLimits | None = None, **options: Any) -> None:
        """`options` go to `create_app`; the connection limits apply as `hastelm serve` applies them."""
        options.setdefault("model_id", "smollm2-135m")   # the fixtures load the default model by path
        limits = limits or ConnectionLimits()
        self.app = create_app(llm, limits=limits, **options)
        self.port = free_port()
        self.server = uvicorn.Server(server_config(self.app, "127.0.0.1", self.port, limits, "warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def scheduler(self) -> Any:
        return self.app.state.hastelm.scheduler

    def openai(self, api_key: str = "unused") -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no request holds a slot or waits in the queue."""
        deadline = time.monotonic() + timeout
        while self.scheduler.running or self.scheduler.queue_depth:
            if time.monotonic() > deadline:
                raise AssertionError("scheduler did not become idle")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
