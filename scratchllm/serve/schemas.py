"""The OpenAI API's request and response bodies, as pydantic models (they also make ``/openapi.json``).

Requests are validated to OpenAI's bounds, strictly: a string where a number belongs, a number
out of range, an unknown field or a lone UTF-16 surrogate is a 400 ``invalid_request_error``
(never silently coerced or ignored). Fields that OpenAI defines but that mean nothing for a local
text model (``user``, ``metadata``, ``store``, ...) are accepted and ignored; fields for features
this server does not have (``tools``, ``response_format`` other than text, ``suffix``, ...) are
refused when they ask for something, so a client never gets a silently wrong answer.

Extensions, as other OpenAI-compatible servers spell them: ``top_k`` (top level, or inside an
``extra_body`` object), and on ``/v1/completions`` a prompt given as token ids.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

#: OpenAI's limits (except where said).
MAX_STOP = 4
MAX_N = 16
MAX_TOP_LOGPROBS = 20
#: OpenAI allows 5 on /v1/completions; like vLLM this server allows as many as chat's top_logprobs
#: (the playground shows the top 10 alternatives of each token of a text continuation).
MAX_COMPLETION_LOGPROBS = 20


def _no_surrogates(text: str) -> str:
    """JSON may spell lone UTF-16 surrogates (``"\\ud800"``), which are not text in any encoding."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains an unpaired UTF-16 surrogate (not valid Unicode text)") from None
    return text


#: A string that is valid Unicode text.
Text = Annotated[str, AfterValidator(_no_surrogates)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]


class Strict(BaseModel):
    """Unknown fields are errors, numbers must be numbers and finite."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


# ============================================================================ requests
class StreamOptions(Strict):
    include_usage: bool | None = None


class ExtraBody(Strict):
    """Extension fields sent as a literal ``extra_body`` object (the ``openai`` client instead
    merges ``extra_body=...`` into the top level, which works as well)."""

    top_k: int | None = Field(None, ge=-1, le=1_000_000)


class TextPart(Strict):
    type: Literal["text"]
    text: Text


#: What the official client puts in an assistant message it returned (sent back as history) for
#: features this server lacks: accepted when empty. ``max_length=0`` puts that rule in the
#: published schema (``maxItems``/``maxProperties``), so a request valid by ``/openapi.json`` is valid.
Empty = Field(max_length=0, description="not supported by this server: only accepted when empty")


class _MessageFields(Strict):
    name: Text | None = None
    refusal: Text | None = None
    tool_calls: Annotated[list[dict[str, Any]], Empty] | None = None
    function_call: Annotated[dict[str, Any], Empty] | None = None
    audio: Annotated[dict[str, Any], Empty] | None = None
    annotations: list[dict[str, Any]] | None = None

    def text(self) -> str:
        content = getattr(self, "content", None)
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(part.text for part in content)


class ChatMessage(_MessageFields):
    """A system, developer or user message: it must say something."""

    role: Literal["system", "developer", "user"]
    content: Text | list[TextPart]


class AssistantMessage(_MessageFields):
    """An earlier answer sent back as history (content may be null, as the official client sends)."""

    role: Literal["assistant"]
    content: Text | list[TextPart] | None = None


#: One message of a chat request, told apart by its ``role``.
Message = Annotated[ChatMessage | AssistantMessage, Field(discriminator="role")]


class _Common(Strict):
    """The fields chat and completions requests share."""

    model: Text
    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy decoding")
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(
        None, ge=-1, le=1_000_000, description="extension: sample among the k most likely (-1 or 0: off)"
    )
    n: int | None = Field(None, ge=1, le=MAX_N)
    stop: Text | Annotated[list[Text], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: (
        dict[Annotated[str, Field(pattern=r"^[0-9]{1,10}$")], Annotated[float, Field(ge=-100, le=100)]] | None
    ) = Field(None, description="token id (as a string) -> bias added to its logit")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    extra_body: ExtraBody | None = None
    # Accepted and ignored: they change nothing a local model could do differently.
    user: Text | None = None
    metadata: dict[str, Text] | None = None
    store: bool | None = None
    service_tier: Text | None = None
    prompt_cache_key: Text | None = None
    safety_identifier: Text | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key in v or {}:
            if not key.isascii() or not key.isdigit() or len(key) > 10:
                raise ValueError(f"logit_bias keys must be token ids (got {key!r})")
        return v

    @model_validator(mode="after")
    def _stream_options(self) -> _Common:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def top_k_value(self) -> int | None:
        """``top_k`` from the top level or ``extra_body``; None when off."""
        k = self.top_k
        if k is None and self.extra_body is not None:
            k = self.extra_body.top_k
        return None if k is None or k <= 0 else k


class ResponseFormat(Strict):
    type: Literal["text"] = Field(description="only plain text: no JSON mode or schemas")


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1, description="deprecated by OpenAI: max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    # OpenAI fields for features this server lacks: fine while they ask for nothing (the schema
    # says so, so that every request valid by /openapi.json is one this server serves).
    tools: Annotated[list[dict[str, Any]], Empty] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None
    functions: Annotated[list[dict[str, Any]], Empty] | None = None
    function_call: Literal["none", "auto"] | None = None
    response_format: ResponseFormat | None = None
    modalities: Annotated[list[Literal["text"]], Field(min_length=1, max_length=1)] | None = None
    reasoning_effort: Text | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; give one of them")
        return self

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Common):
    """``POST /v1/completions`` (the legacy text-completion API; what lm-evaluation-harness uses)."""

    prompt: (
        Text
        | Annotated[list[Text], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    )
    max_tokens: int | None = Field(16, ge=0, description="0 with echo and logprobs scores the prompt only")
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    suffix: Text | None = None

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported by this server")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise ValueError("best_of other than n is not supported by this server")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompt(s) as a list: texts or token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]
        return list(p)


class TokenizeRequest(Strict):
    """``POST /tokenize``: a completions ``prompt`` or chat ``messages`` (one of them)."""

    model: Text | None = None
    prompt: Text | None = None
    messages: list[Message] | None = None
    #: accepted for vLLM / lm-evaluation-harness compatibility; scratchllm tokenizers add no BOS or
    #: other tokens of their own, so both values give the same ids.
    add_special_tokens: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        return self


class DetokenizeRequest(Strict):
    """``POST /detokenize``."""

    model: Text | None = None
    tokens: list[TokenId]


# ============================================================================ responses (for the docs)
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One ``data:`` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    meta: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    kind: str
    vocab_size: int
    eos_token: str | None
    eos_token_id: int | None
    bos_token: str | None
    pad_token: str | None
    special_tokens: dict[str, int]
    max_model_len: int
