"""Request and response bodies of the OpenAI-compatible API (the subset hastelm implements).

Ranges live here so /openapi.json documents them and bad values are rejected before any work.
Requests are validated strictly ("5" is not a number, "yes" not a boolean, true not a token id);
unknown fields are ignored, as OpenAI clients send some hastelm has no use for, except the ones
that would change the answer's meaning (tools, response_format), which are refused until built.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

MAX_N = 128
SEED_RANGE = dict(ge=-(2**63), le=2**63 - 1)


MAX_LOGIT_BIAS = 1024


def _valid_unicode(text: str) -> str:
    # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer or encoder accepts
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains invalid Unicode (a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]


class APIModel(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class RequestModel(APIModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)


class StreamOptions(RequestModel):
    include_usage: bool = False


class SamplingFields(RequestModel):
    model: Text | None = Field(None, description="served model id (see /v1/models); optional")
    max_tokens: int | None = Field(None, ge=0, description="tokens to generate; 0 only with echo (scoring)")
    temperature: float | None = Field(None, ge=0, le=100, description="0 = greedy; default 1")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="-1 or 0 = off")
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, ge=0.01, le=100)
    stop: Text | list[Text] | None = Field(None, description="up to 16 stop strings of up to 256 characters")
    seed: int | None = Field(None, **SEED_RANGE)
    n: int = Field(1, ge=1, le=MAX_N, description="choices per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="keep generating past end-of-sequence tokens")
    logit_bias: dict[Text, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, max_length=MAX_LOGIT_BIAS, description="token id (as a string) -> bias in [-100, 100] added to its logit")
    speculative: Text | None = Field(
        None, description="hastelm extension: one of the speculative methods this server enabled at "
                          "start-up (GET /v1/models lists them); none = plain decoding")
    user: Text | None = None
    # accepted so clients get a clear 400 instead of an answer that silently ignores them
    tools: list[JsonValue] | None = None
    tool_choice: JsonValue = None
    functions: list[JsonValue] | None = None
    function_call: JsonValue = None
    response_format: JsonValue = None

    def unsupported_field(self) -> str | None:
        """The first field that asks for something this server does not do yet."""
        if self.tools or self.functions:
            return "tools" if self.tools else "functions"
        if self.tool_choice not in (None, "none") or self.function_call not in (None, "none"):
            return "tool_choice" if self.tool_choice not in (None, "none") else "function_call"
        fmt = self.response_format
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
            return "response_format"
        return None


class TextPart(RequestModel):
    type: Literal["text"]
    text: Text


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text] | list[int] | list[list[int]] = Field(
        ..., description="text, token ids, or a list of either (one completion each)")
    echo: bool = Field(False, description="prepend the prompt; with logprobs it is scored too")
    logprobs: int | None = Field(None, ge=0, le=20)


# ---- responses --------------------------------------------------------------------------------
class Usage(APIModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(APIModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(APIModel):
    content: list[ChatTokenLogprob]


class AssistantMessage(APIModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(APIModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(APIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(APIModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(APIModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(APIModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(APIModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(APIModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(APIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(APIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hastelm"
    max_model_len: int
    speculative: list[str] = Field(default_factory=list, description="methods a request may name")


class ModelList(APIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(APIModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(APIModel):
    error: ErrorDetail
