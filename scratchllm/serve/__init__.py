"""``scratchllm serve``: an OpenAI-compatible HTTP server with continuous batching.

* :mod:`~scratchllm.serve.engine` — the batching engine: KV-cache slots that requests join and
  leave at any step, one batched forward pass per step, the project's sampler per request;
* :mod:`~scratchllm.serve.prompts` — chat templates (a run's own fine-tuning template, or the
  plain one) and message text that cannot forge special tokens;
* :mod:`~scratchllm.serve.schemas` — the request/response bodies, validated to OpenAI's bounds;
* :mod:`~scratchllm.serve.app` — the FastAPI app: routes, OpenAI-shaped errors, streaming, auth;
* :mod:`~scratchllm.serve.metrics` — Prometheus metrics;
* :mod:`~scratchllm.serve.server` — binding the port, loading in the background, uvicorn.

Importing this package imports neither FastAPI nor torch; its modules do.
"""
