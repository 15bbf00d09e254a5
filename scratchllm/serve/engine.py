"""The continuous-batching engine: one thread owns the model and advances every request together.

A server that answered requests one after another would make the 16th user wait for the other 15.
Decoding one token is memory-bound — every weight matrix is read once per step — so advancing 16
sequences in one forward pass costs little more than advancing one: the weights are read once for
all rows. This engine does that continuously:

* the KV cache (:class:`~scratchllm.model.kv_cache.KVCache` in per-row mode) has ``max_batch``
  **slots**; each sequence owns one slot for its life, with its own length and positions;
* each **step** first retires cancelled and timed-out requests, then admits waiting requests into
  free slots (first come, first served), prefills their prompts (in chunks, so a long prompt does
  not stall everyone else for long), and finally advances **every** running sequence by one token
  in a single batched forward pass over the slots;
* a request leaves as soon as it is finished, and its slots are free for the next one at the
  following step — requests join and leave the batch at different times.

Every sequence keeps its own sampling settings and its own ``torch.Generator`` (seeded from the
request's ``seed``), and tokens are chosen with the project's one sampler
(:mod:`scratchllm.generate.sampling`), so a request's tokens do not depend on what else runs in
the batch. Text leaves through :class:`~scratchllm.generate.streaming.TextStreamer`: stop strings
are cut out, and a character spread over several byte-level tokens is released only once complete.

The engine knows nothing about HTTP. :meth:`Engine.submit` takes a :class:`GenerationRequest` and
a callback that receives the request's events (:class:`Delta`, :class:`PromptLogprobs`,
:class:`Finish`, :class:`Done`, :class:`Failed`) from the engine thread; the web app turns them
into OpenAI's JSON. ``n`` samples of one prompt share its prefill: it is computed once and copied
to the other slots.
"""

from __future__ import annotations

import heapq
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generate.sampling import adjust_logits, sample_next, token_logprobs
from scratchllm.generate.streaming import TextStreamer

#: How a seed becomes the seed of choice i (choice 0 uses the request's seed itself).
_SEED_STRIDE = 0x9E3779B97F4A7C15


# ============================================================================ what goes in
@dataclass
class SamplingParams:
    """How one request chooses its tokens (the OpenAI request fields, already validated)."""

    #: 0 is greedy (always the most likely token).
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: token id -> value added to its logit (-100 bans it, +100 all but forces it).
    logit_bias: dict[int, float] = field(default_factory=dict)
    #: None draws a random seed; the same seed gives the same tokens.
    seed: int | None = None


@dataclass
class GenerationRequest:
    """One prompt to continue ``n`` times."""

    prompt_ids: list[int]
    #: new tokens at most per choice; 0 generates nothing (prompt log-probabilities only).
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    #: text that ends a choice (cut from its text), e.g. the chat template's next-turn marker.
    stop: Sequence[str] = ()
    #: token ids that end a choice (not part of its text), e.g. ``<|endoftext|>``.
    stop_ids: frozenset[int] = frozenset()
    #: None: no log-probabilities; k >= 0: each generated token's logprob and its k best rivals.
    logprobs: int | None = None
    #: the same for the prompt's tokens (``echo`` on /v1/completions); the first one has none.
    prompt_logprobs: int | None = None
    #: seconds from submission after which the request fails with a timeout.
    timeout: float | None = None


# ============================================================================ what comes out
@dataclass
class TokenInfo:
    """One token as the API reports it: its id, the text it contributed, and log-probabilities."""

    id: int
    text: str
    logprob: float | None = None
    #: the most likely tokens at this position as ``(id, logprob)``, best first.
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Delta:
    """New text of one choice (maybe empty when only ``tokens`` are new)."""

    choice: int
    text: str
    #: the tokens this text consists of, with their log-probabilities (when asked for).
    tokens: list[TokenInfo]


@dataclass
class PromptLogprobs:
    """The prompt's tokens with their log-probabilities under the model (``echo``)."""

    tokens: list[TokenInfo]
    text: str


@dataclass
class Finish:
    """One choice ended: ``reason`` is ``"stop"`` (end token or stop string) or ``"length"``
    (``max_tokens`` reached or the context is full)."""

    choice: int
    reason: str
    text: str
    completion_tokens: int


@dataclass
class Done:
    """Every choice has finished; the request's token counts."""

    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    """The request ended without finishing: ``code`` is ``"timeout"``, ``"cancelled"``,
    ``"shutdown"`` or ``"internal_error"``."""

    message: str
    code: str


