"""What one client may cost the server: request body size, how long it may take to send its
request, and how many connections may be open at once.

uvicorn closes a kept-alive connection after its response (`timeout_keep_alive`) but sets no
deadline before the first request head, so sockets that never send anything stay open until the
process runs out of file descriptors. `GuardedH11Protocol` adds that deadline and a connection cap;
`BodyLimit` refuses bodies over the limit (by Content-Length at once, by counting otherwise) and
bodies that trickle in slower than the deadline; unlike FastAPI's own `max_body_size`, it answers
in the API's error format and bounds the time, not only the size.
"""
from __future__ import annotations

import asyncio
import json
import resource
from dataclasses import dataclass

import uvicorn
from fastapi import HTTPException   # FastAPI re-raises its own kind from a body read, as is
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

MB = 1 << 20


def default_max_connections() -> int:
    """Half the file-descriptor limit (the rest is for model files, logs and the runtime), <= 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(8, min(1024, soft // 2 if soft != resource.RLIM_INFINITY else 1024))


@dataclass(frozen=True)
class ConnectionLimits:
    max_body_bytes: int = 8 * MB
    request_timeout_s: float = 15.0    # to send a request's head, and between chunks of its body
    keep_alive_s: float = 5.0          # an idle kept-alive connection is closed after this
    max_connections: int = 1024        # open sockets; more are closed on arrival

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024 or self.request_timeout_s <= 0 or self.keep_alive_s <= 0 \
                or self.max_connections < 1:
            raise ValueError("body limit >= 1 KiB, timeouts > 0 and max connections >= 1 required")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for the first request head and a connection cap."""
    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.close()       # closed before reading anything: the socket is freed at once
            return
        self.loop.call_later(self.limits.request_timeout_s, self._head_deadline)

    def _head_deadline(self) -> None:
        if self.cycle is None and not self.transport.is_closing():   # no request head arrived in time
            self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def server_config(app: ASGIApp, host: str, port: int, limits: ConnectionLimits,
                  log_level: str = "info") -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=guarded_protocol(limits),
                          timeout_keep_alive=int(max(1, limits.keep_alive_s)),
                          h11_max_incomplete_event_size=64 * 1024)


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, 408 for one that stops arriving."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit():
            await _refuse(send, 400, "invalid Content-Length header")
            return
        if int(declared) > self.max_bytes:
            await _refuse(send, 413, self._too_large())
            return
        received = 0
        complete = False

        async def limited() -> Message:
            nonlocal received, complete
            if complete:        # after the body: disconnect watching waits as long as it likes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_bytes / MB:g} MB"


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": None}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
