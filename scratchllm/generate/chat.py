"""Chat with an instruction-tuned model: each line the user types, wrapped in the model's prompt
template, answered with a reply streamed token by token."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from scratchllm.data.instruction import PromptTemplate
from scratchllm.device import model_device
from scratchllm.errors import ScratchLLMWarning
from scratchllm.generate.engine import stream


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
        # The template's markers are inserted as ids; the line itself is ordinary text, so a typed
        # "<|endoftext|>" or template marker cannot end the turn and forge another.
        ids = tokenizer.encode_parts(template.parts(text))
        if len(ids) > ctx - 1:
            warnings.warn(
                f"the message and its prompt template are {len(ids)} tokens; only the last {ctx - 1} are "
                f"used (the model's context is {ctx} tokens, one is kept for the reply)",
                ScratchLLMWarning,
                stacklevel=2,
            )
            ids = ids[-(ctx - 1) :]
        if before_reply:
            before_reply()
        pending: list[int] = []
        shown = ""
        room = min(max_new_tokens, ctx - len(ids))
        for token in stream(
            model,
            ids,
            room,
            temperature=temperature,
            top_k=top_k,
            eos_id=eot,
            generator=gen,
            on_full="stop",
            vocab_size=tokenizer.vocab_size,
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
