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
    word_starts: Sequence[bool] | None = None,
) -> tuple[list[int], list[int]]:
    """Apply BERT's masking to one sequence; return ``(inputs, labels)``.

    Each non-special position is chosen with probability ``mask_prob``. A chosen position gets
    label = its original token and its input becomes ``[MASK]`` (80 %), a random ordinary token
    (10 %, drawn from ``random_ids``, by default every id that is not one of the four specials)
    or stays unchanged (10 %). Unchosen positions get label ``-100``.

    **Whole-word masking** (``word_starts``: True where a token begins a word, e.g. from
    :meth:`~scratchllm.tokenizer.base.Tokenizer.encode_words`): the choice is made per *word*, and
    every token of a chosen word is masked (each token still gets its own 80/10/10 draw, as in
    Google's and Hugging Face's implementations). With a subword tokenizer this stops the model
    from guessing ``"ing"`` merely because ``" walk"`` is still visible. The expected share of
    masked tokens stays ``mask_prob``.
    """
    skip = {special.pad, special.cls, special.sep, special.mask}
    inputs, labels = list(ids), [IGNORE_INDEX] * len(ids)
    if word_starts is not None and len(word_starts) != len(ids):
        raise ValueError(f"word_starts has {len(word_starts)} entries for {len(ids)} tokens")
    i, n = 0, len(ids)
    while i < n:
        end = i + 1  # one token, or (whole-word masking) up to the next word start
        if word_starts is not None:
            while end < n and not word_starts[end] and ids[end] not in skip:
                end += 1
        if ids[i] in skip or rng.random() >= mask_prob:
            i = end
            continue
        for j in range(i, end):
            labels[j] = ids[j]
            r = rng.random()
            if r < 0.8:
                inputs[j] = special.mask
            elif r < 0.9:
                if random_ids is not None:
                    inputs[j] = random_ids[rng.randrange(len(random_ids))]
                else:
                    while (t := rng.randrange(vocab_size)) in skip:
                        pass
                    inputs[j] = t
        i = end
    return inputs, labels


def word_start_flags(words: Sequence[Sequence[int]]) -> tuple[list[int], list[bool]]:
    """Words (lists of ids, from ``encode_words``) → ``(ids, word_starts)`` for :func:`mask_tokens`."""
    ids: list[int] = []
    starts: list[bool] = []
    for word in words:
        ids.extend(word)
        starts.extend(k == 0 for k in range(len(word)))
    return ids, starts


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

    ``word_starts`` (the same nesting as ``documents``, one bool per token) turns on whole-word
    masking; ``random_ids`` are the ids the 10 % random replacements draw from (default: every
    id but the four BERT specials).
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
        word_starts: list[list[list[bool]]] | None = None,
        random_ids: Sequence[int] | None = None,
    ) -> None:
        if not mlm and not nsp:
            raise ScratchLLMError("BERT pretraining needs at least one objective; enable mlm or nsp")
        if context_length < 5:
            raise ScratchLLMError(f"context_length {context_length} is too short for BERT (need >= 5)")
        if word_starts is not None and [list(map(len, d)) for d in word_starts] != [
            list(map(len, d)) for d in documents
        ]:
            raise ValueError("word_starts must have one flag per token of documents")
        keep = [k for k, d in enumerate(documents) if d]
        self.docs = [documents[k] for k in keep]
        self.word_starts = None if word_starts is None else [word_starts[k] for k in keep]
        self.random_ids = None if random_ids is None else list(random_ids)
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
        whole_word_mask: bool = False,
    ) -> PretrainingExamples:
        """Examples from documents of sentence *strings*, encoded with ``tokenizer`` (which must hold
        BERT's special tokens: :func:`with_special_tokens`) — the one way training and ``eval`` build
        them, so both mask alike. Random replacements draw from ordinary tokens only (never
        ``[MASK]``, ``[PAD]``, ``<|endoftext|>``...); ``whole_word_mask`` masks whole words
        (needs a tokenizer with ``encode_words``)."""
        specials = set(tokenizer.special_tokens.values())
        random_ids = [i for i in range(tokenizer.vocab_size) if i not in specials]
        starts = None
        if whole_word_mask:
            flagged = [[word_start_flags(tokenizer.encode_words(s)) for s in doc] for doc in documents]
            ids = [[i for i, _ in doc] for doc in flagged]
            starts = [[f for _, f in doc] for doc in flagged]
        else:
            ids = [[tokenizer.encode(s) for s in doc] for doc in documents]
        return cls(
            ids,
            special=BertSpecialIds.of(tokenizer),
            vocab_size=tokenizer.vocab_size,
            context_length=context_length,
            mlm=mlm,
            nsp=nsp,
            mask_prob=mask_prob,
            word_starts=starts,
            random_ids=random_ids,
        )

    def _sentence(self, d: int, s: int) -> tuple[list[int], list[bool]]:
        """Token ids of one sentence and, with whole-word masking, its word-start flags."""
        ids = list(self.docs[d][s])
        return ids, (list(self.word_starts[d][s]) if self.word_starts is not None else [True] * len(ids))

    def example(self, rng: random.Random) -> PretrainingExample:
        sp = self.special
        if self.nsp:
            d, s = self.pairs[rng.randrange(len(self.pairs))]
            a, a_starts = self._sentence(d, s)
            if rng.random() < 0.5:
                (b, b_starts), label = self._sentence(d, s + 1), 0
            else:
                # A random sentence that is not the true next one (from anywhere in the corpus).
                while True:
                    d2, s2 = self.flat[rng.randrange(len(self.flat))]
                    if (d2, s2) != (d, s + 1) or len(self.flat) == 1:
                        break
                (b, b_starts), label = self._sentence(d2, s2), 1
            _truncate_pair(a, b, self.context_length - 3)
            a_starts, b_starts = a_starts[: len(a)], b_starts[: len(b)]
            ids = [sp.cls, *a, sp.sep, *b, sp.sep]
            starts = [True, *a_starts, True, *b_starts, True]
            segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        else:
            d, s = self.flat[rng.randrange(len(self.flat))]
            body: list[int] = []
            body_starts: list[bool] = []
            for k in range(s, len(self.docs[d])):
                ids_k, starts_k = self._sentence(d, k)
                body.extend(ids_k)
                body_starts.extend(starts_k)
                if len(body) >= self.context_length - 2:
                    break
            body, body_starts = body[: self.context_length - 2], body_starts[: self.context_length - 2]
            ids, segments, label = [sp.cls, *body, sp.sep], [0] * (len(body) + 2), IGNORE_INDEX
            starts = [True, *body_starts, True]
        if self.mlm:
            inputs, labels = mask_tokens(
                ids,
                special=sp,
                vocab_size=self.vocab_size,
                rng=rng,
                mask_prob=self.mask_prob,
                random_ids=self.random_ids,
                word_starts=starts if self.word_starts is not None else None,
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
