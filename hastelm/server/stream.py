"""Server-Sent Events for `stream: true`: one chunk per decode step and choice, an optional usage
chunk (`stream_options.include_usage`), then `data: [DONE]`."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..decoding.step import StepResult
from .errors import APIError
from .generation import Choice, Generation
from .responses import (Header, chat_chunk, chat_logprobs, completion_chunk, completion_logprobs, usage)
from .schemas import ChatCompletionChunk, Completion

DONE = "data: [DONE]\n\n"


class EventStream(StreamingResponse):
    """An SSE response that cancels its generation however it ends: finished, failed, or the
    client went away mid-stream."""

    def __init__(self, generation: Generation, body: AsyncIterator[str]) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.cancel()


@dataclass
class StreamSpec:
    header: Header
    tokenizer: Any
    prompt_tokens: int
    include_usage: bool
    logprobs: bool


def sse(chunk: BaseModel | dict, with_usage: bool = True) -> str:
    if isinstance(chunk, BaseModel):
        body = chunk.model_dump_json(exclude=None if with_usage else {"usage"})
    else:
        body = json.dumps(chunk)
    return f"data: {body}\n\n"


async def _steps(gen: Generation, first: tuple[Choice, StepResult]) -> AsyncIterator[tuple[Choice, StepResult]]:
    yield first
    while not gen.finished:
        yield await gen.next(None)


async def chat_events(gen: Generation, first: tuple[Choice, StepResult], spec: StreamSpec) -> AsyncIterator[str]:
    h, inc = spec.header, spec.include_usage
    for index in sorted(gen.choices):
        yield sse(chat_chunk(h, index, role=True, text=""), inc)
    try:
        async for choice, r in _steps(gen, first):
            lp = chat_logprobs(spec.tokenizer, r.logprobs) if spec.logprobs and r.logprobs else None
            if r.text or lp or r.finish_reason:
                yield sse(chat_chunk(h, choice.job.index, text=r.text, logprobs=lp, finish_reason=r.finish_reason), inc)
    except APIError as exc:
        yield sse(exc.body())
    else:
        if inc:
            yield sse(ChatCompletionChunk(id=h.id, created=h.created, model=h.model, choices=[],
                                          usage=usage(spec.prompt_tokens, list(gen.choices.values()))))
    yield DONE


async def completion_events(gen: Generation, first: tuple[Choice, StepResult], spec: StreamSpec,
                            echo_texts: dict[int, str]) -> AsyncIterator[str]:
    """`echo_texts`: choice index -> prompt text sent first (empty without echo)."""
    h, inc, tok = spec.header, spec.include_usage, spec.tokenizer
    offsets = dict.fromkeys(gen.choices, 0)
    for index, text in sorted(echo_texts.items()):
        job = gen.choices[index].job
        lp = completion_logprobs(tok, job.prompt_scores, job.ids) if spec.logprobs else None
        offsets[index] = len(text) if lp is None else lp.text_offset[-1] + len(lp.tokens[-1])
        yield sse(completion_chunk(h, index, text, lp), inc)
    try:
        async for choice, r in _steps(gen, first):
            index = choice.job.index
            lp = None
            if spec.logprobs and r.logprobs:
                lp = completion_logprobs(tok, r.logprobs, [x.token for x in r.logprobs], offsets[index])
            offsets[index] += len(r.text)
            if r.text or lp or r.finish_reason:
                yield sse(completion_chunk(h, index, r.text, lp, r.finish_reason), inc)
    except APIError as exc:
        yield sse(exc.body())
    else:
        if inc:
            yield sse(Completion(id=h.id, created=h.created, model=h.model, choices=[],
                                 usage=usage(spec.prompt_tokens, list(gen.choices.values()))))
    yield DONE
