"""Instruction fine-tuning: teach a pretrained GPT to answer instructions (the book's chapter 7).

A pretrained GPT continues text; it does not *answer*. Fine-tuning it on (instruction, response)
pairs laid out in a fixed prompt template teaches it that after ``### Response:`` comes a helpful
answer and then ``<|endoftext|>``. The steps:

1. read Alpaca-style records and split them (the book: 85% train, 5% val, 10% test;
   :func:`scratchllm.tasks.instruct.load_instruction_data`);
2. encode ``prompt + output + <|endoftext|>`` per record and batch with dynamic padding and
   prompt masking (:mod:`scratchllm.data.instruction`);
3. hand an :class:`~scratchllm.tasks.instruct.InstructionTask` to the one training loop (through
   :func:`~scratchllm.finetune.common.run_finetune`, shared with classification) — the loss is the
   ordinary next-token cross-entropy, counted on the response tokens only;
4. afterwards, generate a response for every test record (greedy decoding, stopping at
   ``<|endoftext|>``) into ``RUN/test_responses.json``, and score: the held-out response loss and
   perplexity, exact match and ROUGE-L against the reference outputs (``RUN/test_metrics.json``).

Chatting with the result is :mod:`scratchllm.generate.chat`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchllm.data.instruction import PromptTemplate, encode_instructions, get_template
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluate.instruct import evaluate_instructions
from scratchllm.evaluate.lm import response_loss
from scratchllm.finetune.common import METRICS_FILE, FinetuneKind, progress_bars, run_finetune
from scratchllm.io import atomic_write_json
from scratchllm.tasks.instruct import InstructionData, InstructionTask

__all__ = ["METRICS_FILE", "RESPONSES_FILE", "InstructResult", "finetune_instruct"]

RESPONSES_FILE = "test_responses.json"


@dataclass
class InstructResult:
    run_dir: Path
    trainable: int
    total: int
    steps: int
    metrics: dict[str, Any]
    responses_path: Path | None
    truncated: int = 0
    dropped: int = 0
    adapter: Path | None = None
    train_result: Any = None


def finetune_instruct(
    base: str | Path,
    data: InstructionData,
    run_dir: str | Path,
    *,
    train_cfg: Any,
    template: PromptTemplate | None = None,
    mask_prompt: bool = True,
    trainable: str = "all",
    last_blocks: int = 1,
    lora: Any = None,
    dropout: float | None = None,
    epochs: float | None = 2.0,
    max_new_tokens: int = 256,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    stop_at: int | None = None,
    check_memory: bool = True,
    estimate_time: bool = False,
) -> InstructResult:
    """Instruction-tune the GPT at ``base`` on ``data`` into ``run_dir``, then answer and score the test set.

    The model is saved as a plain ``gpt`` run (full/partial fine-tuning) or a ``gpt-lora`` run
    plus ``RUN/adapter/`` (LoRA). ``epochs`` sets ``max_steps`` (None keeps ``train_cfg``'s).
    """
    say = echo or (lambda msg: None)
    bar = progress_bars(progress)
    responses: list[Path] = []

    def build(base_model: Any, cfg: Any) -> tuple[Any, str]:
        from scratchllm.model.config import GPTConfig
        from scratchllm.model.finetuned import base_config_dict, lora_model_from_base
        from scratchllm.model.gpt import GPTModel

        if lora is not None:
            return lora_model_from_base(base_model, lora), "gpt-lora"
        if type(base_model) is GPTModel and dropout is None:
            return base_model, "gpt"
        # Rebuild as a plain GPT: the base was a (merged) gpt-lora, or the dropout changes.
        model = GPTModel(GPTConfig(**base_config_dict(base_model.config)))
        model.load_state_dict(base_model.state_dict())
        return model, "gpt"

    def make_task(model: Any, tokenizer: Any, info: dict[str, Any], cfg: Any) -> InstructionTask:
        tmpl = get_template(info["template"])
        ctx = model.config.context_length
        encoded = [
            encode_instructions(rows, tokenizer, tmpl, max_length=ctx)
            for rows in (data.train, data.val, data.test)
        ]
        truncated = sum(stats.truncated for _, stats in encoded)
        dropped = sum(stats.dropped for _, stats in encoded)
        if truncated:
            say(
                f"warning: {truncated} records were longer than the context ({ctx} tokens) and were truncated"
                + (
                    f"; {dropped} of them had no room left for the response and were skipped"
                    if dropped
                    else ""
                )
            )
        sample_prompt = tmpl.parts(data.val[0]["instruction"], data.val[0]["input"]) if data.val else None
        task = InstructionTask(
            encoded[0][0],
            encoded[1][0],
            batch_size=cfg.batch_size,
            pad_id=tokenizer.eot_id,
            mask_prompt=info["mask_prompt"],
            tokenizer=tokenizer,
            sample_prompt=sample_prompt,
        )
        task.test, task.template, task.truncated, task.dropped = encoded[2][0], tmpl, truncated, dropped
        return task

    def score(model: Any, tokenizer: Any, task: InstructionTask, run_dir: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if task.val:
            loss = response_loss(
                model, task.val, pad_id=task.pad_id, batch_size=task.batch_size, progress=bar("val loss")
            )
            out["val"] = {"response_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if data.test:
            test, replies = evaluate_instructions(
                model,
                tokenizer,
                data.test,
                task.template,
                batch_size=task.batch_size,
                max_new_tokens=max_new_tokens,
                encoded=task.test,
                progress=lambda desc: bar("test loss" if desc == "loss" else desc),
            )
            path = run_dir / RESPONSES_FILE
            atomic_write_json(path, [{**r, "model_response": m} for r, m in zip(data.test, replies)])
            responses.append(path)
            out["test"] = test
        return out

    def check_resume(cfg: dict[str, Any]) -> None:
        if cfg.get("architecture") not in ("gpt", "gpt-lora"):
            raise ScratchLLMError(f"{run_dir} is not an instruction fine-tuning run; cannot --resume it here")

    kind = FinetuneKind("instruct", build, make_task, score, check_resume)
    out = run_finetune(
        kind,
        base,
        run_dir,
        train_cfg=train_cfg,
        info={
            "template": (template or get_template(None)).to_dict(),
            "mask_prompt": mask_prompt,
            "data": data.description,
        },
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
    return InstructResult(
        Path(run_dir),
        out.trainable,
        out.total,
        out.train_result.step,
        {"step": out.train_result.step, **out.metrics},
        responses[0] if responses else None,
        out.task.truncated,
        out.task.dropped,
        out.adapter,
        out.train_result,
    )
