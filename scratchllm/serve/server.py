"""Run the server: bind the port at once, load the model in the background, then serve.

``/health`` answers 503 while the model loads and 200 once the engine runs. A model that fails to
load stops the server, and :func:`serve` raises the loader's error (the CLI prints it as one line).
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.serve.app import AppState, ServedModel, ServeSettings, create_app
from scratchllm.serve.engine import Engine
from scratchllm.serve.prompts import chat_format_for


@dataclass
class EngineOptions:
    """How the batching engine is sized (``scratchllm serve`` flags)."""

    max_batch: int = 16
    max_queue: int = 64
    prefill_chunk: int = 512
    int8: bool = False


def checkpoint_step(path: str | Path) -> int | None:
    """The training step of the weights at ``path``: a checkpoint's manifest, or a run directory's
    newest checkpoint (``RUN/model.safetensors`` is a copy of it); None when unknown."""
    from scratchllm.runs import MANIFEST, MODEL_FILE, list_checkpoints

    p = Path(path)
    try:
        if p.is_dir() and (p / MANIFEST).is_file():
            step = json.loads((p / MANIFEST).read_text(encoding="utf-8")).get("step")
            return step if isinstance(step, int) else None
        if p.is_file():
            if p.name != MODEL_FILE:
                return None  # e.g. best.safetensors: not necessarily the newest step
            p = p.parent
        found = list_checkpoints(p)
    except (OSError, ValueError):
        return None
    return found[-1][0] if found else None


def prepare(loaded: Any, path: str | Path, options: EngineOptions, state: AppState) -> ServedModel:
    """Turn a loaded model into what the app serves: adapters folded in, optionally int8, an engine."""
    from scratchllm.architectures import get_architecture
    from scratchllm.model.lora import lora_layers, merge_lora

    model = loaded.model
    record = get_architecture(loaded.arch)
    parameters = int(model.num_params())
    if record.has_lora and lora_layers(model):
        # Inference only: fold every adapter into its weight (a tied head gets its own copy).
        merge_lora(model, untie=True)
    device = next(model.parameters()).device
    if options.int8:
        from scratchllm.model.quantize import quantize_int8

        model = quantize_int8(model)
    model.eval()
    engine = Engine(
        model,
        loaded.tokenizer,
        max_batch=options.max_batch,
        max_queue=options.max_queue,
        prefill_chunk=options.prefill_chunk,
        observer=state.metrics,
    )
    chat_format = chat_format_for(loaded.config)
    cfg = model.config
    meta = {
        "architecture": loaded.arch,
        "description": record.description,
        "parameters": parameters,
        "context_length": int(cfg.context_length),
        "vocab_size": int(cfg.vocab_size),
        "n_layer": int(cfg.n_layer),
        "n_embd": int(cfg.n_embd),
        "tokenizer": getattr(loaded.tokenizer, "kind", type(loaded.tokenizer).__name__),
        "checkpoint_step": checkpoint_step(path),
        "template": chat_format.describe(),
        "source": loaded.source,
        "int8": bool(options.int8),
        "device": str(device),
        "max_batch": options.max_batch,
        "kv_cache_bytes": engine.cache.nbytes,
    }
    return ServedModel(engine, loaded.tokenizer, chat_format, meta, path=str(path))


def serve(
    settings: ServeSettings,
    load: Callable[[], Any],
    model_path: str | Path,
    options: EngineOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    on_started: Callable[[str, int], None] | None = None,
    on_ready: Callable[[ServedModel], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM stop it gracefully).

    ``load()`` returns a :class:`~scratchllm.runs.LoadedModel` (it runs in a background thread
    while the port already answers); ``on_started(host, port)`` is called once the socket is bound
    (``port=0`` picks a free one), ``on_ready`` once the model serves. Setting ``stop`` shuts the
    server down (for a server run in a thread, where no signal reaches it).
    """
    import uvicorn

    state = AppState(settings)
    app = create_app(state)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and on_started is not None:
                bound = self.servers[0].sockets[0].getsockname() if self.servers else (host, port)
                on_started(host, int(bound[1]))

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # SIGTERM is the normal way to stop a service: finish gracefully and exit 0 (uvicorn
            # would re-raise it afterwards). Ctrl-C is still re-raised: the CLI exits 130.
            captured = getattr(self, "_captured_signals", None)
            if sig == signal.SIGTERM and captured and captured[-1] == sig:
                captured.pop()

        async def shutdown(self, sockets: Any = None) -> None:
            # Running requests end now (503 / a mid-stream error) rather than keep the exit waiting.
            if state.served is not None:
                await asyncio.get_running_loop().run_in_executor(None, state.served.engine.close)
            await super().shutdown(sockets)

        async def on_tick(self, counter: int) -> bool:
            if stop is not None and stop.is_set():
                return True
            return await super().on_tick(counter)

    from scratchllm.serve.app import Guard

    config = uvicorn.Config(
        Guard(app, settings),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)

    def loader() -> None:
        try:
            served = prepare(load(), model_path, options, state)
            served.engine.start()
            state.set_ready(served)
            if on_ready is not None:
                on_ready(served)
        except ScratchLLMError as err:
            state.load_error = str(err)
            server.should_exit = True
        except Exception as err:  # a damaged file the loader did not foresee: still one line
            state.load_error = f"could not load the model: {type(err).__name__}: {err}"
            server.should_exit = True

    thread = threading.Thread(target=loader, name="scratchllm-loader", daemon=True)
    thread.start()
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind the socket (it has logged why)
        raise ScratchLLMError(
            f"could not listen on {host}:{port} (in use, or not an address of this machine?); "
            "choose another --host/--port"
        ) from None
    finally:
        thread.join(timeout=1)
        if state.served is not None:
            state.served.engine.close()
    if state.load_error:
        raise ScratchLLMError(state.load_error)
