"""The OpenAI-compatible FastAPI app: routes, auth, and the scheduler's lifetime.

`create_app(llm, ...)` wraps an already loaded `LLM`; every request goes through the same
tokenizer, chat template, sampler and stop handling as the Python API, batched by the scheduler.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..decoding.choices import DecodingChoices
from .errors import APIError, api_error, install_error_handlers
from .generation import ClientGone, Generation
from .limits import BodyLimit, ConnectionLimits
from .metrics import Metrics
from .prompts import (chat_prompt, completion_prompts, longest_token_bytes, make_jobs, max_new_tokens,
                      prompt_items, usable_vocab)
from .responses import Header, chat_completion, completion
from .schemas import (ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, ErrorResponse,
                      ModelCard, ModelList, SamplingFields)
from .stream import EventStream, StreamSpec, chat_events, completion_events
from .worker import ServingScheduler

COMPLETION_DEFAULT_MAX_TOKENS = 16     # OpenAI's default for /v1/completions
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 429, 500, 503)}


@dataclass
class ServerState:
    llm: Any
    scheduler: ServingScheduler
    model_id: str
    api_key: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    created: int = 0

    @property
    def vocab_size(self) -> int:
        return usable_vocab(self.llm)

    def check_model(self, requested: str | None) -> str:
        if requested is not None and requested not in (self.model_id, self.llm.name):
            raise APIError(404, f"the model {requested!r} does not exist; this server serves "
                                f"{self.model_id!r}", "model", "model_not_found")
        return self.model_id

    def check_n(self, sequences: int) -> None:
        limit = self.scheduler.max_batch + self.scheduler.max_queue
        if sequences > limit:
            raise APIError(400, f"n asks for {sequences} sequences; this server holds at most {limit} "
                                f"(max batch + max queue)", "n")

    def check_request(self, body: SamplingFields) -> str:
        """What every generation request must pass before any work: a served model, fields this
        server implements, an enabled decoding method, a running scheduler. Returns the model id."""
        model = self.check_model(body.model)
        unsupported = body.unsupported_field()
        if unsupported:
            raise APIError(400, f"{unsupported} is not supported by this server", unsupported, "unsupported_parameter")
        try:
            self.scheduler.choices.resolve(body.speculative)
        except Exception as exc:
            raise api_error(exc, "speculative") from None
        if not self.scheduler.alive:
            raise APIError(503, self.scheduler.failure or "the server is not running", code="unavailable")
        return model


def model_id_for(name: str) -> str:
    path = Path(name)
    return path.stem if path.suffix == ".gguf" else (path.name if path.exists() else name)


def create_app(llm: Any, *, model_id: str | None = None, max_batch: int = 8, max_queue: int = 64,
               prefill_chunk: int = 256, speculative: str | Iterable[str] | None = None,
               api_key: str | None = None, threads: int | None = None, limits: ConnectionLimits | None = None,
               metrics_public: bool = False) -> FastAPI:
    """`speculative`: the methods requests may name, all built now (the first is the default;
    None: the LLM's default). Nothing a request sends loads a model or touches a file."""
    choices = DecodingChoices(llm.strategy, llm.default_speculative if speculative is None else speculative)
    scheduler = ServingScheduler(llm.model, llm.tokenizer, llm.context_length, choices, max_batch=max_batch,
                                 max_queue=max_queue, prefill_chunk=prefill_chunk, threads=threads,
                                 kv_policy=getattr(llm, "kv_policy", None))
    limits = limits or ConnectionLimits()
    longest_token_bytes(llm.tokenizer)       # computed once now, not on a request's clock
    state = ServerState(llm, scheduler, model_id or model_id_for(llm.name), api_key, created=int(time.time()))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="hastelm", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible server with continuous batching and speculative decoding.")
    app.state.hastelm = state
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=limits.request_timeout_s)
    install_error_handlers(app)
    app.include_router(router, dependencies=[Depends(check_api_key)])
    app.include_router(metrics_router, dependencies=[] if metrics_public else [Depends(check_api_key)])
    app.include_router(public)
    return app


