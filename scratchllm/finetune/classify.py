"""Classification fine-tuning: teach a pretrained GPT (or BERT) to sort texts into classes.

The recipe of the book's chapter 6 (spam vs. ham), generalised to any labelled file:

1. read the labelled data (:func:`scratchllm.tasks.classify.load_classification_data`), optionally
   balance the classes by undersampling, and split it into train/val/test (or take three files);
2. replace the GPT's vocabulary-sized output head by a ``num_classes``-wide one and read it at the
   last real token of each text (:class:`~scratchllm.model.finetuned.GPTClassifier`) — or, for a
   BERT, put the head on the pooled ``[CLS]`` vector of ``[CLS] text [SEP]``
   (:class:`~scratchllm.model.finetuned.BertClassifier`); the model's ``text_format`` says how
   its texts are wrapped and padded, so nothing below depends on which one it is;
3. choose what trains (head / last blocks / all / LoRA) and hand a
   :class:`~scratchllm.tasks.classify.ClassificationTask` to the one training loop (through
   :func:`~scratchllm.finetune.common.run_finetune`, shared with instruction tuning);
4. score val and test: accuracy, macro precision/recall/F1 and the confusion matrix, printed by
   the CLI and written to ``RUN/test_metrics.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.evaluate.classify import encode_for_classifier, evaluate_classifier
from scratchllm.finetune.common import METRICS_FILE, FinetuneKind, progress_bars, run_finetune
from scratchllm.tasks.classify import ClassificationData, ClassificationTask

__all__ = ["METRICS_FILE", "ClassifyResult", "finetune_classify"]


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
    check_memory: bool = True,
    estimate_time: bool = False,
) -> ClassifyResult:
    """Fine-tune the GPT or BERT at ``base`` as a classifier of ``data`` into ``run_dir``; score val/test.

    ``train_cfg`` is a :class:`~scratchllm.train.config.TrainConfig`; when ``epochs`` is given its
    ``max_steps`` is replaced by the steps for that many epochs (pass None to keep it). ``lora`` (a
    :class:`~scratchllm.model.lora.LoRAConfig`) switches to LoRA training. With ``resume`` the
    model is rebuilt from ``run_dir`` and training continues from its newest checkpoint.
    """
    from scratchllm.model.finetuned import classifier_from_base

    say = echo or (lambda msg: None)
    bar = progress_bars(progress)

    def build(base_model: Any, cfg: Any) -> tuple[Any, str]:
        model = classifier_from_base(base_model, data.labels, lora)
        return model, model.arch

    def make_task(model: Any, tokenizer: Any, info: dict[str, Any], cfg: Any) -> ClassificationTask:
        fmt = model.text_format(tokenizer)
        ctx = model.config.context_length
        max_len = min(max_length or ctx, ctx) - fmt.extra  # room for [CLS]/[SEP] where the model wants them
        splits = [
            encode_for_classifier(rows, tokenizer, data.labels, fmt, max_length=max_len)
            for rows in (data.train, data.val, data.test)
        ]
        truncated = sum(n for _, n in splits)
        if truncated:
            say(f"warning: {truncated} texts were longer than {max_len} tokens and were truncated")
        task = ClassificationTask(
            splits[0][0], splits[1][0], data.labels, batch_size=cfg.batch_size, pad_id=fmt.pad_id
        )
        task.test, task.truncated = splits[2][0], truncated
        return task

    def score(model: Any, tokenizer: Any, task: ClassificationTask, run_dir: Path) -> dict[str, Any]:
        out = {}
        for name, enc in (("val", task.val), ("test", task.test)):
            if enc:
                out[name] = evaluate_classifier(
                    model,
                    enc,
                    data.labels,
                    pad_id=task.pad_id,
                    batch_size=task.eval_batch_size,
                    progress=bar(f"eval {name}"),
                )
        return out

    def check_resume(cfg: dict[str, Any]) -> None:
        from scratchllm.architectures import get_architecture

        if not get_architecture(cfg.get("architecture", "?")).is_classifier:
            raise ScratchLLMError(
                f"{run_dir} is not a classification fine-tuning run; cannot --resume it here"
            )
        saved = list((cfg.get("model") or {}).get("labels") or [])
        if saved != list(data.labels):
            raise ScratchLLMError(
                f"cannot resume: the run's labels are {saved} but the data's are {data.labels}; "
                "pass the same data as the original run"
            )

    kind = FinetuneKind("classify", build, make_task, score, check_resume, fingerprint_exclude=("out_head",))
    out = run_finetune(
        kind,
        base,
        run_dir,
        train_cfg=train_cfg,
        info={"data": data.description},
        trainable="lora" if lora is not None else trainable,
        last_blocks=last_blocks,
        dropout=dropout,
        epochs=epochs,
        resume=resume,
        force=force,
        progress=progress,
        echo=echo,
        stop_at=stop_at,
        check_memory=check_memory,
        estimate_time=estimate_time,
    )
    return ClassifyResult(
        Path(run_dir),
        data.labels,
        out.trainable,
        out.total,
        out.train_result.step,
        out.metrics,
        out.task.truncated,
        out.adapter,
        out.train_result,
    )
