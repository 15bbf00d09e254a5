"""Data for BERT (masking, NSP pairs, special tokens) and seq2seq (date generator, TSV files)."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from scratchllm.data import mlm
from scratchllm.data import seq2seq as s2s
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import CharTokenizer


def bert_tokenizer() -> CharTokenizer:
    return mlm.with_special_tokens(CharTokenizer.train("abcdefghij. "), mlm.BERT_SPECIAL_TOKENS)


def test_with_special_tokens_appends_and_keeps_ids() -> None:
    base = CharTokenizer.train("hello world")
    tok = mlm.with_special_tokens(base, mlm.BERT_SPECIAL_TOKENS)
    assert tok.vocab_size == base.vocab_size + 4
    assert [tok.special_tokens[t] for t in mlm.BERT_SPECIAL_TOKENS] == list(
        range(base.vocab_size, base.vocab_size + 4)
    )
    assert tok.encode("hello") == base.encode("hello")
    allowed = tok.encode("he[MASK]o", allowed_special={"[MASK]"})
    assert allowed == [*base.encode("he"), tok.special_tokens["[MASK]"], *base.encode("o")]
    assert mlm.with_special_tokens(tok, mlm.BERT_SPECIAL_TOKENS) is tok


def test_with_special_tokens_on_bpe() -> None:
    from scratchllm.tokenizer.bpe import train_bpe

    base = train_bpe("the cat sat on the mat " * 20, 270)
    tok = mlm.with_special_tokens(base, mlm.BERT_SPECIAL_TOKENS)
    assert tok.special_tokens["[MASK]"] == base.vocab_size + 3
    assert tok.special_tokens["[MASK]"] in tok.encode("the [MASK] sat", allowed_special={"[MASK]"})
    assert tok.special_tokens["[MASK]"] not in tok.encode("the [MASK] sat"), "text unless allowed"


def test_masking_statistics_80_10_10() -> None:
    tok = bert_tokenizer()
    sp = mlm.BertSpecialIds.of(tok)
    rng = random.Random(0)
    ids = [rng.randrange(0, 12) for _ in range(40000)]  # ordinary tokens only
    inputs, labels = mlm.mask_tokens(ids, special=sp, vocab_size=tok.vocab_size, rng=rng)
    chosen = [i for i, lab in enumerate(labels) if lab != -100]
    assert abs(len(chosen) / len(ids) - 0.15) < 0.01
    assert all(labels[i] == ids[i] for i in chosen)
    masked = sum(inputs[i] == sp.mask for i in chosen) / len(chosen)
    same = sum(inputs[i] == ids[i] for i in chosen) / len(chosen)
    assert abs(masked - 0.8) < 0.02
    # "unchanged" = the 10 % kept + the random draws that happen to hit the same token (1/12 of 10 %).
    assert abs(same - (0.1 + 0.1 / 12)) < 0.015
    assert all(inputs[i] == ids[i] for i in range(len(ids)) if labels[i] == -100)
    assert not any(inputs[i] in (sp.pad, sp.cls, sp.sep) for i in chosen)


def test_special_positions_are_never_chosen() -> None:
    tok = bert_tokenizer()
    sp = mlm.BertSpecialIds.of(tok)
    ids = [sp.cls] + [1] * 50 + [sp.sep] + [2] * 50 + [sp.sep] + [sp.pad] * 10
    _, labels = mlm.mask_tokens(
        ids, special=sp, vocab_size=tok.vocab_size, rng=random.Random(1), mask_prob=0.9
    )
    assert all(labels[i] == -100 for i, t in enumerate(ids) if t in (sp.cls, sp.sep, sp.pad))


def test_nsp_pairs_are_half_real() -> None:
    tok = bert_tokenizer()
    sp = mlm.BertSpecialIds.of(tok)
    docs = [[[d * 10 + s % 10] * 3 for s in range(6)] for d in range(1, 30)]  # distinct sentences
    ex = mlm.PretrainingExamples(docs, special=sp, vocab_size=tok.vocab_size, context_length=16, mlm=False)
    rng = random.Random(2)
    labels, real_ok = [], True
    for _ in range(4000):
        e = ex.example(rng)
        labels.append(e.nsp_label)
        sep = e.input_ids.index(sp.sep)
        a, b = e.input_ids[1], e.input_ids[sep + 1]
        assert e.segment_ids == [0] * (sep + 1) + [1] * (len(e.input_ids) - sep - 1)
        if e.nsp_label == 0:
            real_ok &= b == a + 1 or (a % 10 == 9 and b == a - 9)
    assert real_ok
    assert abs(sum(labels) / len(labels) - 0.5) < 0.03


def test_split_documents() -> None:
    docs = mlm.split_documents("One. Two!\nStill two? Three.\n\n\nNew doc here.")
    assert docs == [["One.", "Two!", "Still two?", "Three."], ["New doc here."]]


def test_date_generator_formats_and_answers() -> None:
    pairs = s2s.date_pairs(3000, seed=0)
    assert len({s for s, _ in pairs}) == 3000
    for _, t in pairs:
        d = dt.date.fromisoformat(t)
        assert 1950 <= d.year <= 2049
    d = dt.date(1998, 3, 3)
    forms = s2s._formats(d)
    for expected in (
        "3rd of March 1998",
        "Mar 3, 1998",
        "1998.03.03",
        "03/03/1998",
        "3/3/98",
        "Tuesday, March 3, 1998",
    ):
        assert expected in forms
    assert "11th of November 2011" in s2s._formats(dt.date(2011, 11, 11))
    assert s2s.date_pairs(5, seed=7) == s2s.date_pairs(5, seed=7)
    train, val = s2s.date_task_splits(2000, 100)
    assert not {s for s, _ in train} & {s for s, _ in val}
    alphabet = set(s2s.date_task_alphabet())
    assert all(set(s) <= alphabet for s, _ in train + val)


def test_tsv_parsing_and_errors(tmp_path) -> None:
    good = tmp_path / "good.tsv"
    good.write_text("hello\tbonjour\n\ncat\tchat\n", encoding="utf-8")
    assert s2s.read_parallel_tsv(good) == [("hello", "bonjour"), ("cat", "chat")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("hello\tbonjour\nno tab here\n", encoding="utf-8")
    with pytest.raises(ScratchLLMError, match="line 2.*no tab"):
        s2s.read_parallel_tsv(bad)
    two = tmp_path / "two.tsv"
    two.write_text("a\tb\tc\n", encoding="utf-8")
    with pytest.raises(ScratchLLMError, match="line 1.*2 tabs"):
        s2s.read_parallel_tsv(two)
    with pytest.raises(ScratchLLMError, match="not found"):
        s2s.read_parallel_tsv(tmp_path / "missing.tsv")


def test_collate_pairs_framing() -> None:
    tok = mlm.with_special_tokens(CharTokenizer.train("abc", special_tokens=()), s2s.SEQ2SEQ_SPECIAL_TOKENS)
    sp = s2s.Seq2SeqSpecialIds(tok)
    enc = s2s.encode_pairs([("ab", "c"), ("a", "bca")], tok, max_len=10)
    batch = s2s.collate_pairs(enc, src_pad=sp.pad, tgt=sp)
    assert batch["src_ids"].tolist()[1] == [*tok.encode("a"), sp.eos, sp.pad]
    assert batch["src_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["tgt_in"].tolist()[0] == [sp.bos, *tok.encode("c"), sp.pad, sp.pad]
    assert batch["labels"].tolist()[0] == [*tok.encode("c"), sp.eos, -100, -100]
    with pytest.raises(ScratchLLMError, match="longer than"):
        s2s.encode_pairs([("abcabcabc", "a")], tok, max_len=5)
