"""Build OpenAI response bodies (whole responses and stream chunks) from scheduler results."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..decoding.step import TokenLogprob
from .generation import Choice
from .schemas import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
                      ChatDelta, ChatLogprobs, ChatTokenLogprob, Completion, CompletionChoice,
                      CompletionLogprobs, TopLogprob, Usage)


@dataclass
class Header:
    """Fields every response and chunk of one request shares."""
    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> "Header":
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model)


def usage(prompt_tokens: int, choices: list[Choice]) -> Usage:
    completion = sum(c.tokens for c in choices)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion)


# ---- logprobs ------------------------------------------------------------------------------------
def _top(tokenizer: Any, token: int, logprob: float) -> TopLogprob:
    raw = tokenizer.token_bytes(token)
    return TopLogprob(token=raw.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(raw))


def chat_logprobs(tokenizer: Any, lps: list[TokenLogprob]) -> ChatLogprobs:
    content = []
    for lp in lps:
        head = _top(tokenizer, lp.token, lp.logprob)
        content.append(ChatTokenLogprob(**head.model_dump(),
                                        top_logprobs=[_top(tokenizer, t, v) for t, v in lp.top]))
    return ChatLogprobs(content=content)


def completion_logprobs(tokenizer: Any, lps: list[TokenLogprob | None], tokens: list[int],
                        offset: int = 0) -> CompletionLogprobs:
    """`tokens[i]` is the token `lps[i]` scores (a None entry: the prompt's first token, unscored)."""
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for tok, lp in zip(tokens, lps):
        text = tokenizer.token_text(tok)
        out.tokens.append(text)
        out.text_offset.append(offset)
        offset += len(text)
        out.token_logprobs.append(None if lp is None else lp.logprob)
        out.top_logprobs.append(None if lp is None else {tokenizer.token_text(t): v for t, v in lp.top})
    return out


# ---- chat ------------------------------------------------------------------------------------------
def chat_completion(h: Header, tokenizer: Any, choices: list[Choice], prompt_tokens: int,
                    logprobs: bool) -> ChatCompletion:
    return ChatCompletion(
        id=h.id, created=h.created, model=h.model, usage=usage(prompt_tokens, choices),
        choices=[ChatChoice(index=c.job.index, message=AssistantMessage(content="".join(c.text)),
                            logprobs=chat_logprobs(tokenizer, c.logprobs) if logprobs else None,
                            finish_reason=c.finish_reason or "length") for c in choices])


def chat_chunk(h: Header, index: int, *, role: bool = False, text: str | None = None,
               logprobs: ChatLogprobs | None = None, finish_reason: str | None = None) -> ChatCompletionChunk:
    delta = ChatDelta(role="assistant" if role else None, content=text)
    return ChatCompletionChunk(id=h.id, created=h.created, model=h.model,
                               choices=[ChatChunkChoice(index=index, delta=delta, logprobs=logprobs,
                                                        finish_reason=finish_reason)])


# ---- completions -----------------------------------------------------------------------------------
def echo_logprobs(tokenizer: Any, choice: Choice) -> CompletionLogprobs:
    """Prompt scores followed by the generated tokens' logprobs (echo + logprobs)."""
    job = choice.job
    out_tokens = [lp.token for lp in choice.logprobs]
    return completion_logprobs(tokenizer, [*job.prompt_scores, *choice.logprobs], [*job.ids, *out_tokens])


def completion(h: Header, tokenizer: Any, choices: list[Choice], prompt_texts: list[str], n: int,
               prompt_tokens: int, echo: bool, logprobs: bool) -> Completion:
    out = []
    for c in choices:
        prefix = prompt_texts[c.job.index // n] if echo else ""
        lp = None
        if logprobs:
            lp = echo_logprobs(tokenizer, c) if echo else completion_logprobs(
                tokenizer, c.logprobs, [x.token for x in c.logprobs])
        out.append(CompletionChoice(index=c.job.index, text=prefix + "".join(c.text), logprobs=lp,
                                    finish_reason=c.finish_reason or "length"))
    return Completion(id=h.id, created=h.created, model=h.model, choices=out,
                      usage=usage(prompt_tokens, choices))


def completion_chunk(h: Header, index: int, text: str, logprobs: CompletionLogprobs | None = None,
                     finish_reason: str | None = None) -> Completion:
    return Completion(id=h.id, created=h.created, model=h.model,
                      choices=[CompletionChoice(index=index, text=text, logprobs=logprobs,
                                                finish_reason=finish_reason)])
