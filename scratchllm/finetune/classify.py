"""Classification fine-tuning: teach a pretrained GPT (or BERT) to sort texts into classes.

The recipe of the book's chapter 6 (spam vs. ham), generalised to any labelled file:

1. read the labelled data (:mod:`scratchllm.data.classification`), optionally balance the classes
   by undersampling, and split it into train/val/test (or take three files);
2. replace the GPT's vocabulary-sized output head by a ``num_classes``-wide one and read it at the
   last real token of each text (:class:`~scratchllm.finetune.models.GPTClassifier`) — or, for a
   BERT, put the head on the pooled ``[CLS]`` vector of ``[CLS] text [SEP]``
   (:class:`~scratchllm.finetune.models.BertClassifier`); the model's ``text_format`` says how
   its texts are wrapped and padded, so nothing below depends on which one it is;
3. choose what trains (head / last blocks / all / LoRA) and hand a :class:`ClassificationTask`
   to the one training loop;
4. score val and test: accuracy, macro precision/recall/F1 and the confusion matrix, printed by
   the CLI and written to ``RUN/test_metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scratchllm.data.classification import (
    EncodedExample,
    Example,
    balance_undersample,
    check_labels,
    collate_classification,
    encode_examples,
    label_counts,
    label_names,
    make_splits,
    read_labelled_file,
)
from scratchllm.errors import ScratchLLMError
from scratchllm.finetune.batches import EpochBatches, fixed_batches
from scratchllm.finetune.metrics import classification_metrics
from scratchllm.train.task import model_device, unwrap

METRICS_FILE = "test_metrics.json"
#: the architectures `finetune classify` produces (and `scratchllm classify` reads).
CLASSIFIER_ARCHS = ("gpt-classifier", "bert-classifier")

# ----------------------------------------------------------------------------- data


@dataclass
class ClassificationData:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    labels: list[str]
    #: how the splits were made, saved in config.json (so --resume can check it is the same data)
    description: dict[str, Any] = field(default_factory=dict)


def load_classification_data(
    train: str | Path,
    *,
    val: str | Path | None = None,
    test: str | Path | None = None,
    split: str = "0.7,0.1,0.2",
    text_column: str = "text",
    label_column: str = "label",
    balance: bool = False,
    seed: int = 0,
) -> ClassificationData:
    """Read the labelled files and produce train/val/test splits.

    With only ``train`` given, that file is (balanced, then) shuffled and cut by ``split`` — the
    book's 70/10/20 by default. With ``val``/``test`` files, the training file is used whole and
    ``balance`` applies to it alone.
    """
    tr, va, te, description = make_splits(
        lambda p: read_labelled_file(p, text_column=text_column, label_column=label_column),
        train,
        val=val,
        test=test,
        split=split,
        seed=seed,
        prepare=(lambda rows: balance_undersample(rows, seed=seed)) if balance else None,
    )
    if val is None and test is None and not va:
        raise ScratchLLMError(f"the split {split} leaves no validation rows; use a bigger val fraction")
    labels = label_names(tr)
    check_labels(va, labels, where=f"val file {val}" if val else "val split")
    check_labels(te, labels, where=f"test file {test}" if test else "test split")
    return ClassificationData(
        tr,
        va,
        te,
        labels,
        {
            **description,
            "balance": balance,
            "text_column": text_column,
            "label_column": label_column,
            "counts": {"train": label_counts(tr), "val": label_counts(va), "test": label_counts(te)},
        },
    )


# ----------------------------------------------------------------------------- the task


class ClassificationTask:
    """The loop's :class:`~scratchllm.train.task.Task` for classification.

    Loss: cross-entropy between the model's class logits for each row and its label.
    Evaluation: val loss, accuracy and macro F1 over (up to ``max_batches``) val batches.
    """

    def __init__(
        self,
        train: Sequence[EncodedExample],
        val: Sequence[EncodedExample],
        labels: Sequence[str],
        *,
        batch_size: int,
        pad_id: int,
        eval_batch_size: int | None = None,
    ) -> None:
        if not train:
            raise ScratchLLMError("no training examples")
        self.train, self.val, self.labels = list(train), list(val), list(labels)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.pad_id = pad_id

    def collate(self, items: list[EncodedExample]) -> dict[str, torch.Tensor]:
        return collate_classification(items, self.pad_id)

    def train_batches(self, *, seed: int, rank: int = 0, world_size: int = 1) -> EpochBatches:
        return EpochBatches(
            self.train, self.batch_size, self.collate, seed=seed, rank=rank, world_size=world_size
        )

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = model(batch["input_ids"], lengths=batch["lengths"])
        # aux_loss: zero for dense models, the load-balancing loss for a Mixture-of-Experts base.
        loss = F.cross_entropy(logits, batch["labels"]) + unwrap(model).aux_loss()
        accuracy = (logits.detach().argmax(-1) == batch["labels"]).float().mean()
        return loss, {"accuracy": accuracy}

    def evaluate(self, model: Any, *, max_batches: int) -> dict[str, float]:
        if not self.val:
            return {}
        scores = evaluate_classifier(
            unwrap(model),
            self.val,
            self.labels,
            pad_id=self.pad_id,
            batch_size=self.eval_batch_size,
            max_batches=max_batches,
        )
        return {"val_loss": scores["loss"], "accuracy": scores["accuracy"], "f1": scores["f1"]}

    def sample(self, model: Any) -> str | None:
        return None


@torch.no_grad()
def predict(
    model: Any,
    examples: Sequence[EncodedExample],
    *,
    pad_id: int,
    batch_size: int = 32,
    max_batches: int | None = None,
    progress: Callable[[Any], Any] | None = None,
) -> tuple[list[int], list[list[float]], float]:
    """Class predictions, class probabilities and the mean cross-entropy over ``examples``."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    preds: list[int] = []
    probs: list[list[float]] = []
    total, n = 0.0, 0
    batches = fixed_batches(examples, batch_size, max_batches)
    for chunk in progress(batches) if progress else batches:
        b = collate_classification(chunk, pad_id)
        logits = model(b["input_ids"].to(device), lengths=b["lengths"].to(device)).float()
        total += F.cross_entropy(logits, b["labels"].to(device), reduction="sum").item()
        n += len(chunk)
        p = logits.softmax(-1)
        preds.extend(p.argmax(-1).tolist())
        probs.extend(p.tolist())
    model.train(was_training)
    return preds, probs, total / max(n, 1)