Event = Delta | PromptLogprobs | Finish | Done | Failed


class QueueFull(ScratchLLMError):
    """Too many requests are waiting for a slot (the web app answers 429)."""


class EngineObserver:
    """Hooks the engine calls (from its thread) so that metrics can be kept; all do nothing here."""

    def prompt_tokens(self, n: int) -> None: ...

    def first_token(self, seconds: float) -> None:
        """A request's first new token arrived ``seconds`` after it was submitted."""

    def token(self, gap: float | None) -> None:
        """A token was generated, ``gap`` seconds after its sequence's previous one (None: the first)."""

    def finished(self, reason: str) -> None: ...


# ============================================================================ the engine's state
@dataclass
class _Choice:
    index: int
    slot: int
    generator: torch.Generator
    streamer: TextStreamer
    counts: torch.Tensor | None  # generated-token counts for the penalties
    infos: list[TokenInfo] = field(default_factory=list)  # one per token pushed to the streamer
    sent: int = 0  # infos already handed out in a Delta
    generated: int = 0
    pending: int | None = None  # sampled, not yet fed to the model
    finished: bool = False
    last_time: float = 0.0


@dataclass
class _Req:
    request: GenerationRequest
    emit: Callable[[Event], None]
    handle: RequestHandle
    submitted: float
    deadline: float | None
    choices: list[_Choice] = field(default_factory=list)
    prefilled: int = 0
    bias: torch.Tensor | None = None
    prompt_streamer: TextStreamer | None = None
    prompt_infos: list[TokenInfo] = field(default_factory=list)
    last_logits: torch.Tensor | None = None  # the previous prefill chunk's last row (echo logprobs)
    first_token_seen: bool = False
    completion_tokens: int = 0


class RequestHandle:
    """What :meth:`Engine.submit` returns: cancel the request with it."""

    def __init__(self, engine: Engine, request_id: int) -> None:
        self._engine = engine
        self.id = request_id
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the request and free its slots at the engine's next step (no more events)."""
        self.cancelled = True
        self._engine._wake()


