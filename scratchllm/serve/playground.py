"""The playground: a web page at ``/`` that shows the served model thinking, and its JSON endpoints.

The page (``scratchllm/serve/static/``: plain HTML, CSS and JavaScript, no build step, nothing
fetched from the internet) talks to the OpenAI endpoints for generation and to these
``/scratchllm/...`` endpoints for everything else:

============================================  ===============================================
``GET  /scratchllm/info``                     the model card, the caps, whether a run is there
``POST /scratchllm/tokenize``                 tokens + ids, BPE merge replay
``POST /scratchllm/attention``                one layer's attention weights, every head
``POST /scratchllm/logit-lens``               each layer's top predictions at each position
``POST /scratchllm/sampling``                 the sampling pipeline on the real next-token logits
``GET  /scratchllm/embeddings``               2-D PCA of the token embeddings (``?step=`` a checkpoint)
``POST /scratchllm/neighbours``               a token's nearest neighbours (cosine)
``GET  /scratchllm/training``                 loss curves and the kept checkpoints
``POST /scratchllm/checkpoints/continue``     one prompt's greedy continuation at each checkpoint
============================================  ===============================================

The numbers come from :mod:`scratchllm.inspect` (what ``scratchllm inspect`` prints as well).
Every forward pass through the served model runs on the engine's thread between two batching
steps (:meth:`~scratchllm.serve.engine.Engine.call`), so it never overlaps a decoding step: the
engine's KV cache and its running requests are left exactly as they were. Earlier checkpoints
(embeddings atlas, checkpoint scrubber) are loaded into model objects of their own and run beside
the engine. Inputs are validated strictly
(400 otherwise) and capped: text length, tokens, layers, checkpoints.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from pydantic import Field

from scratchllm.errors import ScratchLLMError
from scratchllm.serve.schemas import Strict, Text

STATIC = Path(__file__).with_name("static")
#: The files the page is made of (nothing else under /playground/ is served).
FILES = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}

#: Caps: characters of text, tokens looked at.
MAX_TEXT = 8000
MAX_ATTENTION_TOKENS = 512
MAX_LENS_TOKENS = 128


class TextRequest(Strict):
    text: Annotated[Text, Field(min_length=1, max_length=MAX_TEXT)]


class AttentionRequest(TextRequest):
    layer: int | None = Field(None, ge=0, le=1000)


class LensRequest(TextRequest):
    top: int = Field(3, ge=1, le=10)


class SamplingRequest(TextRequest):
    temperature: float = Field(1.0, ge=0, le=5)
    top_k: int | None = Field(None, ge=0, le=1_000_000, description="0 or null: off")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    show: int = Field(20, ge=1, le=100)


class NeighboursRequest(Strict):
    token_id: int = Field(ge=0, le=2**31 - 1)
    k: int = Field(10, ge=1, le=100)
    step: int | None = Field(None, ge=0)


class ContinueRequest(Strict):
    prompt: Annotated[Text, Field(min_length=1, max_length=2000)]
    max_tokens: int = Field(24, ge=1, le=64)


class _Models:
    """Earlier checkpoints loaded for the embeddings atlas (the two most recent kept)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> Any:
        from scratchllm.load import load_model

        key = str(path)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        loaded = load_model(path, device="cpu")
        with self._lock:
            self._cache[key] = loaded
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return loaded


