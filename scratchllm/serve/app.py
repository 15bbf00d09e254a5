"""The OpenAI-compatible web app (FastAPI): routes, errors, streaming, auth, limits.

=========================  =========================================================
``POST /v1/chat/completions``  messages → a reply (the model's chat template; ``n``, stream)
``POST /v1/completions``       prompt(s) → continuations (``echo`` + ``logprobs`` scores a text)
``GET  /v1/models``            the served model, with ``meta`` (architecture, sizes, template…)
``GET  /health``               200 when ready, 503 while the model loads
``GET  /metrics``              Prometheus text (:mod:`scratchllm.serve.metrics`)
``POST /tokenize``             a prompt or messages → token ids (exactly what generation sees)
``POST /detokenize``           token ids → text
=========================  =========================================================

Every error is OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``, and bad input
is always a 4xx: FastAPI's 422 for a body that fails validation becomes OpenAI's 400
``invalid_request_error``; a prompt longer than the context is ``context_length_exceeded``; a
full queue is 429 ``rate_limit_exceeded`` with ``Retry-After``; a wrong key is 401
``invalid_api_key``. An error after a stream has started arrives as ``data: {"error": ...}``.

Requests become :class:`~scratchllm.serve.engine.GenerationRequest` objects for the batching
engine; its events come back from the engine's thread through ``loop.call_soon_threadsafe`` into
an ``asyncio.Queue`` per API call. A client that goes away (stream or not) is noticed within a
quarter of a second and its request cancelled, which frees its slots at the engine's next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchllm.errors import ScratchLLMError
from scratchllm.serve.engine import (
    Delta,
    Done,
    Engine,
    Failed,
    Finish,
    GenerationRequest,
    PromptLogprobs,
    QueueFull,
    SamplingParams,
    TokenInfo,
)
from scratchllm.serve.metrics import CONTENT_TYPE, ServerMetrics
from scratchllm.serve.prompts import ChatFormat, Message, chat_prompt_ids
from scratchllm.serve.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)

log = logging.getLogger("scratchllm.serve")

#: Temperatures below this decode greedily: dividing logits by ~0 overflows float32, and the
#: distribution is the argmax's anyway.
GREEDY_BELOW = 1e-4
#: How often a waiting handler checks that its client is still there.
POLL_S = 0.25
#: The logprob reported for a token the model found impossible (JSON has no -Infinity).
MIN_LOGPROB = -9999.0
#: Paths that need no API key.
OPEN_PATHS = ("/health", "/metrics", "/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect", "/")
#: The playground's static files (HTML, CSS, JS: no data; its API calls carry the key).
OPEN_PREFIXES = ("/playground/",)


# ============================================================================ state
@dataclass
class ServeSettings:
    """What the server operator chose (``scratchllm serve`` flags)."""

    #: the id clients put in ``model`` (and /v1/models lists).
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    #: seconds a request may take from arrival to its last token (None: no limit).
    request_timeout: float | None = 600.0
    #: the ``Retry-After`` seconds of a 429.
    retry_after: int = 1
    #: read special-token strings in ``/v1/completions`` prompts and ``/tokenize`` texts as the
    #: special tokens (``--allow-special``); chat messages are ordinary text whatever this says.
    allow_special: bool = False


@dataclass
class ServedModel:
    """The loaded model as the app uses it."""

    engine: Engine
    tokenizer: Any
    chat_format: ChatFormat
    meta: dict[str, Any]
    #: where the model was loaded from (the playground's training view reads the run there).
    path: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def eos_ids(self) -> frozenset[int]:
        eot = self.tokenizer.special_tokens.get("<|endoftext|>")
        return frozenset() if eot is None else frozenset([eot])


class AppState:
    """Loading → ready (or failed); the app answers 503 until the model is there."""

    def __init__(self, settings: ServeSettings, metrics: ServerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ServerMetrics()
        self.served: ServedModel | None = None
        self.load_error: str | None = None

    def set_ready(self, served: ServedModel) -> None:
        e = served.engine
        self.metrics.watch(lambda: e.running, lambda: e.waiting, lambda: e.slots_in_use)
        self.metrics.slots_total.set(e.max_batch)
        self.served = served

    def ready(self) -> ServedModel:
        if self.served is None:
            status = "failed to load" if self.load_error else "still loading"
            raise APIError(503, f"the model is {status}", type="service_unavailable", code="model_not_ready")
        return self.served


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = "invalid_value",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class _ClientGone(Exception):
    """The client disconnected while its request ran."""


# ============================================================================ guard middleware
class Guard:
    """ASGI middleware in front of the app: the API key, then the body size limit.

    A body over the limit is read to its end (so the client can read the answer), up to 16 times
    the limit, and answered with 413; nothing of it reaches the app.
    """

    def __init__(self, app: Any, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = self.settings.api_key
        path = scope.get("path", "")
        if key and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode("utf-8", "replace"), key.encode("utf-8")):
                err = APIError(
                    401,
                    "Incorrect API key provided; send it as 'Authorization: Bearer KEY'",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await err.response()(scope, receive, send)
                return
        limit = self.settings.max_body_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        declared = int(length) if length and length.isdigit() else None
        chunks: list[bytes] = []
        size = 0
        too_big = declared is not None and declared > limit
        more = scope.get("method") in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                too_big = True
                chunks.clear()
            elif not too_big:
                chunks.append(body)
            more = message.get("more_body", False) and size <= 16 * limit
        if too_big:
            err = APIError(
                413,
                f"the request body exceeds the server's limit of {limit} bytes (--max-body-mb)",
                code="request_too_large",
            )
            await err.response()(scope, receive, send)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ============================================================================ helpers
def _sse(obj: Any) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def _lp(x: float | None) -> float | None:
    return None if x is None else (x if math.isfinite(x) and x > MIN_LOGPROB else MIN_LOGPROB)


def _token_bytes(tokenizer: Any, token: int) -> bytes:
    own = getattr(tokenizer, "token_bytes", None)
    return own(token) if callable(own) else tokenizer.decode([token]).encode("utf-8")


def _token_label(tokenizer: Any, token: int) -> str:
    """How a token reads on its own; a fragment of a character is written ``bytes:\\xNN...``
    (OpenAI's spelling), so different fragments stay distinguishable."""
    raw = _token_bytes(tokenizer, token)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _chat_logprob(tokenizer: Any, info: TokenInfo) -> dict[str, Any]:
    return {
        "token": info.text,
        "logprob": _lp(info.logprob),
        "bytes": list(_token_bytes(tokenizer, info.id)),
        "top_logprobs": [
            {
                "token": _token_label(tokenizer, t),
                "logprob": _lp(lp),
                "bytes": list(_token_bytes(tokenizer, t)),
            }
            for t, lp in info.top
        ],
    }


def _completion_logprobs(
    tokenizer: Any, infos: list[TokenInfo], offset: int, first_prompt: bool = False
) -> dict[str, Any]:
    """The legacy ``logprobs`` object for some tokens whose text starts at ``offset``."""
    tokens, lps, tops, offsets = [], [], [], []
    for k, info in enumerate(infos):
        tokens.append(info.text)
        lps.append(_lp(info.logprob))
        none = first_prompt and k == 0
        tops.append(None if none else {_token_label(tokenizer, t): _lp(lp) for t, lp in info.top})
        offsets.append(offset)
        offset += len(info.text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _fingerprint() -> str:
    from scratchllm import __version__

    return f"fp_scratchllm_{__version__}"


# ============================================================================ the app
def create_app(state: AppState) -> FastAPI:
    """The FastAPI application around ``state`` (whose model may still be loading)."""
    settings = state.settings
    metrics = state.metrics
    # Prompt text is ordinary text unless the operator chose --allow-special (never chat messages).
    prompt_specials = "all" if settings.allow_special else ()
    app = FastAPI(
        title="scratchllm serve",
        summary="OpenAI-compatible API for a model trained with scratchllm",
        version=_fingerprint().removeprefix("fp_scratchllm_"),
    )
    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 503)
    }

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return _from_validation(err).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 400: "invalid_json", 413: "request_too_large"}
        message = str(err.detail)
        if err.status_code == 400 and "parsing the body" in message:
            message = "We could not parse the JSON body of your request (is it valid UTF-8 JSON?)"
        return APIError(
            err.status_code, message, code=codes.get(err.status_code), headers=err.headers
        ).response()

    @app.exception_handler(ScratchLLMError)
    async def _user_error(request: Request, err: ScratchLLMError) -> JSONResponse:
        return APIError(400, str(err)).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return APIError(
            500, f"internal error: {type(err).__name__}", type="server_error", code="internal_error"
        ).response()

    # ------------------------------------------------------------------ plain endpoints
    @app.get("/health", responses={503: {"description": "the model is still loading (or failed to)"}})
    async def health() -> JSONResponse:
        if state.served is not None:
            return JSONResponse({"status": "ok"})
        if state.load_error:
            return JSONResponse({"status": "error", "message": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def card(served: ServedModel) -> dict[str, Any]:
        return {
            "id": settings.model_name,
            "object": "model",
            "created": served.created,
            "owned_by": "scratchllm",
            "meta": served.meta,
        }

    @app.get("/v1/models", response_model=ModelList, responses=error_responses)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card(state.ready())]}

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=error_responses)
    async def model(model_id: str) -> dict[str, Any]:
        served = state.ready()
        check_model(model_id, param=None)
        return card(served)

    def check_model(name: str | None, param: str | None = "model") -> None:
        if name is not None and name != settings.model_name:
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves '{settings.model_name}'",
                code="model_not_found",
                param=param,
            )

    @app.post("/tokenize", response_model=TokenizeResponse, responses=error_responses)
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        served = state.ready()
        check_model(body.model)
        if body.messages is not None:
            ids = chat_ids(served, body)
        else:
            ids = served.tokenizer.encode(body.prompt, allowed_special=prompt_specials)
        return {"tokens": ids, "count": len(ids), "max_model_len": served.engine.context_length}

    @app.get("/tokenizer_info", response_model=TokenizerInfo, responses=error_responses)
    async def tokenizer_info() -> dict[str, Any]:
        """What a remote-tokenizer client (lm-evaluation-harness's ``local-completions``) needs."""
        served = state.ready()
        tok = served.tokenizer
        eot = tok.special_tokens.get("<|endoftext|>")
        return {
            "kind": getattr(tok, "kind", type(tok).__name__),
            "vocab_size": tok.vocab_size,
            "eos_token": None if eot is None else "<|endoftext|>",
            "eos_token_id": eot,
            "bos_token": None,
            "pad_token": None,
            "special_tokens": dict(tok.special_tokens),
            "max_model_len": served.engine.context_length,
        }

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=error_responses)
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        served = state.ready()
        check_model(body.model)
        vocab = served.engine.vocab_size
        bad = [t for t in body.tokens if t >= vocab]
        if bad:
            raise APIError(
                400, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="tokens"
            )
        return {"prompt": served.tokenizer.decode(body.tokens)}

    # ------------------------------------------------------------------ generation
    def chat_ids(served: ServedModel, body: ChatCompletionRequest | TokenizeRequest) -> list[int]:
        messages = [Message(m.role, m.text()) for m in body.messages or []]
        return chat_prompt_ids(served.tokenizer, served.chat_format, messages)

    def generation(
        served: ServedModel,
        body: ChatCompletionRequest | CompletionRequest,
        ids: list[int],
        *,
        max_tokens: int | None,
        default_max: int | None,
        stop: list[str],
        logprobs: int | None,
        prompt_logprobs: int | None,
        what: str,
    ) -> GenerationRequest:
        ctx = served.engine.context_length
        p = len(ids)
        if p == 0:
            raise APIError(400, f"the {what} is empty", param=what)
        if p > ctx:
            raise APIError(
                400,
                f"This model's maximum context length is {ctx} tokens, however your {what} has {p} tokens. "
                f"Please shorten it.",
                code="context_length_exceeded",
                param=what,
            )
        if max_tokens is None:
            max_tokens = ctx - p if default_max is None else min(default_max, ctx - p)
            if max_tokens < 1 and prompt_logprobs is None:
                raise APIError(
                    400,
                    f"This model's maximum context length is {ctx} tokens and your {what} has {p} tokens: "
                    "no room is left for a completion.",
                    code="context_length_exceeded",
                    param=what,
                )
        elif p + max_tokens > ctx:
            raise APIError(
                400,
                f"This model's maximum context length is {ctx} tokens, however you requested "
                f"{p + max_tokens} tokens ({p} in your {what}, {max_tokens} for the completion). Please "
                f"reduce your {what} "
                "or the completion length.",
                code="context_length_exceeded",
                param="max_tokens",
            )
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = body.top_p
        top_k = body.top_k_value()
        if top_p == 0:  # the smallest nucleus: the most likely token only
            top_p, top_k = None, 1
        elif top_p == 1:
            top_p = None
        vocab = served.engine.vocab_size
        bias: dict[int, float] = {}
        for key, value in (body.logit_bias or {}).items():
            if int(key) >= vocab:
                raise APIError(
                    400,
                    f"logit_bias: token id {key} is outside the vocabulary (0..{vocab - 1})",
                    param="logit_bias",
                )
            bias[int(key)] = value
        sampling = SamplingParams(
            temperature=0.0 if temperature < GREEDY_BELOW else temperature,
            top_p=top_p,
            top_k=top_k,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            logit_bias=bias,
            seed=None if body.seed is None else body.seed % 2**64,
        )
        return GenerationRequest(
            prompt_ids=ids,
            max_tokens=max_tokens,
            sampling=sampling,
            n=body.n or 1,
            stop=[s for s in stop if s],
            stop_ids=served.eos_ids,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            timeout=settings.request_timeout,
        )

    def submit(served: ServedModel, requests: list[GenerationRequest]) -> tuple[asyncio.Queue, list[Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emitter(i: int) -> Callable[[Any], None]:
            return lambda ev: loop.call_soon_threadsafe(queue.put_nowait, (i, ev))

        try:
            handles = served.engine.submit_all([(r, emitter(i)) for i, r in enumerate(requests)])
        except QueueFull as err:
            metrics.outcomes.labels("rejected_queue_full").inc()
            raise APIError(
                429,
                f"{err}; retry later",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(settings.retry_after)},
            ) from None
        return queue, handles

    async def next_event(queue: asyncio.Queue, request: Request) -> tuple[int, Any]:
        """The next engine event; every POLL_S (events flowing or not) check the client is there."""
        state_ = request.state
        while True:
            now = time.monotonic()
            if now - getattr(state_, "checked", 0.0) >= POLL_S:
                state_.checked = now
                if await request.is_disconnected():
                    raise _ClientGone()
            try:
                return await asyncio.wait_for(queue.get(), POLL_S)
            except asyncio.TimeoutError:
                continue

    def failure(ev: Failed) -> APIError:
        if ev.code == "timeout":
            return APIError(408, ev.message, type="timeout_error", code="request_timeout")
        if ev.code == "shutdown":
            return APIError(503, ev.message, type="service_unavailable", code="shutting_down")
        return APIError(500, ev.message, type="server_error", code=ev.code)

    async def run(request: Request, served: ServedModel, gens: list[GenerationRequest]) -> dict[str, Any]:
        """Wait for every event of a non-streamed call; return what the response needs."""
        queue, handles = submit(served, gens)
        out: dict[str, Any] = {"choices": {}, "prompts": {}, "prompt_tokens": 0, "completion_tokens": 0}
        remaining = len(gens)
        try:
            while remaining:
                i, ev = await next_event(queue, request)
                if isinstance(ev, Delta):
                    out["choices"].setdefault((i, ev.choice), {"tokens": []})["tokens"] += ev.tokens
                elif isinstance(ev, Finish):
                    entry = out["choices"].setdefault((i, ev.choice), {"tokens": []})
                    entry.update(text=ev.text, reason=ev.reason)
                elif isinstance(ev, PromptLogprobs):
                    out["prompts"][i] = ev
                elif isinstance(ev, Done):
                    out["prompt_tokens"] += ev.prompt_tokens
                    out["completion_tokens"] += ev.completion_tokens
                    remaining -= 1
                elif isinstance(ev, Failed):
                    raise failure(ev)
        finally:
            for h in handles:
                h.cancel()
        return out

    def respond(
        obj: str, rid: str, created: int, choices: list, out: dict[str, Any], t0: float
    ) -> JSONResponse:
        """A whole (non-streamed) completion object."""
        metrics.latency.observe(time.monotonic() - t0)
        body = {"id": rid, "object": obj, "created": created, "model": settings.model_name}
        body["system_fingerprint"] = _fingerprint()
        body["choices"] = choices
        body["usage"] = _usage(out["prompt_tokens"], out["completion_tokens"])
        return JSONResponse(body)

    def gone_response() -> Response:
        metrics.outcomes.labels("client_disconnected").inc()
        return Response(status_code=499)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=error_responses)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        t0 = time.monotonic()
        served = state.ready()
        check_model(body.model)
        try:
            ids = chat_ids(served, body)
        except ScratchLLMError as err:
            raise APIError(400, str(err), param="messages") from None
        gen = generation(
            served,
            body,
            ids,
            max_tokens=body.max_new_tokens(),
            default_max=None,
            stop=body.stop_list() + list(served.chat_format.stop),
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            prompt_logprobs=None,
            what="messages",
        )
        rid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            queue, handles = submit(served, [gen])
            stream = chat_stream(request, served, queue, handles, gen, rid, created, include_usage, t0)
            return StreamingResponse(
                stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        try:
            out = await run(request, served, [gen])
        except _ClientGone:
            return gone_response()
        choices = []
        for (_, j), entry in sorted(out["choices"].items()):
            lp = None
            if body.logprobs:
                lp = {
                    "content": [_chat_logprob(served.tokenizer, t) for t in entry["tokens"]],
                    "refusal": None,
                }
            choices.append(
                {
                    "index": j,
                    "message": {"role": "assistant", "content": entry["text"], "refusal": None},
                    "logprobs": lp,
                    "finish_reason": entry["reason"],
                }
            )
        return respond("chat.completion", rid, created, choices, out, t0)

    async def chat_stream(
        request: Request,
        served: ServedModel,
        queue: asyncio.Queue,
        handles: list[Any],
        gen: GenerationRequest,
        rid: str,
        created: int,
        include_usage: bool,
        t0: float,
    ) -> AsyncIterator[str]:
        base = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": settings.model_name,
        }
        base["system_fingerprint"] = _fingerprint()
        with_usage = {"usage": None} if include_usage else {}

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> str:
            choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
            return _sse({**base, "choices": [choice], **with_usage})

        try:
            for j in range(gen.n):
                yield chunk(j, {"role": "assistant", "content": ""})
            while True:
                try:
                    _, ev = await next_event(queue, request)
                except _ClientGone:
                    metrics.outcomes.labels("client_disconnected").inc()
                    return
                if isinstance(ev, Delta):
                    lp = None
                    if gen.logprobs is not None and ev.tokens:
                        lp = {
                            "content": [_chat_logprob(served.tokenizer, t) for t in ev.tokens],
                            "refusal": None,
                        }
                    if ev.text or lp is not None:
                        yield chunk(ev.choice, {"content": ev.text}, lp=lp)
                elif isinstance(ev, Finish):
                    yield chunk(ev.choice, {}, ev.reason)
                elif isinstance(ev, Done):
                    if include_usage:
                        yield _sse(
                            {**base, "choices": [], "usage": _usage(ev.prompt_tokens, ev.completion_tokens)}
                        )
                    yield "data: [DONE]\n\n"
                    metrics.latency.observe(time.monotonic() - t0)
                    return
                elif isinstance(ev, Failed):
                    yield _sse(failure(ev).body())
                    yield "data: [DONE]\n\n"
                    return
        finally:
            for h in handles:
                h.cancel()

    @app.post("/v1/completions", response_model=Completion, responses=error_responses)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        t0 = time.monotonic()
        served = state.ready()
        check_model(body.model)
        tok = served.tokenizer
        prompts = body.prompts()
        if len(prompts) > max(1, served.engine.max_queue):
            raise APIError(
                400,
                f"{len(prompts)} prompts in one request; this server takes at most "
                f"{max(1, served.engine.max_queue)} (its --max-queue)",
                param="prompt",
            )
        explicit = "max_tokens" in body.model_fields_set and body.max_tokens is not None
        gens = []
        for p in prompts:
            try:
                ids = tok.encode(p, allowed_special=prompt_specials) if isinstance(p, str) else list(p)
            except ScratchLLMError as err:
                raise APIError(400, str(err), param="prompt") from None
            if not ids and tok.special_tokens.get("<|endoftext|>") is not None:
                ids = [tok.eot_id]  # OpenAI: an empty prompt starts a new document
            gens.append(
                generation(
                    served,
                    body,
                    ids,
                    max_tokens=body.max_tokens if explicit else None,
                    default_max=16,
                    stop=body.stop_list(),
                    logprobs=body.logprobs,
                    prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None,
                    what="prompt",
                )
            )
        rid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            queue, handles = submit(served, gens)
            stream = completion_stream(
                request, served, queue, handles, gens, body, rid, created, include_usage, t0
            )
            return StreamingResponse(
                stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        try:
            out = await run(request, served, gens)
        except _ClientGone:
            return gone_response()
        choices = []
        n = gens[0].n
        for (i, j), entry in sorted(out["choices"].items()):
            prefix, prompt_infos = "", []
            if body.echo:
                pl = out["prompts"].get(i)
                prefix = pl.text if pl is not None else tok.decode(gens[i].prompt_ids)
                prompt_infos = pl.tokens if pl is not None else []
            lp = None
            if body.logprobs is not None:
                lp = _completion_logprobs(tok, prompt_infos, 0, first_prompt=True)
                more = _completion_logprobs(tok, entry["tokens"], len(prefix))
                for key in lp:
                    lp[key] += more[key]
            choices.append(
                {
                    "index": i * n + j,
                    "text": prefix + entry["text"],
                    "logprobs": lp,
                    "finish_reason": entry["reason"],
                }
            )
        return respond("text_completion", rid, created, choices, out, t0)

    async def completion_stream(
        request: Request,
        served: ServedModel,
        queue: asyncio.Queue,
        handles: list[Any],
        gens: list[GenerationRequest],
        body: CompletionRequest,
        rid: str,
        created: int,
        include_usage: bool,
        t0: float,
    ) -> AsyncIterator[str]:
        tok = served.tokenizer
        base = {"id": rid, "object": "text_completion", "created": created, "model": settings.model_name}
        base["system_fingerprint"] = _fingerprint()
        with_usage = {"usage": None} if include_usage else {}
        n = gens[0].n
        offsets: dict[int, int] = {}  # characters of each choice's text sent so far
        remaining = len(gens)
        prompt_tokens = completion_tokens = 0

        def chunk(index: int, text: str, finish: str | None = None, lp: Any = None) -> str:
            choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
            return _sse({**base, "choices": [choice], **with_usage})

        try:
            if body.echo:  # without prompt logprobs the prompt's text is known at once
                for i, g in enumerate(gens):
                    if g.prompt_logprobs is None:
                        text = tok.decode(g.prompt_ids)
                        for j in range(n):
                            offsets[i * n + j] = len(text)
                            yield chunk(i * n + j, text)
            while remaining:
                try:
                    i, ev = await next_event(queue, request)
                except _ClientGone:
                    metrics.outcomes.labels("client_disconnected").inc()
                    return
                if isinstance(ev, PromptLogprobs):
                    for j in range(n):
                        lp = _completion_logprobs(tok, ev.tokens, 0, first_prompt=True)
                        offsets[i * n + j] = len(ev.text)
                        yield chunk(i * n + j, ev.text, lp=lp)
                elif isinstance(ev, Delta):
                    k = i * n + ev.choice
                    lp = None
                    if body.logprobs is not None:
                        lp = _completion_logprobs(tok, ev.tokens, offsets.get(k, 0))
                    offsets[k] = offsets.get(k, 0) + len(ev.text)
                    if ev.text or (lp is not None and ev.tokens):
                        yield chunk(k, ev.text, lp=lp)
                elif isinstance(ev, Finish):
                    yield chunk(i * n + ev.choice, "", ev.reason)
                elif isinstance(ev, Done):
                    remaining -= 1
                    prompt_tokens += ev.prompt_tokens
                    completion_tokens += ev.completion_tokens
                elif isinstance(ev, Failed):
                    yield _sse(failure(ev).body())
                    yield "data: [DONE]\n\n"
                    return
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
            yield "data: [DONE]\n\n"
            metrics.latency.observe(time.monotonic() - t0)
        finally:
            for h in handles:
                h.cancel()

    from scratchllm.serve.playground import add_playground

    add_playground(app, state)
    return app


def _from_validation(err: RequestValidationError) -> APIError:
    """FastAPI's 422 (a list of pydantic errors) → OpenAI's 400 for the first of them."""
    errors = err.errors()
    # A union reports every member's complaint; "too many items" says more than "not a string".
    meaningful = [e for e in errors if not str(e.get("type", "")).endswith("_type")]
    first = (meaningful or errors or [{"type": "value_error", "loc": (), "msg": "invalid request"}])[0]
    loc = [x for x in first.get("loc", ()) if x != "body"]
    if "[key]" in loc:  # a bad key of an object (a logit_bias token id): name the object
        loc = loc[: loc.index("[key]") - 1]
    if first.get("type") == "union_tag_invalid":  # a message's role picks its kind: name the role
        loc.append(str((first.get("ctx") or {}).get("discriminator", "")).strip("'"))
    # pydantic names the union member it tried ("str", "list[int]", "function-after[...]"): drop those
    names = [
        str(x) for x in loc if isinstance(x, int) or (str(x).isidentifier() and str(x) not in _TYPE_WORDS)
    ]
    param = ".".join(names) or None
    kind = first.get("type", "")
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request: " + msg, code="invalid_json")
    if kind == "missing":
        return APIError(
            400, f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
        )
    if kind == "extra_forbidden":
        return APIError(
            400, f"Unrecognized request argument supplied: {param}", code="unknown_parameter", param=param
        )
    if kind.endswith("_type") or kind in ("model_type", "model_attributes_type", "dict_type", "list_type"):
        return APIError(400, f"Invalid type for '{param}': {msg}", code="invalid_type", param=param)
    where = f"'{param}'" if param else "the request"
    return APIError(400, f"Invalid value for {where}: {msg}", code="invalid_value", param=param)


_TYPE_WORDS = {"str", "int", "float", "bool", "list", "dict", "none", "null"}
