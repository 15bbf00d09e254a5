"""Instruction fine-tuning: teach a pretrained GPT to answer instructions (the book's chapter 7).

A pretrained GPT continues text; it does not *answer*. Fine-tuning it on (instruction, response)
pairs laid out in a fixed prompt template teaches it that after ``### Response:`` comes a helpful
answer and then ``<|endoftext|>``. The steps:

1. read Alpaca-style records and split them (the book: 85% train, 5% val, 10% test);
2. encode ``prompt + output + <|endoftext|>`` per record and batch with dynamic padding and
   prompt masking (:mod:`scratchllm.data.instruction`);
3. hand an :class:`InstructionTask` to the one training loop — the loss is the ordinary
   next-token cross-entropy, counted on the response tokens only;
4. afterwards, generate a response for every test record (greedy decoding, stopping at
   ``<|endoftext|>``) into ``RUN/test_responses.json``, and score: the held-out response loss and
   perplexity, exact match and ROUGE-L against the reference outputs (``RUN/test_metrics.json``).

:func:`chat` is the interactive side: the same template around each line the user types,
with the reply streamed token by token.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scratchllm.data.classification import make_splits
from scratchllm.data.instruction import (
    EncodedInstruction,
    PromptTemplate,
    collate_instruction,
    encode_instructions,
    get_template,
    load_instruction_records,
)
from scratchllm.errors import ScratchLLMError
from scratchllm.finetune.batches import EpochBatches, fixed_batches
from scratchllm.finetune.metrics import text_metrics
from scratchllm.train.task import model_device, unwrap

RESPONSES_FILE = "test_responses.json"
METRICS_FILE = "test_metrics.json"

# ----------------------------------------------------------------------------- data


@dataclass
class InstructionData:
    train: list[dict[str, str]]
    val: list[dict[str, str]]
    test: list[dict[str, str]]
    description: dict[str, Any] = field(default_factory=dict)


def load_instruction_data(
    train: str | Path,
    *,
    val: str | Path | None = None,
    test: str | Path | None = None,
    split: str = "0.85,0.05,0.1",
    seed: int = 0,
) -> InstructionData:
    """Records for train/val/test: three files, or one file shuffled (``seed``) and cut by ``split``."""
    tr, va, te, description = make_splits(
        load_instruction_records, train, val=val, test=test, split=split, seed=seed
    )
    return InstructionData(
        tr,
        va,
        te,
        {
            **description,
            "counts": {"train": len(tr), "val": len(va), "test": len(te)},
        },
    )


# ----------------------------------------------------------------------------- the task


class InstructionTask:
    """The loop's :class:`~scratchllm.train.task.Task` for instruction tuning.

    ``sample`` answers the first val instruction greedily, so the eval log shows the model
    learning the format.
    """

    def __init__(
        self,
        train: Sequence[EncodedInstruction],
        val: Sequence[EncodedInstruction],
        *,
        batch_size: int,
        pad_id: int,
        mask_prompt: bool = True,
        tokenizer: Any = None,
        sample_prompt: str | None = None,
        sample_tokens: int = 64,
    ) -> None:
        if not train:
            raise ScratchLLMError("no training records left (every prompt was longer than the context)")
        self.train, self.val = list(train), list(val)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.mask_prompt = mask_prompt
        self.tokenizer = tokenizer
        self.sample_prompt = sample_prompt
        self.sample_tokens = sample_tokens

    def collate(self, items: list[EncodedInstruction]) -> dict[str, torch.Tensor]:
        return collate_instruction(items, self.pad_id, mask_prompt=self.mask_prompt)

    def train_batches(self, *, seed: int, rank: int = 0, world_size: int = 1) -> EpochBatches:
        return EpochBatches(
            self.train, self.batch_size, self.collate, seed=seed, rank=rank, world_size=world_size
        )

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        from scratchllm.model.gpt import lm_loss

        logits = model(batch["input_ids"])
        return lm_loss(logits, batch["targets"]) + unwrap(model).aux_loss(), {}

    def evaluate(self, model: Any, *, max_batches: int) -> dict[str, float]:
        if not self.val:
            return {}
        loss = response_loss(
            unwrap(model), self.val, pad_id=self.pad_id, batch_size=self.batch_size, max_batches=max_batches
        )
        return {"val_loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    def sample(self, model: Any) -> str | None:
        if self.tokenizer is None or self.sample_prompt is None or self.sample_tokens < 1:
            return None
        reply = generate_responses(
            unwrap(model), self.tokenizer, [self.sample_prompt], max_new_tokens=self.sample_tokens
        )[0]
        return self.sample_prompt + reply


@torch.no_grad()
def response_loss(
    model: Any,
    examples: Sequence[EncodedInstruction],
    *,
    pad_id: int,
    batch_size: int = 8,
    max_batches: int | None = None,
    progress: Callable[[Any], Any] | None = None,
) -> float:
    """Mean cross-entropy per *response* token (prompts masked) — exp of it is the perplexity."""
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    batches = fixed_batches(examples, batch_size, max_batches)
    for chunk in progress(batches) if progress else batches:
        b = collate_instruction(chunk, pad_id, mask_prompt=True)
        logits = model(b["input_ids"].to(device)).float()
        targets = b["targets"].to(device)
        total += F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
        ).item()
        count += int((targets != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_k: int | None = None,
    progress: Callable[[Any], Any] | None = None,
) -> list[str]:
    """Continue each prompt until ``<|endoftext|>`` (greedy by default); return only the new text.

    Prompts are batched with left padding (:func:`scratchllm.generate.pad_left`); generation stops
    at the context length rather than sliding, so a response never loses sight of its prompt.
    """
    from scratchllm.generate import generate, pad_left

    ctx = model.config.context_length
    eot = tokenizer.eot_id
    out: list[str] = []
    device = model_device(model)
    batches = fixed_batches(list(prompts), batch_size)
    for chunk in progress(batches) if progress else batches:
        ids = [tokenizer.encode(p)[-(ctx - 1) :] for p in chunk]  # keep room for at least one token
        idx, mask = pad_left(ids, eot)
        room = min(max_new_tokens, ctx - idx.shape[1])
        if room < 1:
            out.extend("" for _ in chunk)
            continue
        full = generate(
            model,
            idx.to(device),
            room,
            temperature=temperature,
            top_k=top_k,
            eos_id=eot,
            attention_mask=mask.to(device),
            on_full="stop",
        )
        for row in full[:, idx.shape[1] :].tolist():
            if eot in row:
                row = row[: row.index(eot)]
            out.append(tokenizer.decode(row).strip())
    return out


# ----------------------------------------------------------------------------- the whole job


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
) -> InstructResult:
    """Instruction-tune the GPT at ``base`` on ``data`` into ``run_dir``, then answer and score the test set.

    The model is saved as a plain ``gpt`` run (full/partial fine-tuning) or a ``gpt-lora`` run
    plus ``RUN/adapter/`` (LoRA). ``epochs`` sets ``max_steps`` (None keeps ``train_cfg``'s).
    """
    from scratchllm.finetune.batches import steps_for_epochs
    from scratchllm.finetune.common import is_main_process, load_base, select_trainable, write_adapter
    from scratchllm.finetune.models import base_config_dict, lora_model_from_base
    from scratchllm.io import atomic_write_json
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel
    from scratchllm.model.lora import base_fingerprint
    from scratchllm.train.loop import train

    say = echo or (lambda msg: None)
    run_dir = Path(run_dir)
    if lora is not None:
        trainable = "lora"
    if resume:
        model, tokenizer, arch, info = _rebuild_for_resume(run_dir)
        template = get_template(info["template"])
        mask_prompt, trainable, last_blocks = info["mask_prompt"], info["trainable"], info["trainable_blocks"]
    else:
        template = template or get_template(None)
        loaded = load_base(base)
        tokenizer = loaded.tokenizer
        base_model = loaded.model
        if dropout is not None:
            base_model.config.dropout = dropout
        fp = base_fingerprint(base_model)
        if lora is not None:
            # LoRA's A matrices start random: seed them so a run is repeatable.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(train_cfg.seed)
                model, arch = lora_model_from_base(base_model, lora), "gpt-lora"
        elif type(base_model) is GPTModel and dropout is None:
            model, arch = base_model, "gpt"
        else:
            # Rebuild as a plain GPT: the base was a (merged) gpt-lora, or the dropout changes.
            model, arch = GPTModel(GPTConfig(**base_config_dict(base_model.config))), "gpt"
            model.load_state_dict(base_model.state_dict())
        del loaded, base_model
        info = {
            "task": "instruct",
            "base_model": str(base),
            "base_fingerprint": fp,
            "template": template.to_dict(),
            "mask_prompt": mask_prompt,
            "trainable": trainable,
            "trainable_blocks": last_blocks,
            "data": data.description,
        }
    trainable_n, total_n = select_trainable(model, trainable, last_blocks=last_blocks)

    ctx = model.config.context_length
    pad = tokenizer.eot_id
    train_enc, s1 = encode_instructions(data.train, tokenizer, template, max_length=ctx)
    val_enc, s2 = encode_instructions(data.val, tokenizer, template, max_length=ctx)
    test_enc, s3 = encode_instructions(data.test, tokenizer, template, max_length=ctx)
    truncated = s1.truncated + s2.truncated + s3.truncated
    dropped = s1.dropped + s2.dropped + s3.dropped
    if truncated:
        say(
            f"warning: {truncated} records were longer than the context ({ctx} tokens) and were truncated"
            + (f"; {dropped} of them had no room left for the response and were skipped" if dropped else "")
        )

    if epochs is not None:
        steps = steps_for_epochs(len(train_enc), epochs, train_cfg.batch_size, train_cfg.grad_accum_steps)
        train_cfg = dataclasses.replace(train_cfg, max_steps=steps)
    sample_prompt = None
    if data.val:
        sample_prompt = template.format(data.val[0]["instruction"], data.val[0]["input"])
    task = InstructionTask(
        train_enc,
        val_enc,
        batch_size=train_cfg.batch_size,
        pad_id=pad,
        mask_prompt=mask_prompt,
        tokenizer=tokenizer,
        sample_prompt=sample_prompt,
    )
    result = train(
        model,
        task,
        train_cfg,
        run_dir,
        arch=arch,
        tokenizer=tokenizer,
        resume=resume,
        force=force,
        extra_config={"finetune": info},
        progress=progress,
        echo=echo,
        stop_at=stop_at,
    )
    metrics: dict[str, Any] = {"step": result.step}
    responses_path = adapter = None
    if result.interrupted is None and is_main_process():
        bar = _progress(progress)
        if val_enc:
            loss = response_loss(
                model, val_enc, pad_id=pad, batch_size=train_cfg.batch_size, progress=bar("val loss")
            )
            metrics["val"] = {"response_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if data.test:
            test = {}
            if test_enc:
                loss = response_loss(
                    model, test_enc, pad_id=pad, batch_size=train_cfg.batch_size, progress=bar("test loss")
                )
                test = {"response_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
            prompts = [template.format(r["instruction"], r["input"]) for r in data.test]
            replies = generate_responses(
                model,
                tokenizer,
                prompts,
                max_new_tokens=max_new_tokens,
                batch_size=train_cfg.batch_size,
                progress=bar("generate"),
            )
            responses_path = run_dir / RESPONSES_FILE
            atomic_write_json(
                responses_path, [{**r, "model_response": m} for r, m in zip(data.test, replies)]
            )
            test.update(text_metrics(replies, [r["output"] for r in data.test]))
            metrics["test"] = test
        atomic_write_json(run_dir / METRICS_FILE, metrics)
        if arch == "gpt-lora":
            adapter = write_adapter(model, run_dir, arch=arch, info=info)
    return InstructResult(
        run_dir,
        trainable_n,
        total_n,
        result.step,
        metrics,
        responses_path,
        truncated,
        dropped,
        adapter,
        result,
    )


def _rebuild_for_resume(run_dir: Path) -> tuple[Any, Any, str, dict[str, Any]]:
    from scratchllm.io import read_json
    from scratchllm.model import build_model, config_from_dict
    from scratchllm.tokenizer import load_tokenizer

    cfg = read_json(run_dir / "config.json", "run config")
    info = cfg.get("finetune") or {}
    if info.get("task") != "instruct" or cfg.get("architecture") not in ("gpt", "gpt-lora"):
        raise ScratchLLMError(f"{run_dir} is not an instruction fine-tuning run; cannot --resume it here")
    arch = cfg["architecture"]
    model = build_model(arch, config_from_dict(arch, cfg["model"]))
    return model, load_tokenizer(run_dir / "tokenizer.json"), arch, info


def _progress(enabled: bool) -> Callable[[str], Callable[[Any], Any] | None]:
    def make(desc: str) -> Callable[[Any], Any] | None:
        if not enabled:
            return None
        from tqdm.auto import tqdm

        return lambda it: tqdm(it, desc=desc, unit="batch", leave=False, dynamic_ncols=True)

    return make


# ----------------------------------------------------------------------------- chat


def template_of(config: Mapping[str, Any]) -> PromptTemplate:
    """The prompt template a run was trained with (``config.json``), or Alpaca for other models."""
    info = config.get("finetune") or {}
    return get_template(info.get("template")) if info.get("template") else get_template(None)


def chat(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    lines: Iterable[str],
    write: Callable[[str], None],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    before_reply: Callable[[], None] | None = None,
    after_reply: Callable[[], None] | None = None,
) -> int:
    """Answer each line of ``lines`` (until it ends or a line is ``exit``/``quit``); return the turns.

    Every line is a fresh instruction in ``template`` (no memory of earlier turns: the models of
    this book are trained on single instruction/response pairs). The reply is streamed to
    ``write`` piece by piece as tokens arrive; ``<|endoftext|>`` ends it.
    """
    from scratchllm.generate import stream

    eot = tokenizer.eot_id
    ctx = model.config.context_length
    gen = torch.Generator(device=model_device(model)).manual_seed(seed) if seed is not None else None
    turns = 0
    for line in lines:
        text = line.strip()
        if text.lower() in ("exit", "quit"):
            break
        if not text:
            continue
        ids = tokenizer.encode(template.format(text))[-(ctx - 1) :]
        if before_reply:
            before_reply()
        pending: list[int] = []
        shown = ""
        room = min(max_new_tokens, ctx - len(ids))
        for token in stream(
            model, ids, room, temperature=temperature, top_k=top_k, eos_id=eot, generator=gen, on_full="stop"
        ):
            if token == eot:
                break
            pending.append(int(token))
            # Decode the whole reply so far: a character split over several byte-level tokens
            # only appears once it is complete (no broken "\ufffd" in the middle).
            text_so_far = tokenizer.decode(pending)
            if not text_so_far.endswith("\ufffd"):
                write(text_so_far[len(shown) :])
                shown = text_so_far
        if after_reply:
            after_reply()
        turns += 1
    return turns
