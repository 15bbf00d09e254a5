"""Instruction data: Alpaca-style records → prompts → padded, masked training batches.

An instruction record is a JSON object with an ``instruction``, an optional ``input`` (extra
context such as a sentence to rewrite) and the desired ``output``::

    {"instruction": "Convert to passive voice.", "input": "The chef cooked the meal.",
     "output": "The meal was cooked by the chef."}

A **prompt template** turns the first two into the text the model sees; the model learns to
continue it with the output followed by ``<|endoftext|>``, which later tells generation to stop.
The default is the Alpaca format (Taori et al., 2023) that the book uses: a fixed preamble, then
``### Instruction:``, ``### Input:`` (only when there is an input) and ``### Response:`` headers.

How a batch is built (:func:`collate_instruction`):

* each row is ``prompt + output + <|endoftext|>``; inputs are the row without its last token and
  targets the row without its first (next-token prediction);
* rows are right-padded to the longest row *of this batch* (dynamic padding wastes far less
  compute than padding everything to the context length); padded inputs are ``<|endoftext|>``,
  padded targets are ``-100`` so the loss ignores them. The one real ``<|endoftext|>`` target
  stays: the model must learn to stop;
* with **prompt masking** (the default) targets inside the prompt are ``-100`` too, so the loss
  — and the gradient — come from the response only: the model is taught to answer, not to
  reproduce the instruction.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.io import read_json_records

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- prompt templates


@dataclass
class PromptTemplate:
    """Two format strings with ``{instruction}`` and ``{input}`` fields; the output follows the
    prompt directly, so each string ends where the response should begin."""

    name: str
    prompt: str
    prompt_no_input: str

    def format(self, instruction: str, input: str = "") -> str:
        return "".join(text for text, _ in self.parts(instruction, input))

    def parts(self, instruction: str, input: str = "") -> list[tuple[str, bool]]:
        """The prompt as ``(text, trusted)`` parts for :meth:`Tokenizer.encode_parts`: the
        template's own text is trusted (a special-token marker in it, such as ``<|user|>`` when
        the tokenizer has that special, becomes its id); the instruction and input are not (a
        ``"<|endoftext|>"`` or ``"<|assistant|>"`` typed into them stays text)."""
        has_input = bool(input and input.strip())
        values = {"instruction": instruction, "input": input}
        fmt = string.Formatter()
        parts: list[tuple[str, bool]] = []
        for literal, name, spec, conversion in fmt.parse(self.prompt if has_input else self.prompt_no_input):
            if literal and parts and parts[-1][1]:  # ("{{" comes back as its own literal piece)
                parts[-1] = (parts[-1][0] + literal, True)
            elif literal:
                parts.append((literal, True))
            if name is not None:
                value = fmt.convert_field(values[name], conversion) if conversion else values[name]
                parts.append((fmt.format_field(value, spec or ""), False))
        return parts

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "template") -> PromptTemplate:
        if not isinstance(d, dict) or not isinstance(d.get("prompt"), str):
            raise ScratchLLMError(f"{where} must be a JSON object with a 'prompt' string")
        tpl = cls(
            name=str(d.get("name", "custom")),
            prompt=d["prompt"],
            prompt_no_input=str(d.get("prompt_no_input") or d["prompt"].replace("{input}", "")),
        )
        tpl.check(where)
        return tpl

    def check(self, where: str) -> None:
        for label, text, allowed in (
            ("prompt", self.prompt, {"instruction", "input"}),
            ("prompt_no_input", self.prompt_no_input, {"instruction"}),
        ):
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            except ValueError as err:
                raise ScratchLLMError(f"{where}: {label} is not a valid format string ({err})") from None
            if "instruction" not in fields:
                raise ScratchLLMError(f"{where}: {label} must contain {{instruction}}")
            if fields - allowed:
                raise ScratchLLMError(
                    f"{where}: {label} uses unknown field(s) {', '.join(sorted(fields - allowed))}; "
                    f"allowed: {', '.join(sorted(allowed))} (write literal braces as {{{{ }}}})"
                )


_ALPACA_HEAD = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}"
)
TEMPLATES: dict[str, PromptTemplate] = {
    "alpaca": PromptTemplate(
        name="alpaca",
        prompt=_ALPACA_HEAD + "\n\n### Input:\n{input}\n\n### Response:\n",
        prompt_no_input=_ALPACA_HEAD + "\n\n### Response:\n",
    ),
    # The shorter chat style of Microsoft's Phi-3 (the book's exercise 7.1): fewer prompt tokens.
    "phi3": PromptTemplate(
        name="phi3",
        prompt="<|user|>\n{instruction}\n{input}\n<|assistant|>\n",
        prompt_no_input="<|user|>\n{instruction}\n<|assistant|>\n",
    ),
}


def get_template(spec: str | dict[str, Any] | None) -> PromptTemplate:
    """A template by name (``alpaca``, ``phi3``), from a JSON file, or from a saved dict.

    A template file holds ``{"prompt": "...{instruction}...{input}...", "prompt_no_input":
    "...{instruction}..."}`` (the second is optional).
    """
    if spec is None:
        return TEMPLATES["alpaca"]
    if isinstance(spec, dict):
        return PromptTemplate.from_dict(spec)
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    path = Path(spec)
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ScratchLLMError(f"template file {path} is not valid JSON ({err})") from None
        data.setdefault("name", path.stem)
        return PromptTemplate.from_dict(data, where=f"template file {path}")
    raise ScratchLLMError(
        f"unknown template {spec!r}: use one of {', '.join(TEMPLATES)} or a JSON file with a 'prompt' string"
    )


# ----------------------------------------------------------------------------- reading records


def load_instruction_records(path: str | Path) -> list[dict[str, str]]:
    """Read a ``.json`` list or a ``.jsonl`` file of records, checking every one.

    Each record needs a non-empty string ``instruction`` and a string ``output``; ``input`` is
    optional (missing or ``""`` means none).
    """
    path = Path(path)
    records = read_json_records(path, "instruction data file")
    if not records:
        raise ScratchLLMError(f"{path} holds no records")
    out = []
    for n, rec in enumerate(records, start=1):
        if not isinstance(rec, dict):
            raise ScratchLLMError(f"{path} record {n} is not a JSON object")
        if not isinstance(rec.get("instruction"), str) or not rec["instruction"].strip():
            keys = ", ".join(rec) or "(none)"
            raise ScratchLLMError(f"{path} record {n} has no 'instruction' text (its keys: {keys})")
        if "output" not in rec or not isinstance(rec["output"], str):
            keys = ", ".join(rec)
            raise ScratchLLMError(f"{path} record {n} has no 'output' string (its keys: {keys})")
        inp = rec.get("input") or ""
        if not isinstance(inp, str):
            raise ScratchLLMError(f"{path} record {n}: 'input' must be a string")
        out.append({"instruction": rec["instruction"], "input": inp, "output": rec["output"]})
    return out


# ----------------------------------------------------------------------------- encoding, batching


@dataclass
class EncodedInstruction:
    ids: list[int]  # prompt + output + <|endoftext|>, possibly truncated
    prompt_len: int


@dataclass
class EncodeStats:
    truncated: int = 0  # rows cut to the context length (the end of the output is lost)
    dropped: int = 0  # rows whose prompt alone fills the context: no output token left to learn


def encode_instructions(
    records: Sequence[dict[str, str]], tokenizer: Any, template: PromptTemplate, *, max_length: int
) -> tuple[list[EncodedInstruction], EncodeStats]:
    """Tokenize prompt and output separately (so the prompt length is exact) and join them.

    Record texts are ordinary text: a ``"<|endoftext|>"`` inside an output does not end the row
    early, and one inside an instruction does not forge a template marker. The row's real
    ``<|endoftext|>`` and the template's markers are inserted as ids (:meth:`PromptTemplate.parts`).

    ``max_length`` is the model's context length: a row may hold ``max_length + 1`` tokens,
    because inputs and targets are that row shifted by one.
    """
    eot = tokenizer.eot_id
    stats = EncodeStats()
    out = []
    for rec in records:
        prompt = tokenizer.encode_parts(template.parts(rec["instruction"], rec["input"]))
        ids = prompt + tokenizer.encode(rec["output"]) + [eot]
        if len(ids) > max_length + 1:
            ids = ids[: max_length + 1]
            stats.truncated += 1
            if len(prompt) >= len(ids):
                stats.dropped += 1
                continue
        out.append(EncodedInstruction(ids, len(prompt)))
    return out, stats


def collate_instruction(
    batch: Sequence[EncodedInstruction], pad_id: int, *, mask_prompt: bool = True
) -> dict[str, Any]:
    """Dynamic padding + shifted targets + masks: ``input_ids`` and ``targets``, both ``[B, T]``.

    ``T`` is the longest row of this batch minus one. A target of ``-100`` is ignored by
    :func:`scratchllm.model.gpt.lm_loss`.
    """
    import torch

    T = max(len(e.ids) for e in batch) - 1
    input_ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(batch):
        row = torch.tensor(e.ids, dtype=torch.long)
        n = len(e.ids) - 1
        input_ids[i, :n] = row[:-1]
        targets[i, :n] = row[1:]
        if mask_prompt:
            # Target j is token j + 1: the prompt's tokens are targets 0 .. prompt_len - 2.
            targets[i, : max(e.prompt_len - 1, 0)] = IGNORE_INDEX
    return {"input_ids": input_ids, "targets": targets}


def template_of(config: Mapping[str, Any]) -> PromptTemplate:
    """The prompt template a run was trained with (``config.json``), or Alpaca for other models."""
    info = config.get("finetune") or {}
    return get_template(info.get("template")) if info.get("template") else get_template(None)


# ----------------------------------------------------------------------------- splits


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
    from scratchllm.data.classification import make_splits

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