class Engine:
    """Continuous batching over ``max_batch`` KV-cache slots, with at most ``max_queue`` waiting.

    Use :meth:`start` to run the loop in a background thread (what the server does) or call
    :meth:`step` yourself (tests, scripts). ``prefill_chunk`` bounds the prompt tokens processed
    per step, so a long prompt is spread over several steps while the running sequences go on.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = 512,
        observer: EngineObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise ScratchLLMError("max_batch and prefill_chunk must be >= 1 and max_queue >= 0")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.context_length = int(model.config.context_length)
        self.vocab_size = int(model.config.vocab_size)
        self.device = next(model.parameters()).device
        self.cache = model.make_kv_cache(max_batch, self.context_length, per_row=True)
        self.observer = observer or EngineObserver()
        self.clock = clock
        self._free = list(range(max_batch))  # a heap: the lowest free slot first keeps rows compact
        self._waiting: deque[_Req] = deque()
        self._running: list[_Req] = []
        self._lock = threading.Condition()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._ids = 0
        self._thread: threading.Thread | None = None
        self._closing = False

    # ------------------------------------------------------------------ public interface
    @property
    def waiting(self) -> int:
        """Requests waiting for slots."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests holding slots (prefilling or decoding)."""
        return len(self._running)

    @property
    def slots_in_use(self) -> int:
        return self.max_batch - len(self._free)

    def submit(self, request: GenerationRequest, emit: Callable[[Event], None]) -> RequestHandle:
        """Queue a request; ``emit`` receives its events from the engine's thread.

        Raises :class:`QueueFull` when ``max_queue`` requests already wait, and
        :class:`ScratchLLMError` for a request that can never run (checked here, not later).
        """
        return self.submit_all([(request, emit)])[0]

    def submit_all(
        self, items: Sequence[tuple[GenerationRequest, Callable[[Event], None]]]
    ) -> list[RequestHandle]:
        """Queue several requests at once (several prompts of one API call): all or none."""
        for request, _ in items:
            self._check(request)
        with self._lock:
            if self._closing:
                raise ScratchLLMError("the engine is shutting down")
            starts_now = not self._waiting and sum(r.n for r, _ in items) <= len(self._free)
            if len(self._waiting) + len(items) > self.max_queue and not starts_now:
                raise QueueFull(
                    f"{len(self._waiting)} requests are already waiting for a slot "
                    f"(the server's --max-queue is {self.max_queue})"
                )
            handles = []
            now = self.clock()
            for request, emit in items:
                self._ids += 1
                handle = RequestHandle(self, self._ids)
                deadline = now + request.timeout if request.timeout else None
                self._waiting.append(_Req(request, emit, handle, now, deadline))
                handles.append(handle)
            self._lock.notify()
        return handles

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` on the engine's thread between two steps; its result arrives in the Future.

        For work that must not overlap a batched step: the playground's inspection passes switch
        attention layers to their explicit path and hook the blocks, which would disturb (or be
        disturbed by) a decoding step running at the same time. Calls run one at a time, in order.
        """
        future: Future = Future()
        with self._lock:
            if self._closing:
                raise ScratchLLMError("the engine is shutting down")
            self._calls.append((fn, future))
            self._lock.notify()
        return future

    def _run_calls(self) -> None:
        while True:
            with self._lock:
                if not self._calls:
                    return
                fn, future = self._calls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as err:  # handed to the caller, which decides what it means
                    future.set_exception(err)

    def start(self) -> None:
        """Run the loop in a daemon thread until :meth:`close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="scratchllm-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the loop; requests still waiting or running fail with ``"shutdown"``."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for req in [*self._waiting, *self._running]:
            self._fail(req, "the server is shutting down", "shutdown")
        while self._calls:
            self._calls.popleft()[1].cancel()
        self._waiting.clear()
        self._running.clear()

    def idle(self) -> bool:
        return not self._waiting and not self._running and not self._calls

    @torch.inference_mode()
    def step(self) -> None:
        """One iteration: pending :meth:`call` work, retire, admit, prefill, one batched decoding step."""
        self._run_calls()
        self._retire()
        self._admit()
        self._prefill()
        self._decode()

    # ------------------------------------------------------------------ checks
    def _check(self, request: GenerationRequest) -> None:
        p = len(request.prompt_ids)
        if p == 0:
            raise ScratchLLMError("the prompt has no tokens")
        if not 1 <= request.n <= self.max_batch:
            raise ScratchLLMError(f"n must be between 1 and the server's --max-batch ({self.max_batch})")
        if request.max_tokens < 0:
            raise ScratchLLMError("max_tokens must be >= 0")
        if p + request.max_tokens > self.context_length:
            raise ScratchLLMError(
                f"the prompt has {p} tokens and {request.max_tokens} more were asked for; the model's "
                f"context length is {self.context_length}"
            )
        bad = [i for i in request.prompt_ids if not 0 <= i < self.vocab_size]
        bad += [i for i in request.sampling.logit_bias if not 0 <= i < self.vocab_size]
        if bad:
            raise ScratchLLMError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")

    # ------------------------------------------------------------------ the loop
    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closing and self.idle():
                    self._lock.wait()
                if self._closing:
                    return
            try:
                self.step()
            except Exception as err:  # a bug: fail what is running, keep serving the others
                for req in self._running:
                    self._fail(req, f"internal error: {type(err).__name__}: {err}", "internal_error")
                self._running.clear()
                self.cache.reset()
                self._free = list(range(self.max_batch))

    # ------------------------------------------------------------------ 1. retire
    def _retire(self) -> None:
        now = self.clock()

        def gone(req: _Req) -> bool:
            if req.handle.cancelled:
                self._fail(req, "cancelled", "cancelled", tell=False)
                return True
            if req.deadline is not None and now > req.deadline:
                self._fail(req, f"the request took longer than {req.request.timeout:g} s", "timeout")
                return True
            return False

        self._running = [r for r in self._running if not gone(r)]
        with self._lock:
            self._waiting = deque(r for r in self._waiting if not gone(r))

    # ------------------------------------------------------------------ 2. admit
    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or len(self._free) < self._waiting[0].request.n:
                    return  # first come, first served: no overtaking, so no starvation
                req = self._waiting.popleft()
            self._start(req)
            self._running.append(req)

    def _start(self, req: _Req) -> None:
        r = req.request
        s = r.sampling
        seed = secrets.randbits(63) if s.seed is None else s.seed
        tok = self.tokenizer
        if s.logit_bias:
            req.bias = torch.zeros(self.vocab_size, device=self.device)
            ids = torch.tensor(list(s.logit_bias), device=self.device)
            req.bias[ids] = torch.tensor([float(v) for v in s.logit_bias.values()], device=self.device)
        penalties = bool(s.presence_penalty or s.frequency_penalty)
        for i in range(r.n):
            slot = heapq.heappop(self._free)
            self.cache.reset_row(slot)
            gen = torch.Generator(device=self.device)
            gen.manual_seed((seed + i * _SEED_STRIDE) % 2**64)
            counts = torch.zeros(self.vocab_size, device=self.device) if penalties else None
            streamer = TextStreamer(tok, r.prompt_ids, r.stop)
            req.choices.append(_Choice(i, slot, gen, streamer, counts))
        if r.prompt_logprobs is not None:
            req.prompt_streamer = TextStreamer(tok)
        self.observer.prompt_tokens(len(r.prompt_ids))

    # ------------------------------------------------------------------ 3. prefill
    def _prefill(self) -> None:
        """Up to ``prefill_chunk`` prompt tokens this step. Prompts in neighbouring slots go through
        one forward pass together (right-padded to the longest chunk); a prompt that wants the
        logits of every position (``echo`` with logprobs) goes alone."""
        budget = self.prefill_chunk
        todo = sorted(
            (r for r in self._running if r.prefilled < len(r.request.prompt_ids)),
            key=lambda r: r.choices[0].slot,
        )
        groups: list[list[tuple[_Req, int]]] = []
        for req in todo:
            if budget <= 0:
                break
            take = min(len(req.request.prompt_ids) - req.prefilled, budget)
            budget -= take
            last = groups[-1] if groups else None
            if (
                last is not None
                and req.request.prompt_logprobs is None
                and last[0][0].request.prompt_logprobs is None
                and last[-1][0].choices[0].slot + 1 == req.choices[0].slot
                and self._fits(last, req, take)
            ):
                last.append((req, take))
            else:
                groups.append([(req, take)])
        for group in groups:
            try:
                self._prefill_group(group)
            except Exception as err:  # e.g. a numerical failure in one request's sampling
                for req, _ in group:
                    self._fail(req, f"internal error: {type(err).__name__}: {err}", "internal_error")
                    self._drop(req)

    def _fits(self, group: list[tuple[_Req, int]], req: _Req, take: int) -> bool:
        """Right-padding to the widest chunk must leave every row of the group inside its slot."""
        width = max(take, *(t for _, t in group))
        return all(r.prefilled + width <= self.cache.max_len for r, _ in [*group, (req, take)])

    def _prefill_group(self, group: list[tuple[_Req, int]]) -> None:
        first_slot = group[0][0].choices[0].slot
        width = max(t for _, t in group)
        tokens = torch.zeros(len(group), width, dtype=torch.long)
        for row, (req, take) in enumerate(group):
            ids = req.request.prompt_ids[req.prefilled : req.prefilled + take]
            tokens[row, :take] = torch.tensor(ids, dtype=torch.long)
        takes = torch.tensor([t for _, t in group], device=self.device)
        view = self.cache.rows(first_slot, first_slot + len(group), takes)
        want_all = group[0][0].request.prompt_logprobs is not None  # then the group is that one request
        if want_all:
            logits = self.model(tokens.to(self.device), kv_cache=view)
        else:
            logits = self.model(tokens.to(self.device), kv_cache=view, logits_at=takes - 1)
        for row, (req, take) in enumerate(group):
            start = req.prefilled
            req.prefilled += take
            if want_all:
                self._prompt_logprobs(req, logits[row], start, req.prefilled)
            if req.prefilled == len(req.request.prompt_ids):
                self._prefilled(req, logits[row, take - 1 if want_all else 0])

    def _prefilled(self, req: _Req, last: torch.Tensor) -> None:
        """The whole prompt is in: every choice starts from its last logits."""
        r = req.request
        first = req.choices[0]
        if req.prompt_streamer is not None:
            req.prompt_streamer.finish()
            pieces = req.prompt_streamer.take_tokens()
            for info, piece in zip(req.prompt_infos, pieces):
                info.text = piece
            req.emit(PromptLogprobs(req.prompt_infos, req.prompt_streamer.text))
        for choice in req.choices[1:]:
            self.cache.copy_row(first.slot, choice.slot)
        for choice in req.choices:
            if r.max_tokens == 0:
                self._finish(req, choice, "length")
            else:
                self._accept(req, choice, last)
        self._after_tokens(req)

    def _prompt_logprobs(self, req: _Req, logits: torch.Tensor, start: int, end: int) -> None:
        """Token j of the prompt is predicted by the logits at position j - 1."""
        r = req.request
        k = r.prompt_logprobs or 0
        for j in range(start, end):
            tid = r.prompt_ids[j]
            req.prompt_streamer.push(tid)
            if j == 0:
                req.prompt_infos.append(TokenInfo(tid, ""))
                continue
            row = logits[j - 1 - start] if j - 1 >= start else req.last_logits
            lp, top = token_logprobs(row, tid, k)
            req.prompt_infos.append(TokenInfo(tid, "", lp, top))
        req.last_logits = logits[end - 1 - start]

    # ------------------------------------------------------------------ 4. decode
    def _decode(self) -> None:
        feeding = [(req, c) for req in self._running for c in req.choices if c.pending is not None]
        if not feeding:
            return
        hi = max(c.slot for _, c in feeding) + 1
        tokens = torch.zeros(hi, 1, dtype=torch.long)
        advancing = torch.zeros(hi, dtype=torch.bool)
        for _, c in feeding:
            tokens[c.slot, 0] = c.pending
            advancing[c.slot] = True
            c.pending = None
        view = self.cache.rows(0, hi, advancing.to(self.device))
        logits = self.model(tokens.to(self.device), kv_cache=view, only_last=True)[:, -1]
        touched: dict[int, _Req] = {}
        for req, c in feeding:
            if req.handle.cancelled or c.finished:
                continue
            try:
                self._accept(req, c, logits[c.slot])
                touched[id(req)] = req
            except Exception as err:
                self._fail(req, f"internal error: {type(err).__name__}: {err}", "internal_error")
                self._drop(req)
        for req in touched.values():
            self._after_tokens(req)

    # ------------------------------------------------------------------ one token
    def _accept(self, req: _Req, c: _Choice, logits: torch.Tensor) -> None:
        """Choose the next token of choice ``c`` from its logits ``[V]`` and pass it on."""
        r = req.request
        s = r.sampling
        adjusted = logits[None]
        if req.bias is not None or c.counts is not None:
            adjusted = adjust_logits(
                adjusted,
                counts=None if c.counts is None else c.counts[None],
                presence_penalty=s.presence_penalty,
                frequency_penalty=s.frequency_penalty,
                logit_bias=req.bias,
            )
        token = int(
            sample_next(
                adjusted, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=c.generator
            )[0]
        )
        now = self.clock()
        if not req.first_token_seen:
            req.first_token_seen = True
            self.observer.first_token(now - req.submitted)
        self.observer.token(now - c.last_time if c.generated else None)
        c.last_time = now
        c.generated += 1
        req.completion_tokens += 1
        if c.counts is not None:
            c.counts[token] += 1
        if token in r.stop_ids:
            self._finish(req, c, "stop")
            return
        if r.logprobs is not None:
            lp, top = token_logprobs(logits, token, r.logprobs)
            c.infos.append(TokenInfo(token, "", lp, top))
        else:
            c.infos.append(TokenInfo(token, ""))
        text = c.streamer.push(token)
        if c.streamer.stopped:
            self._finish(req, c, "stop", text)
        elif c.generated >= r.max_tokens or int(self.cache.lengths[c.slot]) >= self.cache.max_len:
            self._finish(req, c, "length", text)
        else:
            c.pending = token
            self._send(req, c, text)

    def _send(self, req: _Req, c: _Choice, text: str) -> None:
        # infos[i] belongs to the i-th token pushed to the streamer: pieces come in the same order.
        pieces = c.streamer.take_tokens()
        infos = c.infos[c.sent : c.sent + len(pieces)]
        c.sent += len(pieces)
        for info, piece in zip(infos, pieces):
            info.text = piece
        if text or infos:
            req.emit(Delta(c.index, text, infos))

    def _finish(self, req: _Req, c: _Choice, reason: str, text: str = "") -> None:
        text += c.streamer.finish()
        self._send(req, c, text)
        c.finished, c.pending = True, None
        heapq.heappush(self._free, c.slot)
        self.cache.reset_row(c.slot)
        req.emit(Finish(c.index, reason, c.streamer.text, c.generated))
        self.observer.finished(reason)

    def _after_tokens(self, req: _Req) -> None:
        if all(c.finished for c in req.choices):
            req.emit(Done(len(req.request.prompt_ids), req.completion_tokens))
            self._running.remove(req)

    # ------------------------------------------------------------------ failures
    def _fail(self, req: _Req, message: str, code: str, *, tell: bool = True) -> None:
        for c in req.choices:
            if not c.finished:
                c.finished, c.pending = True, None
                heapq.heappush(self._free, c.slot)
                self.cache.reset_row(c.slot)
        if tell:
            req.emit(Failed(message, code))
        self.observer.finished(code)

    def _drop(self, req: _Req) -> None:
        if req in self._running:
            self._running.remove(req)
