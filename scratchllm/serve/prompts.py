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
to end the turn and start a forged one. Message contents are encoded with
:func:`encode_ordinary`, where a special token's text is just text; only the template's own
markers become special ids. (A ``/v1/completions`` prompt is the raw document the model reads, as
in OpenAI's legacy API, so there ``<|endoftext|>`` is the document separator.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scratchllm.data.instruction import PromptTemplate, get_template
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.base import EOT, split_on_specials

#: Roles whose messages are instructions to the model rather than turns of the conversation.
SYSTEM_ROLES = ("system", "developer")


def encode_ordinary(tokenizer: Any, text: str) -> list[int]:
    """Encode ``text`` with special-token strings treated as ordinary text.

    The one place that decides how (so it is easy to switch once tokenizers offer such an encode
    themselves): a tokenizer's own ``encode_ordinary`` if it has one; tiktoken's for byte-level
    BPE and GPT-2 (``"<|endoftext|>"`` becomes the tokens of its characters); otherwise the text is
    encoded around special-token strings, and each such string is encoded in two pieces (its first
    character, then the rest), neither of which is a special token.
    """
    own = getattr(tokenizer, "encode_ordinary", None)
    if callable(own):
        return list(own(text))
    encoding = getattr(tokenizer, "tiktoken_encoding", None)
    if encoding is not None:
        return list(encoding.encode_ordinary(text))
    ids: list[int] = []
    for piece, is_special in split_on_specials(text, tokenizer.special_tokens):
        if not is_special:
            ids += tokenizer.encode(piece)
        elif len(piece) == 1:
            raise ScratchLLMError(
                f"the text contains {piece!r}, which this tokenizer can only read as a special token"
            )
        else:
            ids += encode_ordinary(tokenizer, piece[:1]) + encode_ordinary(tokenizer, piece[1:])
    return ids


def encode_parts(tokenizer: Any, parts: Sequence[tuple[str, bool]]) -> list[int]:
    """Encode ``(text, trusted)`` parts into one id list.

    Special-token strings in *trusted* parts (the template's own text) become special ids; every
    other character — all of the untrusted parts — is ordinary text, encoded in one run between
    special tokens (so the ids equal those of encoding the whole text at once, as in training).
    """
    ids: list[int] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            ids.extend(encode_ordinary(tokenizer, "".join(run)))
            run.clear()

    for text, trusted in parts:
        if not trusted:
            run.append(text)
            continue
        for piece, is_special in split_on_specials(text, tokenizer.special_tokens):
            if is_special:
                flush()
                ids.append(tokenizer.special_tokens[piece])
            else:
                run.append(piece)
    flush()
    return ids


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
        """The prompt as ``(text, trusted)`` parts (see :func:`encode_parts`)."""
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
        # The template text is trusted, the instruction is not: split the formatted prompt there.
        for i, piece in enumerate(template.format("\0").split("\0")):
            if i:
                parts.append((instruction, False))
            parts.append((piece, True))
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
    return encode_parts(tokenizer, chat_format.parts(messages))
