"""Every number ``scratchllm eval`` reports, against a hand computation on tiny inputs."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from scratchllm.evaluate.lm import ContinuationScore, continuation_logprobs, evaluate_lm
from scratchllm.evaluate.metrics import character_error_rate, corpus_bleu, rouge_l
from scratchllm.evaluate.prompting import NORMALIZATIONS, Scored, normalized, prompted_metrics
from scratchllm.evaluate.seq2seq import output_metrics


def test_lm_loss_and_perplexity_by_hand(bigram):
    """Two non-overlapping windows of 4 over 9 tokens: the loss is the mean of 8 bigram NLLs."""
    m = bigram(5, context_length=4)
    tokens = np.array([0, 1, 2, 3, 4, 3, 2, 1, 0])
    out = evaluate_lm(m, tokens, context_length=4, batch_size=1)
    pairs = [(tokens[s + t], tokens[s + t + 1]) for s in (0, 4) for t in range(4)]
    hand = -sum(m.logp(a, b) for a, b in pairs) / len(pairs)
    assert out["tokens"] == 8 and out["windows"] == 2
    assert out["val_loss"] == pytest.approx(hand, rel=1e-6)
    assert out["perplexity"] == pytest.approx(math.exp(hand), rel=1e-6)


def test_continuation_logprobs_by_hand(bigram):
    m = bigram(6, context_length=4)
    reqs = [([0, 1], [2, 3]), ([5], [4]), ([0, 1, 2, 1, 5], [3])]
    got = continuation_logprobs(m, reqs, batch_size=2)
    assert got[0].logprob == pytest.approx(m.logp(1, 2) + m.logp(2, 3), abs=1e-6)
    assert got[0].tokens == 2 and got[0].dropped == 0 and got[0].read == 3
    assert got[1].logprob == pytest.approx(m.logp(5, 4), abs=1e-6)
    # 6 tokens do not fit a window of 4 (+1): the first context token goes, the continuation stays
    assert got[2].dropped == 1 and got[2].read == 4
    assert got[2].logprob == pytest.approx(m.logp(5, 3), abs=1e-6)
    greedy = int(torch.argmax(m.W[1]))
    assert continuation_logprobs(m, [([1], [greedy])])[0].greedy
    assert not continuation_logprobs(m, [([1], [(greedy + 1) % 6])])[0].greedy
    # batching and padding change nothing
    one_by_one = [continuation_logprobs(m, [r])[0].logprob for r in reqs]
    assert [g.logprob for g in got] == pytest.approx(one_by_one, abs=1e-6)


def test_length_normalisations_and_label_loss_by_hand():
    s = Scored(["a", "bbb"], [ContinuationScore(-2.0, 1, False), ContinuationScore(-3.0, 3, False)], [2, 6])
    assert [normalized(x, c, "none") for x, c in zip(s.scores, s.chars)] == [-2.0, -3.0]
    assert [normalized(x, c, "token") for x, c in zip(s.scores, s.chars)] == [-2.0, -1.0]
    assert [normalized(x, c, "char") for x, c in zip(s.scores, s.chars)] == [-1.0, -0.5]
    assert (s.pick("none"), s.pick("token"), s.pick("char")) == (0, 1, 1)
    # -log softmax([-2, -3])[0] = log(1 + e^-1)
    assert s.nll(0) == pytest.approx(math.log(1 + math.exp(-1)))
    tie = Scored(["x", "y"], [ContinuationScore(-1.0, 1, False)] * 2, [1, 1])
    assert tie.pick("char") == 0  # ties go to the first option
    m = prompted_metrics([s, tie], [1, 1], ["a", "bbb"], "char")
    assert m["accuracy"] == 0.5 and m["confusion_matrix"] == [[0, 0], [1, 1]]
    assert m["accuracy_by_normalization"] == {"none": 0.0, "token": 0.5, "char": 0.5}
    assert set(m["accuracy_by_normalization"]) == set(NORMALIZATIONS)
    assert m["loss"] == pytest.approx((s.nll(1) + math.log(2)) / 2)


def test_seq2seq_output_metrics_by_hand():
    hyps, refs = ["abc", "xy", "same"], ["abd", "xyz", "same"]
    out = output_metrics(hyps, refs, char_level=False)
    assert out["exact_match"] == pytest.approx(1 / 3)
    # edits: 1 (c->d) + 1 (insert z) + 0 over 3 + 3 + 4 reference characters
    assert out["cer"] == pytest.approx(2 / 10)
    assert character_error_rate(["", "ab"], ["a", ""]) == pytest.approx(3 / 1)


def test_bleu_by_hand():
    # 7 words, one wrong at the end: n-gram precisions 6/7, 5/6, 4/5, 3/4, no brevity penalty
    hand = 100 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25
    assert corpus_bleu(["a b c d e f g"], ["a b c d e f h"]) == pytest.approx(hand, rel=1e-6)
    assert corpus_bleu(["x y z w"], ["x y z w"]) == pytest.approx(100.0)


def test_rouge_l_by_hand():
    r = rouge_l("the cat sat", "the cat sat down")  # LCS 3: P = 1, R = 3/4
    assert r["precision"] == 1.0 and r["recall"] == 0.75
    assert r["f1"] == pytest.approx(2 * 0.75 / 1.75)


def test_masked_token_and_nsp_accuracy_by_hand():
    """evaluate_mlm's accuracies equal arg-max counting on the very batches it draws."""
    from scratchllm.data import mlm as mlm_data
    from scratchllm.evaluate.bert import evaluate_mlm, mlm_batch
    from scratchllm.model.bert import BertConfig, BertModel
    from scratchllm.tokenizer.char import CharTokenizer

    text = "The cat sat. The dog ran. A bird sang. It rained.\n\nFish swim. Cows moo. Owls hoot at night."
    tok = mlm_data.with_special_tokens(CharTokenizer.train(text), mlm_data.BERT_SPECIAL_TOKENS)
    docs = mlm_data.split_documents(text)
    ex = mlm_data.PretrainingExamples.from_text(docs, tok, context_length=40)
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(vocab_size=tok.vocab_size, context_length=40, n_layer=1, n_head=2, n_embd=16)
    ).eval()
    got = evaluate_mlm(model, ex, batch_size=4, max_batches=3)
    correct = masked = nsp = 0
    with torch.no_grad():
        for i in range(3):
            b = mlm_batch(ex, 4, random.Random(f"val/{i}"))
            out = model(b["input_ids"], b["segment_ids"], b["attention_mask"])
            mlm_logits, nsp_logits = out.mlm_logits, out.nsp_logits
            chosen = b["mlm_labels"] != -100
            correct += int((mlm_logits.argmax(-1)[chosen] == b["mlm_labels"][chosen]).sum())
            masked += int(chosen.sum())
            nsp += float((nsp_logits.argmax(-1) == b["nsp_labels"]).float().mean())
    assert got["masked_token_accuracy"] == pytest.approx(correct / masked)
    assert got["nsp_accuracy"] == pytest.approx(nsp / 3)
