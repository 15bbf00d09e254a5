"""BERT's pretraining data: masked language modelling (MLM) and next-sentence prediction (NSP).

BERT learns from plain text with two self-made exercises:

* **MLM** — hide 15 % of the tokens and ask the model to recover them from *both* sides. Of the
  chosen tokens 80 % become ``[MASK]``, 10 % a random token, 10 % stay unchanged, so the model
  cannot assume that only ``[MASK]`` positions matter (at fine-tuning time there is no ``[MASK]``).
  The loss is taken on the chosen positions only; every other label is ``-100`` (ignored).
* **NSP** — feed two sentences ``[CLS] A [SEP] B [SEP]``; half the time B really follows A, half
  the time B is a random sentence. The ``[CLS]`` output is classified as *is-next* (label 0) or
  *random* (label 1) — the same convention as Hugging Face's ``BertForPreTraining``.

Input text: documents are separated by blank lines; within a document, sentences end at ``.``,
``!`` or ``?`` followed by white space (lines inside a paragraph are joined). That is enough for
prose such as the embedded default corpus, tinyshakespeare or a book.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.specials import (  # noqa: F401  (re-exported: the data's vocabulary)
    BERT_SPECIAL_TOKENS,
    CLS,
    MASK,
    PAD,
    SEP,
    BertSpecialIds,
    with_special_tokens,
)

IGNORE_INDEX = -100

# ----------------------------------------------------------------------------- text → sentences

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_documents(text: str) -> list[list[str]]:
    """Text → documents (split on blank lines) → sentences. Empty pieces are dropped."""
    docs = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        sentences = [s for s in _SENTENCE_END.split(para) if s]
        if sentences:
            docs.append(sentences)
    return docs


def split_documents_for_eval(docs: list[list[str]], seed: int) -> tuple[list[list[str]], list[list[str]]]:
    """Hold out ~10 % of the documents (at least one) for evaluation; split sentences if only one."""
    if len(docs) == 1:
        sents = docs[0]
        cut = max(2, len(sents) // 10)
        return [sents[:-cut]], [sents[-cut:]]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, len(docs) // 10)
    return [docs[i] for i in order[n_val:]], [docs[i] for i in order[:n_val]]


# ----------------------------------------------------------------------------- masking


def mask_tokens(
    ids: Sequence[int],
    *,
    special: BertSpecialIds,
    vocab_size: int,
    rng: random.Random,
    mask_prob: float = 0.15,
    random_ids: Sequence[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Apply BERT's masking to one sequence; return ``(inputs, labels)``.

    Each non-special position is chosen with probability ``mask_prob``. A chosen position gets
    label = its original token and its input becomes ``[MASK]`` (80 %), a random ordinary token
    (10 %, drawn from ``random_ids``, by default every id that is not one of the four specials)
    or stays unchanged (10 %). Unchosen positions get label ``-100``.
    """
    skip = {special.pad, special.cls, special.sep, special.mask}
    inputs, labels = list(ids), [IGNORE_INDEX] * len(ids)
    for i, tok in enumerate(ids):
        if tok in skip or rng.random() >= mask_prob:
            continue
        labels[i] = tok
        r = rng.random()
        if r < 0.8:
            inputs[i] = special.mask
        elif r < 0.9:
            if random_ids is not None:
                inputs[i] = random_ids[rng.randrange(len(random_ids))]
            else:
                while (t := rng.randrange(vocab_size)) in skip:
                    pass
                inputs[i] = t
    return inputs, labels


# ----------------------------------------------------------------------------- sentence pairs


@dataclass
class PretrainingExample:
    input_ids: list[int]
    segment_ids: list[int]
    mlm_labels: list[int]
    nsp_label: int  # 0 = B follows A, 1 = B is random (-100 when NSP is off)


def _truncate_pair(a: list[int], b: list[int], budget: int) -> None:
    """Trim the longer of the two from the end until both fit in ``budget`` tokens."""
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()


