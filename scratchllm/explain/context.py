"""What a topic runs with: the user's model (``--model``) or tiny models built on the spot.

Without ``--model`` the topics share a few tiny models, built once per process and cached:

* :func:`tiny_lm` — a character-level GPT (GPT-2 architecture, 2 layers, width 64, context 32)
  trained for a few seconds on the embedded corpus by the project's own training step
  (:func:`scratchllm.train.loop.optimizer_step`: AdamW, warm-up + cosine, clipping);
* :func:`tiny_moe_lm` — the same with a Mixture-of-Experts feed-forward (4 experts, top-2);
* :func:`tiny_date_model` — an encoder-decoder trained on the built-in date task.

Nothing is written anywhere the user sees: training runs in a temporary directory that is removed
afterwards. Pictures are written only into ``--out DIR``.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError

#: steps of the on-the-spot training (a few seconds on 2 CPU cores).
TINY_STEPS = 80


@dataclass
class LanguageModel:
    """A GPT-like model with its tokenizer, and where it came from."""

    model: Any
    tokenizer: Any
    arch: str
    description: str
    #: training losses of the on-the-spot training (empty for a user's model).
    losses: list[float] = field(default_factory=list)

    def fresh_copy(self, seed: int) -> Any:
        """A freshly initialised model of the same architecture and config (before any training)."""
        import torch

        from scratchllm.architectures import build_model

        torch.manual_seed(seed)
        return build_model(self.arch, self.model.config).eval()


@dataclass
class Context:
    """The inputs of one topic run (``scratchllm explain TOPIC ...``)."""

    #: the user's model (:class:`scratchllm.runs.LoadedModel`), or None for tiny on-the-spot models.
    loaded: Any = None
    model_path: str | None = None
    text: str | None = None
    out_dir: Path | None = None
    seed: int = 0
    force: bool = False
    #: ``--preset`` for the topics that describe a configuration (gpt, weight-tying, scaling).
    preset: str | None = None
    #: ``--tokenizer``: one more tokenizer for the tokenization topic (e.g. a GPT-2 directory).
    tokenizer_path: str | None = None
    written: list[Path] = field(default_factory=list)
    #: every picture the topic would draw (``--out`` or not), for the hint when --out is missing.
    pictures: list[str] = field(default_factory=list)

    def text_or(self, default: str) -> str:
        return self.text if self.text is not None and self.text != "" else default

    # ------------------------------------------------------------------ models
    def language_model(self) -> LanguageModel:
        """The user's GPT (``--model``) or the tiny character GPT trained on the spot."""
        if self.loaded is not None:
            if self.loaded.tokenizer is None:
                raise ScratchLLMError(
                    f"{self.model_path} has no tokenizer.json beside the weights; copy the run's "
                    "tokenizer.json there"
                )
            return LanguageModel(
                self.loaded.model, self.loaded.tokenizer, self.loaded.arch, f"model {self.model_path}"
            )
        return tiny_lm(self.seed)

    def untrained_lm(self) -> LanguageModel:
        """The user's GPT, or — for topics where training changes nothing — the tiny GPT's
        configuration freshly initialised (no time spent training)."""
        if self.loaded is not None:
            return self.language_model()
        import torch

        from scratchllm.model.config import GPTConfig
        from scratchllm.model.gpt import GPTModel

        tok = corpus_char_tokenizer()
        cfg = GPTConfig(vocab_size=tok.vocab_size, **TINY_LM_CONFIG)
        torch.manual_seed(self.seed)
        model = GPTModel(cfg).eval()
        desc = (
            f"a tiny character GPT, freshly initialised (GPT-2 architecture, {cfg.n_layer} layers, width "
            f"{cfg.n_embd}, {model.num_params():,} parameters)"
        )
        return LanguageModel(model, tok, "gpt", desc)

    # ------------------------------------------------------------------ pictures
    def figure_path(self, name: str) -> Path | None:
        """``OUT/NAME.png`` when ``--out`` was given (never overwriting without ``--force``), else None.

        Names start with the topic's name (``attention``, ``attention-model``): that is how
        :func:`~scratchllm.explain.registry.run_topic` refuses an occupied ``--out`` up front."""
        self.pictures.append(f"{name}.png")
        if self.out_dir is None:
            return None
        path = self.out_dir / f"{name}.png"
        if path.exists() and not self.force and path not in self.written:
            raise ScratchLLMError(f"{path} already exists; choose another --out or pass --force")
        self.written.append(path)
        return path


