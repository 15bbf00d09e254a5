"""What ``GET /metrics`` reports, in the Prometheus text format (``prometheus_client``).

=============================================  ==========================================
``scratchllm_requests_running``                 requests holding KV-cache slots now
``scratchllm_requests_waiting``                 requests queued for a slot
``scratchllm_slots_in_use`` / ``_slots_total``  KV-cache slots (one per sequence)
``scratchllm_prompt_tokens_total``              prompt tokens prefilled
``scratchllm_generation_tokens_total``          tokens generated
``scratchllm_time_to_first_token_seconds``      histogram: submission → first new token
``scratchllm_time_per_output_token_seconds``    histogram: gap between a sequence's tokens
``scratchllm_request_latency_seconds``          histogram: whole request, as the client saw it
``scratchllm_requests_total{outcome}``          finished choices by reason (stop, length,
                                                cancelled, timeout, internal_error) and
                                                refused requests (rejected_queue_full, ...)
=============================================  ==========================================

Each app keeps its own registry, so several servers (tests) can live in one process.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from scratchllm.serve.engine import EngineObserver

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class ServerMetrics(EngineObserver):
    """The server's Prometheus metrics; the engine reports into it as an :class:`EngineObserver`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("scratchllm_requests_running", "Requests holding KV-cache slots", registry=r)
        self.waiting = Gauge("scratchllm_requests_waiting", "Requests waiting for a slot", registry=r)
        self.slots_in_use = Gauge("scratchllm_slots_in_use", "KV-cache slots in use", registry=r)
        self.slots_total = Gauge("scratchllm_slots_total", "KV-cache slots (--max-batch)", registry=r)
        self.prompt_tokens_total = Counter("scratchllm_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generation_tokens_total = Counter("scratchllm_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "scratchllm_time_to_first_token_seconds",
            "From submission to a request's first new token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "scratchllm_time_per_output_token_seconds",
            "Time between two tokens of one sequence",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "scratchllm_request_latency_seconds",
            "Whole request, from arrival to the last byte",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.outcomes = Counter(
            "scratchllm_requests", "Finished choices and refused requests", ["outcome"], registry=r
        )

    def watch(
        self, running: Callable[[], float], waiting: Callable[[], float], slots: Callable[[], float]
    ) -> None:
        """Read the gauges from the engine at scrape time."""
        self.running.set_function(running)
        self.waiting.set_function(waiting)
        self.slots_in_use.set_function(slots)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # EngineObserver
    def prompt_tokens(self, n: int) -> None:
        self.prompt_tokens_total.inc(n)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def token(self, gap: float | None) -> None:
        self.generation_tokens_total.inc()
        if gap is not None:
            self.tpot.observe(gap)

    def finished(self, reason: str) -> None:
        self.outcomes.labels(reason).inc()
