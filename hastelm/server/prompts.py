"""Turn a validated API request into scheduler jobs: prompt token ids, sampling parameters and
the per-request options (echo scoring, logprobs, speculative proposer). Every user mistake found
here becomes a 400 naming the offending field.

Rendering and tokenizing run off the event loop (the routes call them in a worker thread), and
text too long for the context is refused before either: every token covers at most
`longest_token_bytes` bytes, so a prompt of more characters than the context times that cannot fit.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ..decoding.sampling import SamplingParams
from ..errors import HastelmError
from ..engine.jobs import Job
from .errors import APIError, api_error
from .schemas import ChatCompletionRequest, CompletionRequest, SamplingFields



@dataclass
class Prompt:
    ids: list[int]
    text: str           # what echo shows


def usable_vocab(llm: Any) -> int:
    """Token ids a request may name: those both the tokenizer and the model's embedding know."""
    return min(llm.tokenizer.vocab_size, llm.config.vocab_size)


@functools.cache
def longest_token_bytes(tokenizer: Any) -> int:
    """The most bytes (hence characters) any one token stands for."""
    return max(len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size))


def check_text_fits(llm: Any, chars: int, param: str) -> None:
    """Refuse, before rendering or tokenizing, text that cannot fit the context in any tokenization."""
    # x2: Unicode normalization may merge a character pair into one before tokenizing
    limit = 2 * llm.context_length * longest_token_bytes(llm.tokenizer)
    if chars > limit:
        raise APIError(400, f"the prompt has {chars} characters; this model's context of {llm.context_length} "
                            f"tokens cannot hold more than {limit}", param, "context_length_exceeded")


def chat_prompt(llm: Any, req: ChatCompletionRequest) -> Prompt:
    messages = [_message(m) for m in req.messages]
    check_text_fits(llm, sum(len(m["content"]) for m in messages), "messages")
    try:
        ids = llm.chat_prompt(messages)
    except HastelmError as exc:
        raise api_error(exc, "messages") from None
    return Prompt(ids, "")


def _message(m: Any) -> dict[str, Any]:
    content = m.content
    if isinstance(content, list):
        content = "".join(part.text for part in content)
    role = "system" if m.role == "developer" else m.role
    return {"role": role, "content": content or ""}


def prompt_items(req: CompletionRequest) -> list[str | list[int]]:
    """The prompts of a completion request: one text or id list, or a list of either."""
    p = req.prompt
    if isinstance(p, str) or (p and isinstance(p[0], int)):
        return [p]
    return list(p)


def completion_prompts(llm: Any, req: CompletionRequest) -> list[Prompt]:
    items = prompt_items(req)
    if not items:
        raise APIError(400, "prompt must not be empty", "prompt")
    vocab = usable_vocab(llm)
    check_text_fits(llm, sum(len(item) for item in items if isinstance(item, str)), "prompt")
    prompts = []
    for item in items:
        if not isinstance(item, str) and any(not 0 <= t < vocab for t in item):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
        try:
            ids = llm.encode_prompt(item)
        except HastelmError as exc:
            raise api_error(exc, "prompt") from None
        prompts.append(Prompt(ids, item if isinstance(item, str) else llm.tokenizer.decode(ids)))
    return prompts


def max_new_tokens(llm: Any, req: SamplingFields, prompt_len: int, requested: int | None,
                   default: int | None) -> int:
    """Tokens to generate: the request's value, else `default`, else what the context leaves."""
    room = llm.context_length - prompt_len
    if requested is None:
        return max(1, min(default or room, room))
    if requested > room:
        raise APIError(400, f"this model's context holds {llm.context_length} tokens; the prompt has "
                            f"{prompt_len} and max_tokens asks for {requested} more", "max_tokens",
                       "context_length_exceeded")
    return requested


def logit_bias(req: SamplingFields, vocab_size: int) -> dict[int, float]:
    """OpenAI's `{"token id": bias}` as integer ids within the vocabulary."""
    bias = {}
    for key, value in (req.logit_bias or {}).items():
        if not (key.isascii() and key.isdigit() and int(key) < vocab_size):
            raise APIError(400, f"logit_bias keys must be token ids in [0, {vocab_size})", "logit_bias")
        bias[int(key)] = value
    return bias


def sampling_params(req: SamplingFields, max_tokens: int, logprobs: int | None, seed_offset: int,
                    vocab_size: int) -> SamplingParams:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    temperature = 1.0 if req.temperature is None else req.temperature
    seed = None if req.seed is None else (req.seed + seed_offset) % 2**63   # choice i of n: seed + i
    try:
        return SamplingParams(
            max_tokens=max(1, max_tokens), temperature=temperature,
            top_k=max(0, req.top_k or 0), top_p=1.0 if req.top_p is None else req.top_p,
            min_p=req.min_p or 0.0, repetition_penalty=req.repetition_penalty,
            frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
            seed=seed, stop=stop, ignore_eos=req.ignore_eos, logprobs=logprobs,
            logit_bias=logit_bias(req, vocab_size))
    except HastelmError as exc:
        raise api_error(exc) from None


def make_jobs(prompts: list[Prompt], req: SamplingFields, *, vocab_size: int, max_tokens: list[int],
              logprobs: int | None, prompt_logprobs: int | None = None) -> list[Job]:
    """`n` jobs per prompt; choice index = prompt index * n + i, as OpenAI numbers them."""
    jobs = []
    for p, prompt in enumerate(prompts):
        for i in range(req.n):
            params = sampling_params(req, max_tokens[p], logprobs, i, vocab_size)
            jobs.append(Job(prompt.ids, params, deliver=_unset, index=p * req.n + i,
                            speculative=req.speculative, prompt_logprobs=prompt_logprobs,
                            score_only=max_tokens[p] == 0))
    return jobs


def _unset(job: Job, event: object) -> None:
    raise RuntimeError("job submitted without a consumer")
