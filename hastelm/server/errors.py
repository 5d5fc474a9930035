"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}` for every failure,
so clients surface a readable message and the server never answers with a bare traceback."""
from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..decoding.choices import StrategyError
from ..errors import ContextOverflowError, HastelmError
from ..engine.jobs import QueueFullError, SchedulerStopped
from .schemas import SamplingFields

log = logging.getLogger("hastelm.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable", 500: "internal_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def api_error(exc: BaseException, param: str | None = None) -> APIError:
    """Map an engine or scheduler exception onto the HTTP error a client should see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), code="queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, SchedulerStopped):
        return APIError(503, str(exc), code="shutting_down")
    if isinstance(exc, StrategyError):
        return APIError(400, str(exc), "speculative")
    if isinstance(exc, ContextOverflowError):
        return APIError(400, str(exc), param, "context_length_exceeded")
    if isinstance(exc, HastelmError):
        return APIError(400, str(exc), param or _param_of(str(exc)))
    log.error("internal error: %s", exc, exc_info=exc)     # the details stay in the server's log
    return APIError(500, "internal error while generating; the server's log has the details", code="internal_error")


def _param_of(message: str) -> str | None:
    # SamplingParams messages start with the field name ("top_p must be in (0, 1]")
    first = message.split(" ", 1)[0]
    return first if first in SamplingFields.model_fields else None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    err = errors[0]
    # union members and validators add tags such as "function-after[...]" or "list[int]" to the path
    loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _is_tag(p)]
    if err.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    path = ".".join(loc) or None
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return (f"{path}: {message}" if path else message), (loc[0] if loc else None)


def _is_tag(part: object) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(400, message, param, "invalid_value").response()

    @app.exception_handler(json.JSONDecodeError)
    async def _bad_json(_: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return APIError(400, f"request body is not valid JSON: {exc.msg}").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return api_error(exc).response()
