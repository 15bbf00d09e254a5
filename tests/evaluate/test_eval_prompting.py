"""Zero-/few-shot prompting: which examples, in which order, what prompt, which label wins."""

from __future__ import annotations

import json
import random

import pytest

from scratchllm.data.classification import Example
from scratchllm.data.instruction import TEMPLATES
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluate.prompting import (
    Choice,
    PromptFormat,
    answer_by_prompting,
    choose_choice_shots,
    choose_shots,
    classify_by_prompting,
    read_choices,
)
from scratchllm.tokenizer.char import CharTokenizer

POOL = [Example(f"{label} text {i}", label) for label in ("spam", "ham", "eggs") for i in range(5)]


def test_choose_shots_follows_the_documented_draw():
    """Shuffle the sorted labels (who gets the remainder), sample per label in sorted order, shuffle."""
    got = choose_shots(POOL, 4, ["spam", "ham", "eggs"], seed=7)
    rng = random.Random("7/shots")
    labels = ["eggs", "ham", "spam"]
    order = list(labels)
    rng.shuffle(order)
    counts = {lab: 1 + (1 if i < 1 else 0) for i, lab in enumerate(order)}
    want = []
    for lab in labels:
        want += rng.sample([e for e in POOL if e.label == lab], counts[lab])
    rng.shuffle(want)
    assert got == want
    # and the same draw, written out, so a change of algorithm cannot go unnoticed
    assert [e.text for e in got] == ["ham text 2", "spam text 2", "eggs text 4", "ham text 4"]


def test_choose_shots_is_balanced_seeded_and_checked():
    for k in range(0, 10):
        shots = choose_shots(POOL, k, ["spam", "ham", "eggs"], seed=1)
        counts = [sum(e.label == lab for e in shots) for lab in ("eggs", "ham", "spam")]
        assert sum(counts) == k and max(counts) - min(counts) <= 1
        assert len({id(e) for e in shots}) == k and all(e in POOL for e in shots)
    assert choose_shots(POOL, 5, ["spam", "ham", "eggs"], seed=1) == choose_shots(
        POOL, 5, ["spam", "ham", "eggs"], seed=1
    )
    assert choose_shots(POOL, 5, ["spam", "ham", "eggs"], seed=1) != choose_shots(
        POOL, 5, ["spam", "ham", "eggs"], seed=2
    )
    with pytest.raises(ScratchLLMError, match="needs 6 examples labelled"):
        choose_shots(POOL, 18, ["spam", "ham", "eggs"], seed=0)
    assert (
        choose_choice_shots([Choice("q", ["a", "b"], 0)] * 3, 2, seed=0) == [Choice("q", ["a", "b"], 0)] * 2
    )


def test_prompt_text_exactly():
    shots = [Example("win cash now", "spam"), Example("lunch at one?", "ham")]
    plain = PromptFormat()
    assert plain.classification_context(shots, "hello there", ["ham", "spam"]) == (
        "Label each text as ham or spam.\n\n"
        "Text: win cash now\nLabel: spam\n\n"
        "Text: lunch at one?\nLabel: ham\n\n"
        "Text: hello there\nLabel:"
    )
    assert plain.classification_context([], "x", ["a", "b", "c"]).startswith(
        "Label each text as a, b or c.\n\n"
    )
    assert plain.continuation("spam") == " spam\n"
    inst = PromptFormat("instruct", TEMPLATES["phi3"])
    assert inst.classification_context(shots[:1], "hello", ["ham", "spam"]) == (
        "<|user|>\nLabel the text as ham or spam.\n\nExamples:\n\nText: win cash now\nLabel: spam\n\nhello\n"
        "<|assistant|>\n"
    )
    assert inst.continuation("spam") == "spam"
    tok = CharTokenizer.train("spam ham\n")
    assert inst.continuation_ids(tok, "ham") == [*tok.encode("ham"), tok.eot_id]
    assert plain.continuation_ids(tok, "ham") == tok.encode(" ham\n")
    q = [Choice("2+2?", ["4", "5"], 0)]
    assert plain.choice_context(q, "3+3?") == "Question: 2+2?\nAnswer: 4\n\nQuestion: 3+3?\nAnswer:"
    with pytest.raises(ScratchLLMError, match="template"):
        PromptFormat("instruct")