class PretrainingExamples:
    """Draws BERT pretraining examples from tokenized documents.

    ``documents`` is a list of documents, each a list of sentences, each a list of token ids.
    With ``nsp=True`` an example is ``[CLS] A [SEP] B [SEP]`` with segment ids 0…0 1…1; with
    ``nsp=False`` it is ``[CLS] sentences… [SEP]`` packed up to ``context_length``.
    """

    def __init__(
        self,
        documents: list[list[list[int]]],
        *,
        special: BertSpecialIds,
        vocab_size: int,
        context_length: int,
        mlm: bool = True,
        nsp: bool = True,
        mask_prob: float = 0.15,
    ) -> None:
        if not mlm and not nsp:
            raise ScratchLLMError("BERT pretraining needs at least one objective; enable mlm or nsp")
        if context_length < 5:
            raise ScratchLLMError(f"context_length {context_length} is too short for BERT (need >= 5)")
        self.docs = [d for d in documents if d]
        self.flat = [(d, s) for d, doc in enumerate(self.docs) for s in range(len(doc))]
        self.pairs = [(d, s) for d, doc in enumerate(self.docs) for s in range(len(doc) - 1)]
        if nsp and not self.pairs:
            raise ScratchLLMError(
                "next-sentence prediction needs documents with at least two sentences; "
                "give more text or turn NSP off with --set nsp=false"
            )
        if not self.flat:
            raise ScratchLLMError("no sentences found in the BERT training text")
        self.special, self.vocab_size, self.context_length = special, vocab_size, context_length
        self.mlm, self.nsp, self.mask_prob = mlm, nsp, mask_prob

    @classmethod
    def from_text(
        cls,
        documents: Sequence[Sequence[str]],
        tokenizer: Any,
        *,
        context_length: int,
        mlm: bool = True,
        nsp: bool = True,
        mask_prob: float = 0.15,
    ) -> PretrainingExamples:
        """Examples from documents of sentence *strings*, encoded with ``tokenizer`` (which must hold
        BERT's special tokens: :func:`with_special_tokens`)."""
        return cls(
            [[tokenizer.encode(s) for s in doc] for doc in documents],
            special=BertSpecialIds.of(tokenizer),
            vocab_size=tokenizer.vocab_size,
            context_length=context_length,
            mlm=mlm,
            nsp=nsp,
            mask_prob=mask_prob,
        )

    def example(self, rng: random.Random) -> PretrainingExample:
        sp = self.special
        if self.nsp:
            d, s = self.pairs[rng.randrange(len(self.pairs))]
            a = list(self.docs[d][s])
            if rng.random() < 0.5:
                b, label = list(self.docs[d][s + 1]), 0
            else:
                # A random sentence that is not the true next one (from anywhere in the corpus).
                while True:
                    d2, s2 = self.flat[rng.randrange(len(self.flat))]
                    if (d2, s2) != (d, s + 1) or len(self.flat) == 1:
                        break
                b, label = list(self.docs[d2][s2]), 1
            _truncate_pair(a, b, self.context_length - 3)
            ids = [sp.cls, *a, sp.sep, *b, sp.sep]
            segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        else:
            d, s = self.flat[rng.randrange(len(self.flat))]
            body: list[int] = []
            for sentence in self.docs[d][s:]:
                body.extend(sentence)
                if len(body) >= self.context_length - 2:
                    break
            body = body[: self.context_length - 2]
            ids, segments, label = [sp.cls, *body, sp.sep], [0] * (len(body) + 2), IGNORE_INDEX
        if self.mlm:
            inputs, labels = mask_tokens(
                ids, special=sp, vocab_size=self.vocab_size, rng=rng, mask_prob=self.mask_prob
            )
        else:
            inputs, labels = ids, [IGNORE_INDEX] * len(ids)
        return PretrainingExample(inputs, segments, labels, label)


def collate(examples: list[PretrainingExample], pad_id: int) -> dict:
    """Pad a list of examples to the longest one → dict of int64 tensors.

    Keys: ``input_ids``, ``segment_ids``, ``attention_mask`` (1 real / 0 padding), ``mlm_labels``
    ``[B,T]`` and ``nsp_labels`` ``[B]``.
    """
    import torch

    T = max(len(e.input_ids) for e in examples)

    def pad(seq: list[int], value: int) -> list[int]:
        return seq + [value] * (T - len(seq))

    return {
        "input_ids": torch.tensor([pad(e.input_ids, pad_id) for e in examples]),
        "segment_ids": torch.tensor([pad(e.segment_ids, 0) for e in examples]),
        "attention_mask": torch.tensor([pad([1] * len(e.input_ids), 0) for e in examples]),
        "mlm_labels": torch.tensor([pad(e.mlm_labels, IGNORE_INDEX) for e in examples]),
        "nsp_labels": torch.tensor([e.nsp_label for e in examples]),
    }