def evaluate_classifier(
    model: Any,
    examples: Sequence[EncodedExample],
    labels: Sequence[str],
    *,
    pad_id: int,
    batch_size: int = 32,
    max_batches: int | None = None,
    progress: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Loss plus :func:`~scratchllm.finetune.metrics.classification_metrics` on ``examples``."""
    preds, _, loss = predict(
        model, examples, pad_id=pad_id, batch_size=batch_size, max_batches=max_batches, progress=progress
    )
    truth = [e.label for e in examples[: len(preds)]]
    return {"loss": loss, **classification_metrics(truth, preds, labels)}


# ----------------------------------------------------------------------------- the whole job


@dataclass
class ClassifyResult:
    run_dir: Path
    labels: list[str]
    trainable: int
    total: int
    steps: int
    metrics: dict[str, Any]  # {"val": {...}, "test": {...}}
    truncated: int = 0
    adapter: Path | None = None
    train_result: Any = None


def finetune_classify(
    base: str | Path,
    data: ClassificationData,
    run_dir: str | Path,
    *,
    train_cfg: Any,
    trainable: str = "last",
    last_blocks: int = 1,
    lora: Any = None,
    dropout: float | None = None,
    max_length: int | None = None,
    epochs: float | None = 5.0,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    stop_at: int | None = None,
) -> ClassifyResult:
    """Fine-tune the GPT or BERT at ``base`` as a classifier of ``data`` into ``run_dir``; score val/test.

    ``train_cfg`` is a :class:`~scratchllm.train.config.TrainConfig`; when ``epochs`` is given its
    ``max_steps`` is replaced by the steps for that many epochs (pass None to keep it). ``lora`` (a
    :class:`~scratchllm.model.lora.LoRAConfig`) switches to LoRA training. With ``resume`` the
    model is rebuilt from ``run_dir`` and training continues from its newest checkpoint.
    """
    import dataclasses

    from scratchllm.finetune.batches import steps_for_epochs
    from scratchllm.finetune.common import is_main_process, load_base, select_trainable, write_adapter
    from scratchllm.finetune.models import classifier_from_base
    from scratchllm.io import atomic_write_json
    from scratchllm.model.lora import base_fingerprint
    from scratchllm.train.loop import train

    say = echo or (lambda msg: None)
    run_dir = Path(run_dir)
    if lora is not None:
        trainable = "lora"
    if resume:
        model, tokenizer, info = _rebuild_for_resume(run_dir, data.labels)
        trainable, last_blocks = info["trainable"], info["trainable_blocks"]
    else:
        loaded = load_base(base, allow_bert=True)
        tokenizer = loaded.tokenizer
        if dropout is not None:
            loaded.model.config.dropout = dropout
        fp = base_fingerprint(loaded.model, exclude=("out_head",))
        # The new head (and LoRA's A matrices) start random: seed them so a run is repeatable.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train_cfg.seed)
            model = classifier_from_base(loaded.model, data.labels, lora)
        del loaded
        info = {
            "task": "classify",
            "base_model": str(base),
            "base_fingerprint": fp,
            "trainable": trainable,
            "trainable_blocks": last_blocks,
            "data": data.description,
        }
    trainable_n, total_n = select_trainable(model, trainable, last_blocks=last_blocks)

    fmt = model.text_format(tokenizer)
    ctx = model.config.context_length
    max_len = min(max_length or ctx, ctx) - fmt.extra  # room for [CLS]/[SEP] where the model wants them
    pad = fmt.pad_id
    train_enc, t1 = _encode(data.train, tokenizer, data.labels, max_len, fmt)
    val_enc, t2 = _encode(data.val, tokenizer, data.labels, max_len, fmt)
    test_enc, t3 = _encode(data.test, tokenizer, data.labels, max_len, fmt)
    truncated = t1 + t2 + t3
    if truncated:
        say(f"warning: {truncated} texts were longer than {max_len} tokens and were truncated")

    if epochs is not None:
        steps = steps_for_epochs(len(train_enc), epochs, train_cfg.batch_size, train_cfg.grad_accum_steps)
        train_cfg = dataclasses.replace(train_cfg, max_steps=steps)
    task = ClassificationTask(train_enc, val_enc, data.labels, batch_size=train_cfg.batch_size, pad_id=pad)
    result = train(
        model,
        task,
        train_cfg,
        run_dir,
        arch=model.arch,
        tokenizer=tokenizer,
        resume=resume,
        force=force,
        extra_config={"finetune": info},
        progress=progress,
        echo=echo,
        stop_at=stop_at,
    )

    bar = _progress_factory(progress)
    metrics: dict[str, Any] = {}
    finished = result.interrupted is None and is_main_process()
    for name, enc in (("val", val_enc), ("test", test_enc)):
        if enc and finished:
            metrics[name] = evaluate_classifier(
                model, enc, data.labels, pad_id=pad, batch_size=task.eval_batch_size, progress=bar(name)
            )
    adapter = None
    if finished:
        atomic_write_json(run_dir / METRICS_FILE, {"step": result.step, **metrics})
        if getattr(model.config, "lora_r", 0):
            adapter = write_adapter(model, run_dir, arch=model.arch, info=info)
    return ClassifyResult(
        run_dir, data.labels, trainable_n, total_n, result.step, metrics, truncated, adapter, result
    )


def _encode(
    examples: Sequence[Example], tokenizer: Any, labels: Sequence[str], max_len: int, fmt: Any
) -> tuple[list[EncodedExample], int]:
    """:func:`encode_examples`, each row then wrapped in the model's ``TextFormat``."""
    if max_len < 1:
        raise ScratchLLMError(f"--max-length leaves no room for text (the model adds {fmt.extra} tokens)")
    enc, truncated = encode_examples(examples, tokenizer, labels, max_length=max_len)
    return [EncodedExample(fmt.wrap(e.ids), e.label) for e in enc], truncated


def _rebuild_for_resume(run_dir: Path, labels: list[str]) -> tuple[Any, Any, dict[str, Any]]:
    """The classifier as the interrupted run built it (structure only; the loop loads weights)."""
    from scratchllm.io import read_json
    from scratchllm.model import build_model, config_from_dict
    from scratchllm.tokenizer import load_tokenizer

    cfg = read_json(run_dir / "config.json", "run config")
    arch = cfg.get("architecture")
    if arch not in CLASSIFIER_ARCHS or "finetune" not in cfg:
        raise ScratchLLMError(f"{run_dir} is not a classification fine-tuning run; cannot --resume it here")
    model_cfg = config_from_dict(arch, cfg["model"])
    if list(model_cfg.labels) != list(labels):
        raise ScratchLLMError(
            f"cannot resume: the run's labels are {list(model_cfg.labels)} but the data's are {labels}; "
            "pass the same data as the original run"
        )
    return (
        build_model(arch, model_cfg),
        load_tokenizer(run_dir / "tokenizer.json"),
        cfg["finetune"],
    )


def _progress_factory(enabled: bool) -> Callable[[str], Callable[[Any], Any] | None]:
    def make(desc: str) -> Callable[[Any], Any] | None:
        if not enabled:
            return None
        from tqdm.auto import tqdm

        return lambda it: tqdm(it, desc=f"eval {desc}", unit="batch", leave=False, dynamic_ncols=True)

    return make


# ----------------------------------------------------------------------------- inference


@torch.no_grad()
def classify_texts(model: Any, tokenizer: Any, texts: Sequence[str]) -> list[dict[str, Any]]:
    """Label texts with a loaded ``gpt-classifier`` or ``bert-classifier``.

    Returns one dict per text: ``text``, ``label``, its ``probability`` and all ``probabilities``.
    """
    labels = model.config.label_names
    fmt = model.text_format(tokenizer)
    room = model.config.context_length - fmt.extra
    examples = []
    for t in texts:
        if not t.strip():
            raise ScratchLLMError("cannot classify an empty text")
        ids = tokenizer.encode(t)[:room]
        examples.append(EncodedExample(fmt.wrap(ids), 0))
    preds, probs, _ = predict(model, examples, pad_id=fmt.pad_id)
    return [
        {
            "text": t,
            "label": labels[p],
            "probability": pr[p],
            "probabilities": {name: pr[i] for i, name in enumerate(labels)},
        }
        for t, p, pr in zip(texts, preds, probs)
    ]


def format_percent(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "n/a"
