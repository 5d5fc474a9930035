"""Turn a validated API request into scheduler jobs: prompt token ids, sampling parameters and
the per-request options (echo scoring, logprobs, speculative proposer). Every user mistake found
here becomes a 400 naming the offending field."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..decoding.sampling import SamplingParams
from ..errors import HastelmError
from ..scheduler import Job
from .errors import APIError, api_error
from .schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

MAX_STOP = 16


@dataclass
class Prompt:
    ids: list[int]
    text: str           # what echo shows


def chat_prompt(llm: Any, req: ChatCompletionRequest) -> Prompt:
    messages = [_message(m) for m in req.messages]
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


def completion_prompts(llm: Any, req: CompletionRequest) -> list[Prompt]:
    p = req.prompt
    if isinstance(p, str) or (isinstance(p, list) and p and isinstance(p[0], int)):
        items = [p]
    else:
        items = list(p)
    if not items:
        raise APIError(400, "prompt must not be empty", "prompt")
    vocab = min(llm.tokenizer.vocab_size, llm.config.vocab_size)
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


def sampling_params(req: SamplingFields, max_tokens: int, logprobs: int | None, seed_offset: int) -> SamplingParams:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP:
        raise APIError(400, f"at most {MAX_STOP} stop strings", "stop")
    temperature = 1.0 if req.temperature is None else req.temperature
    seed = None if req.seed is None else (req.seed + seed_offset) % 2**63   # choice i of n: seed + i
    try:
        return SamplingParams(
            max_tokens=max(1, max_tokens), temperature=temperature,
            top_k=max(0, req.top_k or 0), top_p=1.0 if req.top_p is None else req.top_p,
            min_p=req.min_p or 0.0, repetition_penalty=req.repetition_penalty,
            frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
            seed=seed, stop=stop, ignore_eos=req.ignore_eos, logprobs=logprobs)
    except HastelmError as exc:
        raise api_error(exc) from None


def make_jobs(prompts: list[Prompt], req: SamplingFields, *, max_tokens: list[int], logprobs: int | None,
              prompt_logprobs: int | None = None) -> list[Job]:
    """`n` jobs per prompt; choice index = prompt index * n + i, as OpenAI numbers them."""
    jobs = []
    for p, prompt in enumerate(prompts):
        for i in range(req.n):
            params = sampling_params(req, max_tokens[p], logprobs, i)
            jobs.append(Job(prompt.ids, params, deliver=_unset, index=p * req.n + i,
                            speculative=req.speculative, prompt_logprobs=prompt_logprobs,
                            score_only=max_tokens[p] == 0))
    return jobs


def _unset(job: Job, event: object) -> None:
    raise RuntimeError("job submitted without a consumer")