def add_playground(app: FastAPI, state: Any) -> None:
    """Register the page and the ``/scratchllm/...`` endpoints on ``app`` (``state``: the AppState)."""
    from scratchllm import inspect as ins
    from scratchllm.inspect import training as tr

    checkpoints = _Models()
    scrub_lock = threading.Lock()
    logits_cache: OrderedDict[str, Any] = OrderedDict()

    async def on_engine(fn: Callable[[], Any]) -> Any:
        """Run ``fn`` between two engine steps (see the module docstring) and await its result."""
        served = state.ready()
        return await asyncio.wrap_future(served.engine.call(fn))

    def page(name: str) -> FileResponse:
        return FileResponse(STATIC / name, media_type=FILES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return page("index.html")

    @app.get("/playground/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in FILES:
            raise ScratchLLMError(f"no such playground file: {name!r}")
        return page(name)

    @app.get("/scratchllm/info")
    async def info() -> dict[str, Any]:
        served = state.ready()
        model = served.engine.model
        summary = tr.training_summary(served.path)
        return {
            "model": state.settings.model_name,
            "meta": {k: v for k, v in served.meta.items() if k != "source"},
            "n_head": int(getattr(model.config, "n_head", 0)),
            "has_attention": hasattr(model, "attention_weights"),
            "run": summary["run"],
            "checkpoints": summary["checkpoints"],
            "caps": {
                "text_chars": MAX_TEXT,
                "attention_tokens": MAX_ATTENTION_TOKENS,
                "lens_tokens": MAX_LENS_TOKENS,
            },
            "auth": bool(state.settings.api_key),
        }

    def model_and_tok() -> tuple[Any, Any]:
        served = state.ready()
        return served.engine.model, served.tokenizer

    @app.post("/scratchllm/tokenize")
    async def tokenize(body: TextRequest) -> dict[str, Any]:
        _, tok = model_and_tok()
        return await asyncio.to_thread(ins.tokenize, tok, body.text, max_chars=MAX_TEXT)

    @app.post("/scratchllm/attention")
    async def attention(body: AttentionRequest) -> JSONResponse:
        model, tok = model_and_tok()
        if body.layer is not None and body.layer >= model.config.n_layer:
            raise ScratchLLMError(
                f"layer must be between 0 and {model.config.n_layer - 1} (got {body.layer})"
            )
        out = await on_engine(
            lambda: ins.attention(
                model, tok, body.text, layer=body.layer, max_tokens=MAX_ATTENTION_TOKENS, as_bytes=True
            )
        )
        return JSONResponse(out)

    @app.post("/scratchllm/logit-lens")
    async def lens(body: LensRequest) -> dict[str, Any]:
        model, tok = model_and_tok()
        return await on_engine(
            lambda: ins.logit_lens(model, tok, body.text, max_tokens=MAX_LENS_TOKENS, top=body.top)
        )

    @app.post("/scratchllm/sampling")
    async def sampling(body: SamplingRequest) -> dict[str, Any]:
        model, tok = model_and_tok()
        logits = logits_cache.get(body.text)
        if logits is None:  # sliders move often, the text rarely: keep the last few texts' logits
            logits = await on_engine(lambda: ins.next_token_logits(model, tok, body.text))
            logits_cache[body.text] = logits
            while len(logits_cache) > 8:
                logits_cache.popitem(last=False)
        return ins.sampling_pipeline(
            logits,
            tok,
            temperature=body.temperature,
            top_k=body.top_k or None,
            top_p=body.top_p,
            seed=body.seed,
            show=body.show,
        )

    def model_at(step: int | None) -> tuple[Any, Any]:
        if step is None:
            return model_and_tok()
        loaded = checkpoints.get(tr.checkpoint_path(state.ready().path, step))
        return loaded.model, loaded.tokenizer

    @app.get("/scratchllm/embeddings")
    async def embeddings(step: Annotated[int | None, Field(ge=0)] = None) -> JSONResponse:
        def work() -> dict[str, Any]:
            model, tok = model_at(step)
            return ins.embedding_map(model, tok) | {"step": step}

        return JSONResponse(await asyncio.to_thread(work))

    @app.post("/scratchllm/neighbours")
    async def neighbours(body: NeighboursRequest) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            model, tok = model_at(body.step)
            return ins.nearest_tokens(model, tok, body.token_id, k=body.k)

        return await asyncio.to_thread(work)

    @app.get("/scratchllm/training")
    async def training() -> dict[str, Any]:
        return await asyncio.to_thread(tr.training_summary, state.ready().path)

    @app.post("/scratchllm/checkpoints/continue")
    async def continue_(body: ContinueRequest) -> dict[str, Any]:
        path = state.ready().path

        def work() -> dict[str, Any]:
            # Other weights in their own model objects: nothing is shared with the engine, so this
            # runs beside it (not on its thread, where loading 8 checkpoints would pause serving);
            # one scrub at a time.
            with scrub_lock:
                return ins.checkpoint_continuations(path, body.prompt, max_tokens=body.max_tokens)

        return await asyncio.to_thread(work)