def state_of(request: Request) -> ServerState:
    return request.app.state.hastelm


async def check_api_key(request: Request) -> None:
    key = state_of(request).api_key
    if not key:
        return
    # compared as bytes: header values arrive as latin-1 text, and a non-ASCII key or header
    # must be a plain mismatch, not an exception
    sent = request.headers.get("authorization", "").encode("latin-1")
    if not secrets.compare_digest(sent, f"Bearer {key}".encode("utf-8")):
        raise APIError(401, "invalid or missing API key (send the header Authorization: Bearer KEY)",
                       code="invalid_api_key")


router = APIRouter(responses=ERRORS)
metrics_router = APIRouter()
public = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    state = state_of(request)
    model = state.check_request(body)
    state.check_n(body.n)
    prompt = await run_in_threadpool(chat_prompt, state.llm, body)
    max_tokens = max_new_tokens(state.llm, body, len(prompt.ids),
                                body.max_completion_tokens or body.max_tokens, None)
    if max_tokens == 0:
        raise APIError(400, "max_tokens must be >= 1", "max_tokens")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    gen = Generation(state, make_jobs([prompt], body, vocab_size=state.vocab_size, max_tokens=[max_tokens],
                                      logprobs=logprobs))
    header = Header.new("chatcmpl", model)
    try:
        if body.stream:
            spec = StreamSpec(header, state.llm.tokenizer, len(prompt.ids),
                              bool(body.stream_options and body.stream_options.include_usage), body.logprobs)
            return EventStream(gen, chat_events(gen, await gen.next(request), spec))
        choices = await gen.run(request)
    except ClientGone:
        return Response(status_code=499)
    except BaseException:
        gen.cancel()
        raise
    return chat_completion(header, state.llm.tokenizer, choices, len(prompt.ids), body.logprobs)


@router.post("/v1/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = state_of(request)
    model = state.check_request(body)
    state.check_n(body.n * len(prompt_items(body)))
    prompts = await run_in_threadpool(completion_prompts, state.llm, body)
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens must be >= 1 (0 is allowed only with echo, to score the prompt)",
                       "max_tokens")
    limits = [max_new_tokens(state.llm, body, len(p.ids), body.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS)
              for p in prompts]
    scoring = body.logprobs if body.echo else None
    gen = Generation(state, make_jobs(prompts, body, vocab_size=state.vocab_size, max_tokens=limits,
                                      logprobs=body.logprobs, prompt_logprobs=scoring))
    header = Header.new("cmpl", model)
    prompt_tokens = sum(len(p.ids) for p in prompts)
    texts = [p.text for p in prompts]
    try:
        if body.stream:
            spec = StreamSpec(header, state.llm.tokenizer, prompt_tokens,
                              bool(body.stream_options and body.stream_options.include_usage),
                              body.logprobs is not None)
            echo = {i: texts[i // body.n] for i in gen.choices} if body.echo else {}
            return EventStream(gen, completion_events(gen, await gen.next(request), spec, echo))
        choices = await gen.run(request)
    except ClientGone:
        return Response(status_code=499)
    except BaseException:
        gen.cancel()
        raise
    return completion(header, state.llm.tokenizer, choices, texts, body.n, prompt_tokens, body.echo,
                      body.logprobs is not None)


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    state = state_of(request)
    return ModelList(data=[ModelCard(id=state.model_id, created=state.created,
                                     max_model_len=state.llm.context_length,
                                     speculative=state.scheduler.choices.names)])


@public.get("/health")
async def health(request: Request) -> JSONResponse:
    alive = state_of(request).scheduler.alive
    return JSONResponse({"status": "ok" if alive else "stopped"}, status_code=200 if alive else 503)


@metrics_router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    from .metrics import CONTENT_TYPE_LATEST, generate_latest

    state = state_of(request)
    state.metrics.scheduler = state.scheduler      # its gauges are read at scrape time
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