def test_label_scoring_matches_a_hand_computation(bigram):
    """Each label's score is the bigram sum over ``context + continuation``; the per-character
    winner is the prediction."""
    rows = [Example("ab ba", "aa"), Example("bb", "b"), Example("a", "aa"), Example("ba ab", "b")]
    pool = [Example("aa a", "aa"), Example("b b", "b")]
    text = "".join(r.text + r.label for r in rows + pool) + "Label each text as or.\n:TL"
    tok = CharTokenizer.train(text)
    model = bigram(tok.vocab_size, context_length=512, seed=3)
    out = classify_by_prompting(model, tok, rows, pool, ["b", "aa"], shots=2, seed=0)
    fmt = PromptFormat()
    examples = choose_shots(pool, 2, ["aa", "b"], seed=0)
    preds, by_norm = [], {"none": [], "token": [], "char": []}
    for r in rows:
        ids_ctx = tok.encode(fmt.classification_context(examples, r.text, ["aa", "b"]))
        scores = {}
        for lab in ("aa", "b"):
            cont = tok.encode(f" {lab}\n")
            ids = ids_ctx + cont
            lp = sum(model.logp(ids[i - 1], ids[i]) for i in range(len(ids_ctx), len(ids)))
            scores[lab] = {"none": lp, "token": lp / len(cont), "char": lp / len(f" {lab}\n")}
        for how in by_norm:
            by_norm[how].append(max(("aa", "b"), key=lambda lab, h=how: (scores[lab][h], lab == "aa")))
        preds.append(by_norm["char"][-1])
    labels = ["aa", "b"]
    truth = [labels.index(r.label) for r in rows]
    assert out["labels"] == labels and out["shots"] == 2 and out["normalization"] == "char"
    assert [e["text"] for e in out["examples"]] == [e.text for e in examples]
    confusion = [[0, 0], [0, 0]]
    for t, p in zip(truth, preds):
        confusion[t][labels.index(p)] += 1
    assert out["confusion_matrix"] == confusion
    for how, got in by_norm.items():
        want = sum(labels.index(p) == t for p, t in zip(got, truth)) / len(rows)
        assert out["accuracy_by_normalization"][how] == pytest.approx(want)
    assert out["prompt"] == fmt.classification_context(examples, rows[0].text, labels)


def test_multiple_choice_reading_and_scoring(tmp_path, bigram):
    path = tmp_path / "mc.jsonl"
    path.write_text(
        json.dumps({"question": "x?", "choices": ["a", "b"], "answer": 1})
        + "\n"
        + json.dumps({"question": "y?", "choices": ["a", "b", "ab"], "answer": "ab"})
        + "\n"
    )
    qs = read_choices(path)
    assert qs == [Choice("x?", ["a", "b"], 1), Choice("y?", ["a", "b", "ab"], 2)]
    tok = CharTokenizer.train("Question: x? y?\nAnswer: ab\n")
    out = answer_by_prompting(bigram(tok.vocab_size, 256), tok, qs, [], normalization="none")
    assert out["labels"] == ["choice 1", "choice 2", "choice 3"] and out["n"] == 2
    assert sum(map(sum, out["confusion_matrix"])) == 2
    for bad, msg in (
        ({"question": "q", "choices": ["a"], "answer": 0}, "at least 2"),
        ({"question": "q", "choices": ["a", "b"], "answer": 2}, "'answer' must be"),
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "no 'question'"),
        ({"question": "q", "choices": ["a", "b"], "answer": True}, "'answer' must be"),
    ):
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ScratchLLMError, match=msg):
            read_choices(path)


def test_options_that_encode_alike_are_refused(bigram):
    tok = CharTokenizer.train("Label each text as or.\nText: hi")
    with pytest.raises(ScratchLLMError, match="cannot tell them apart"):
        classify_by_prompting(
            bigram(tok.vocab_size, 256),
            tok,
            [Example("hi", "1")],
            [],
            ["1", "2"],
            encode=lambda t: tok.encode("".join(c for c in t if c in tok.stoi)),
        )