def encode_checked(tokenizer: Any, text: str, context_length: int | None = None) -> list[int]:
    """``tokenizer.encode(text)``, a one-line error when it is empty, cropped to the last
    ``context_length`` tokens (what the model can read)."""
    ids = tokenizer.encode(text)
    if not ids:
        raise ScratchLLMError("the text has no tokens; give some text with --text")
    if context_length is not None and len(ids) > context_length:
        ids = ids[-context_length:]
    return ids


# ----------------------------------------------------------------------------- tiny models


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny models on one CPU thread: their matmuls are too small to split, and on a busy
    machine extra threads only wait for each other (measured: 4x the CPU time on 2 loaded cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_briefly(
    model: Any, task: Any, steps: int, *, seed: int, lr: float = 3e-3, warmup: int = 10, arch: str = "gpt"
) -> list[float]:
    """Run ``steps`` optimizer steps of the project's training loop on ``task``; return the losses.

    This is :func:`scratchllm.train.loop.optimizer_step` itself (AdamW with decay on matrices only,
    warm-up + cosine schedule, gradient clipping) inside a session whose run directory is a
    temporary one, removed afterwards; evaluation, checkpoints and plots are skipped.
    """
    import torch

    from scratchllm.train.config import TrainConfig
    from scratchllm.train.loop import optimizer_step, start_session

    cfg = TrainConfig(
        max_steps=steps,
        batch_size=getattr(task, "batch_size", 16),
        lr=lr,
        warmup_steps=warmup,
        eval_steps=0,
        save_interval=0,
        sample_interval=0,
        seed=seed,
        device="cpu",
        fused_adamw=False,
    )
    losses = []
    with one_thread(), tempfile.TemporaryDirectory(prefix="scratchllm-explain-") as tmp:
        session, state = start_session(
            model,
            task,
            cfg,
            Path(tmp),
            arch=arch,
            tokenizer=None,
            resume=False,
            force=True,
            model_config=None,
            extra_config=None,
            allow_world_size_change=False,
            echo=None,
        )
        try:
            with torch.enable_grad():  # a topic may call us from inside torch.no_grad()
                while state.step < cfg.max_steps:
                    losses.append(optimizer_step(session, state).loss)
        finally:
            session.metrics.close()
    model.eval()
    torch.manual_seed(seed)  # later random draws do not depend on how many steps trained
    return losses


@functools.cache
def corpus_char_tokenizer() -> Any:
    """A character tokenizer of the embedded corpus (every character it contains)."""
    from scratchllm.data.corpus import default_corpus
    from scratchllm.tokenizer import CharTokenizer

    return CharTokenizer.train(default_corpus())


def _corpus_lm_task(tokenizer: Any, context_length: int, batch_size: int) -> Any:
    import numpy as np

    from scratchllm.data.corpus import default_corpus
    from scratchllm.data.shards import Shards
    from scratchllm.tasks.lm import LanguageModelingTask

    ids = np.asarray(tokenizer.encode(default_corpus()), dtype=np.uint16)
    n = int(len(ids) * 0.9)
    shards = Shards(path=Path("embedded-corpus"), train=ids[:n], val=ids[n:], meta={})
    return LanguageModelingTask(shards, context_length, batch_size, tokenizer=tokenizer, sample_tokens=1)


TINY_LM_CONFIG = dict(context_length=32, n_layer=2, n_head=4, n_embd=64)


def _tiny_gpt(seed: int, steps: int, **config: Any) -> tuple[Any, Any, list[float]]:
    """A character GPT of the embedded corpus, built with ``seed`` and trained for ``steps`` steps."""
    import torch

    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel

    tok = corpus_char_tokenizer()
    cfg = GPTConfig(vocab_size=tok.vocab_size, **{**TINY_LM_CONFIG, **config})
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    losses = train_briefly(model, _corpus_lm_task(tok, cfg.context_length, 16), steps, seed=seed)
    return model, tok, losses


@functools.cache
def tiny_lm(seed: int = 0, steps: int = TINY_STEPS) -> LanguageModel:
    """The tiny character GPT of the topics, trained for ``steps`` steps (cached per process)."""
    model, tok, losses = _tiny_gpt(seed, steps)
    cfg = model.config
    desc = (
        f"a tiny character GPT built on the spot (GPT-2 architecture, {cfg.n_layer} layers, width "
        f"{cfg.n_embd}, {cfg.n_head} heads, context {cfg.context_length}, {model.num_params():,} "
        f"parameters), trained for {steps} steps on the embedded corpus: loss {losses[0]:.2f} -> "
        f"{losses[-1]:.2f}"
    )
    return LanguageModel(model, tok, "gpt", desc, losses)


@functools.cache
def tiny_moe_lm(seed: int = 0, steps: int = 60) -> LanguageModel:
    """:func:`tiny_lm` with a Mixture-of-Experts feed-forward (4 experts, top-2), trained briefly."""
    model, tok, losses = _tiny_gpt(seed, steps, n_layer=1, n_experts=4, moe_top_k=2)
    desc = (
        f"a tiny character GPT with a Mixture-of-Experts layer (4 experts, top-2), built on the spot "
        f"and trained for {steps} steps: loss {losses[0]:.2f} -> {losses[-1]:.2f}"
    )
    return LanguageModel(model, tok, "gpt", desc, losses)


def save_picture(exp: Any, fig: Any, path: Path, caption: str) -> None:
    """Write a matplotlib figure to ``path`` (atomically), close it, and list it in ``exp``."""
    from scratchllm.visualize import pyplot, save_figure

    save_figure(fig, path)
    pyplot().close(fig)
    exp.figure(path, caption)


#: The date format the tiny encoder-decoder learns: day.month.year -> year-month-day (ISO).
DATE_FORMAT = r"\d\d\.\d\d\.\d{4}"


@dataclass
class DateModel:
    """A tiny encoder-decoder trained on the spot on one format of the built-in date task."""

    model: Any
    tokenizer: Any
    train_pairs: list[tuple[str, str]]
    val_pairs: list[tuple[str, str]]
    losses: list[float]
    description: str


@functools.cache
def tiny_date_model(seed: int = 0, steps: int = 200) -> DateModel:
    """Train a 1+1-layer encoder-decoder (width 64) on ``DD.MM.YYYY -> YYYY-MM-DD`` for ``steps`` steps."""
    import re

    import torch

    from scratchllm.data import seq2seq as s2s
    from scratchllm.model.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
    from scratchllm.tasks.seq2seq import Seq2SeqTask, with_seq2seq_vocabulary
    from scratchllm.tokenizer import CharTokenizer

    pairs = [p for p in s2s.date_pairs(20_000, seed) if re.fullmatch(DATE_FORMAT, p[0])]
    train_pairs, val_pairs = pairs[:-50], pairs[-50:]
    base = CharTokenizer.train("".join(s + t for s, t in pairs), special_tokens=())
    shape = Seq2SeqConfig(context_length=16, n_layer=1, n_head=2, n_embd=64, dropout=0.0, label_smoothing=0.0)
    tok, cfg = with_seq2seq_vocabulary(base, shape)
    torch.manual_seed(seed)
    model = Seq2SeqTransformer(cfg)
    task = Seq2SeqTask(tok, train_pairs, val_pairs, context_length=cfg.context_length, batch_size=32)
    losses = train_briefly(model, task, steps, seed=seed, lr=3e-3, arch="seq2seq")
    desc = (
        f"a tiny encoder-decoder built on the spot (1 encoder + 1 decoder layer, width 64, 2 heads, "
        f"{model.num_params():,} parameters) trained for {steps} steps on the built-in date task, format "
        f"DD.MM.YYYY -> YYYY-MM-DD ({len(train_pairs):,} pairs): loss {losses[0]:.2f} -> {losses[-1]:.2f}"
    )
    return DateModel(model, tok, train_pairs, val_pairs, losses, desc)
