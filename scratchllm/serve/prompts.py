"""From an API request to prompt token ids: chat templates, and user text that cannot forge a turn.

**Chat templates.** ``/v1/chat/completions`` turns a list of messages into one prompt:

* an **instruction-tuned run** (``scratchllm finetune instruct``) records the prompt template it
  was trained with in ``config.json["finetune"]["template"]``; its conversations are formatted with
  exactly that template. The models of this project learn single instruction/response pairs, each
  followed by ``<|endoftext|>``, so a conversation is laid out as the training data was: every
  earlier exchange as ``template(user) + reply + <|endoftext|>``, then ``template(last user
  message)``, after which the model writes its reply and ends it with ``<|endoftext|>``. System
  (and developer) messages are put in front of the first user message, separated by a blank line.
* **any other model** (a base GPT, a Hugging Face GPT-2) gets the *plain* template, one line per
  message::

      System: You are terse.
      User: Name a colour.
      Assistant: Blue.
      User: Another one.
      Assistant:

  and the reply stops at ``<|endoftext|>`` or at ``"\\nUser:"`` (where the model starts writing
  the user's next turn itself).

In both, a final assistant message is a *prefix* that the model continues (no end marker is added
after it). ``/v1/models`` says which template a model gets (``meta.template``).

**Special tokens stay text.** A user who types ``<|endoftext|>`` into a message must not be able
to end the turn and start a forged one. Prompts are built as ``(text, trusted)`` parts and encoded
with :meth:`~scratchllm.tokenizer.base.Tokenizer.encode_parts`: message contents are ordinary text
(a special token's text is just text, as everywhere in scratchllm), and only the template's own
markers become special ids. Template text that is *not* a special token of the tokenizer (the
plain template's ``"User: "``, Alpaca's ``"### Response:"``) is ordinary text for the model too, so
a message can spell it; only markers that are special tokens (``<|user|>``, ``<|assistant|>`` in a
tokenizer trained with them) are out of a message's reach. A ``/v1/completions`` prompt or a
``/tokenize`` text is ordinary text as well, unless the server runs with ``--allow-special`` (the
old reading, where ``<|endoftext|>`` is the document separator, as in OpenAI's legacy API); a
prompt given as token ids may hold any id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scratchllm.data.instruction import PromptTemplate, get_template
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.base import EOT

#: Roles whose messages are instructions to the model rather than turns of the conversation.
SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True)
class Message:
    """One chat message, reduced to what formatting needs."""

    role: str  # system, developer, user or assistant
    content: str


@dataclass(frozen=True)
class ChatFormat:
    """How a model's chat prompts are built: its instruction template, or the plain one."""

    #: "instruction" (the template the run was fine-tuned with) or "plain".
    kind: str
    template: PromptTemplate | None = None

    @property
    def name(self) -> str:
        return self.template.name if self.template is not None else "plain"

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings every chat request gets (besides ``<|endoftext|>``)."""
        return () if self.kind == "instruction" else ("\nUser:",)

    def describe(self) -> dict[str, Any]:
        """What ``/v1/models`` reports in ``meta.template``."""
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "stop": list(self.stop)}
        if self.template is not None:
            out["prompt"] = self.template.prompt_no_input
        return out

    def parts(self, messages: Sequence[Message]) -> list[tuple[str, bool]]:
        """The prompt as ``(text, trusted)`` parts (see ``Tokenizer.encode_parts``)."""
        system = "\n\n".join(m.content for m in messages if m.role in SYSTEM_ROLES)
        turns = _merge_turns([m for m in messages if m.role not in SYSTEM_ROLES])
        if not any(role == "user" for role, _ in turns):
            raise ScratchLLMError("messages must contain at least one user message")
        if self.template is None:
            return _plain_parts(system, turns)
        return _instruction_parts(self.template, system, turns)


def _merge_turns(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """Consecutive messages of one role become one turn (their texts joined by a blank line)."""
    turns: list[tuple[str, str]] = []
    for m in messages:
        if turns and turns[-1][0] == m.role:
            turns[-1] = (m.role, turns[-1][1] + "\n\n" + m.content)
        else:
            turns.append((m.role, m.content))
    return turns


def _plain_parts(system: str, turns: list[tuple[str, str]]) -> list[tuple[str, bool]]:
    parts: list[tuple[str, bool]] = []
    if system:
        parts += [("System: ", True), (system, False), ("\n", True)]
    for k, (role, content) in enumerate(turns):
        label = "User: " if role == "user" else "Assistant: "
        last = k == len(turns) - 1
        parts += [(label, True), (content, False)]
        if not (last and role == "assistant"):
            parts.append(("\n", True))
    if turns[-1][0] == "user":
        parts.append(("Assistant:", True))
    return parts


def _instruction_parts(
    template: PromptTemplate, system: str, turns: list[tuple[str, str]]
) -> list[tuple[str, bool]]:
    if turns[0][0] != "user":
        raise ScratchLLMError(
            f"an instruction-tuned model ({template.name} template) reads conversations that start "
            "with a user message"
        )
    parts: list[tuple[str, bool]] = []
    for k in range(0, len(turns), 2):
        instruction = turns[k][1]
        if k == 0 and system:
            instruction = system + "\n\n" + instruction
        parts += template.parts(instruction)  # the template text is trusted, the instruction is not
        if k + 1 < len(turns):
            parts.append((turns[k + 1][1], False))
            if k + 2 < len(turns):
                parts.append((EOT, True))
    return parts


def chat_format_for(config: dict[str, Any]) -> ChatFormat:
    """The chat format of a model from its ``config.json``: the recorded fine-tuning template of
    an instruction-tuned run, the plain template for anything else."""
    info = config.get("finetune") if isinstance(config, dict) else None
    if isinstance(info, dict) and info.get("template"):
        return ChatFormat("instruction", get_template(info["template"]))
    return ChatFormat("plain")


def chat_prompt_ids(tokenizer: Any, chat_format: ChatFormat, messages: Sequence[Message]) -> list[int]:
    """The token ids of a conversation's prompt (message texts encoded as ordinary text)."""
    return tokenizer.encode_parts(chat_format.parts(messages))
