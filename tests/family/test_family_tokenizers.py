"""BERT and seq2seq on a trained tokenizer (--tokenizer): whole-word masking, word-level fill-mask,
resume keeping the run's tokenizer, and the GPT refusing a tokenizer its shards were not made with."""

from __future__ import annotations

import json
import random

import pytest

from scratchllm.cli.main import main
from scratchllm.data import mlm
from scratchllm.tokenizer import load_tokenizer
from scratchllm.tokenizer.bpe import train_bpe
from scratchllm.tokenizer.specials import BERT_SPECIAL_TOKENS, SEQ2SEQ_SPECIAL_TOKENS, with_special_tokens

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
#: each verb has one object, so a model that reads the sentence knows the masked word.
PAIRS = [("reads", "book"), ("eats", "apple"), ("drives", "car"), ("drinks", "tea"), ("plays", "piano")]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        verb, obj = rng.choice(PAIRS)
        out.append(f"{rng.choice(NAMES)} {verb} the {obj}.")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """One sentence per document (blank lines between), and a BPE vocabulary in which every word
    of it is one token."""
    d = tmp_path_factory.mktemp("corpus")
    text = "\n\n".join(sentences(600)) + "\n"
    (d / "t.txt").write_text(text, encoding="utf-8")
    train_tokenizer("bpe", d / "t.txt", d / "bpe.json", 420)
    return d


def sets(**keys) -> list[str]:
    """``--set key=value`` for each keyword."""
    return [a for k, v in keys.items() for a in ("--set", f"{k}={v}")]


def train_tokenizer(kind: str, text_file, out, vocab: int) -> None:
    args = ["tokenizer", "train", "--kind", kind, "--vocab-size", str(vocab), "--input", str(text_file)]
    assert main([*args, "--out", str(out)]) == 0


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- masking data


def test_whole_word_masking_masks_every_token_of_a_chosen_word() -> None:
    with open(__file__, encoding="utf-8") as f:
        text = f.read()  # prose and code: plenty of multi-token words
    tok = with_special_tokens(train_bpe(text, 300), BERT_SPECIAL_TOKENS)
    sp = mlm.BertSpecialIds.of(tok)
    words = tok.encode_words(" ".join(text.split()))
    ids, starts = mlm.word_start_flags(words)
    assert sum(len(w) > 1 for w in words) > 300

    def spans():
        k = 0
        for w in words:
            yield range(k, k + len(w))
            k += len(w)

    _, labels = mlm.mask_tokens(
        ids, special=sp, vocab_size=tok.vocab_size, rng=random.Random(0), mask_prob=0.2, word_starts=starts
    )
    chosen = [all(labels[i] != -100 for i in span) for span in spans()]
    assert all(c or all(labels[i] == -100 for i in span) for c, span in zip(chosen, spans(), strict=True))
    assert abs(sum(chosen) / len(words) - 0.2) < 0.03
    # Token by token (the default), long words end up half masked.
    _, labels = mlm.mask_tokens(
        ids, special=sp, vocab_size=tok.vocab_size, rng=random.Random(0), mask_prob=0.2
    )
    assert any(0 < sum(labels[i] != -100 for i in span) < len(span) for span in spans())


def test_random_replacements_are_ordinary_tokens(corpus) -> None:
    from scratchllm.train.pretrain import setup_pretraining

    small = ["n_layer=1", "n_embd=16", "n_head=2", "context_length=16", "nsp=false"]
    setup = setup_pretraining(
        corpus / "t.txt", corpus / "unused", arch="bert", tokenizer=corpus / "bpe.json", overrides=small
    )
    specials = set(setup.tokenizer.special_tokens.values())
    assert {"<|endoftext|>", *BERT_SPECIAL_TOKENS} <= set(setup.tokenizer.special_tokens)
    random_ids = setup.task.train_examples.random_ids
    assert len(random_ids) == setup.tokenizer.vocab_size - len(specials)
    assert not specials & set(random_ids)


# ----------------------------------------------------------------------------- BERT


def test_bert_on_bpe_fills_a_word_and_resumes_with_its_tokenizer(corpus, tmp_path, capsys) -> None:
    run = tmp_path / "bert"
    args = ["train", "--arch", "bert", "--data", str(corpus / "t.txt"), "--out", str(run), "--quiet"]
    args += ["--tokenizer", str(corpus / "bpe.json")]
    args += sets(n_layer=2, n_embd=64, n_head=4, context_length=16, batch_size=32, dropout=0, nsp="false")
    args += sets(norm_position="pre", lr=3e-3, warmup_steps=10, eval_steps=4, eval_interval=220)
    args += sets(whole_word_mask="true", mask_prob=0.3)
    assert main([*args, "--set", "max_steps=220"]) == 0
    base = load_tokenizer(corpus / "bpe.json")
    tok = load_tokenizer(run / "tokenizer.json")
    assert tok.kind == "bpe" and tok.vocab_size == base.vocab_size + 4
    assert tok.special_tokens["[MASK]"] == base.vocab_size + 3
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["tokenizer"] == {"kind": "bpe", "vocab_size": tok.vocab_size}
    assert config["model"]["vocab_size"] == tok.vocab_size and config["model"]["whole_word_mask"] is True
    capsys.readouterr()

    # Word-level fill-mask: the mask takes the space before it and is filled with a whole word.
    for sentence, word in [("bob reads the [MASK].", " book"), ("erin drinks the [MASK].", " tea")]:
        assert main(["fill-mask", "--model", str(run), "--text", sentence, "--top-k", "3", "--json"]) == 0
        best = json.loads(capsys.readouterr().out)[0]["candidates"][0]
        assert best["token"] == word and best["text"] == sentence.replace(" [MASK]", word)
    assert (
        main(["fill-mask", "--model", str(run), "--text", "grace [MASK] the piano. bob [MASK] the car."]) == 0
    )
    out = capsys.readouterr().out
    assert "grace [MASK] the piano. bob" in out and "the car." in out  # the other mask keeps its space

    # The same command plus --resume continues with the run's tokenizer...
    assert main([*args, "--set", "max_steps=225", "--resume"]) == 0
    assert [e for e in metrics(run) if e["event"] == "train"][-1]["step"] == 225
    assert load_tokenizer(run / "tokenizer.json").to_dict() == tok.to_dict()
    # ...and another tokenizer is refused, before anything changes.
    other = tmp_path / "other.json"
    train_bpe((corpus / "t.txt").read_text() + " zebra", 400).save(other)
    bad = [a if a != str(corpus / "bpe.json") else str(other) for a in args]
    capsys.readouterr()
    assert main([*bad, "--set", "max_steps=230", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "is not the tokenizer the run" in err and "Traceback" not in err
    assert [e for e in metrics(run) if e["event"] == "train"][-1]["step"] == 225


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_bert_builds_on_any_tokenizer_kind(corpus, tmp_path, kind) -> None:
    from scratchllm.train.pretrain import setup_pretraining

    tok_path = tmp_path / "tok.json"
    train_tokenizer(kind, corpus / "t.txt", tok_path, 300)
    base = load_tokenizer(tok_path)
    small = ["n_layer=1", "n_embd=16", "n_head=2", "context_length=16", "nsp=false", "whole_word_mask=true"]
    setup = setup_pretraining(
        corpus / "t.txt", tmp_path / "run", arch="bert", tokenizer=tok_path, overrides=small
    )
    assert setup.tokenizer.kind == kind and setup.model_config.vocab_size == base.vocab_size + 4
    sentence = setup.task.train_examples.docs[0][0]
    assert setup.tokenizer.decode(sentence) in (corpus / "t.txt").read_text()


def test_gpt2_vocabulary_for_both_families(gpt2_files, tmp_path) -> None:
    from scratchllm.train.pretrain import setup_pretraining

    small = ["n_layer=1", "n_embd=16", "n_head=2", "context_length=32"]
    bert = setup_pretraining("default", tmp_path / "b", arch="bert", tokenizer=gpt2_files, overrides=small)
    assert bert.model_config.vocab_size == 50257 + 4
    assert bert.tokenizer.special_tokens["[MASK]"] == 50260
    s2s = setup_pretraining("dates", tmp_path / "s", arch="seq2seq", tokenizer=gpt2_files, overrides=small)
    assert s2s.model_config.tgt_vocab_size == 50257 + 3
    assert (s2s.model_config.pad_id, s2s.model_config.bos_id, s2s.model_config.eos_id) == (
        50257,
        50258,
        50259,
    )


# ----------------------------------------------------------------------------- seq2seq


@pytest.mark.parametrize("kind", ["bpe", "word", "char"])
def test_seq2seq_on_a_trained_tokenizer_trains_resumes_translates(tmp_path, capsys, kind) -> None:
    from scratchllm.data.seq2seq import date_pairs

    pairs = date_pairs(300, seed=1)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"{s} {t}" for s, t in pairs), encoding="utf-8")
    tok_path = tmp_path / "tok.json"
    train_tokenizer(kind, text, tok_path, 400)
    run = tmp_path / "s2s"
    args = ["train", "--arch", "seq2seq", "--data", str(tsv), "--tokenizer", str(tok_path), "--out", str(run)]
    args += ["--quiet", *sets(n_layer=1, n_embd=32, n_head=2, batch_size=16)]
    args += sets(eval_steps=1, warmup_steps=2, eval_interval=6)
    assert main([*args, "--set", "max_steps=6"]) == 0
    tok = load_tokenizer(run / "tokenizer.json")
    base = load_tokenizer(tok_path)
    assert tok.kind == kind and tok.vocab_size == base.vocab_size + 3
    assert [tok.special_tokens[s] for s in SEQ2SEQ_SPECIAL_TOKENS] == list(
        range(base.vocab_size, tok.vocab_size)
    )
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["tgt_vocab_size"] == tok.vocab_size and cfg["data"]["tokenizer"]["kind"] == kind
    # resume without --tokenizer: the run's own tokenizer.json is used
    resume = ["train", "--arch", "seq2seq", "--data", str(tsv), "--out", str(run), "--quiet", "--resume"]
    assert main([*resume, "--set", "max_steps=8"]) == 0
    assert [e for e in metrics(run) if e["event"] == "train"][-1]["step"] == 8
    capsys.readouterr()
    assert (
        main(["translate", "--model", str(run), "--text", pairs[0][0], "--beam", "2", "--max-len", "8"]) == 0
    )
    assert capsys.readouterr().out.strip() != "" or kind == "word"


def test_gpt_refuses_a_tokenizer_its_shards_were_not_made_with(tmp_path, capsys) -> None:
    text = tmp_path / "t.txt"
    text.write_text(" ".join(sentences(400)), encoding="utf-8")
    for kind in ("char", "bpe"):
        train_tokenizer(kind, text, tmp_path / f"{kind}.json", 300)
    prepare = ["prepare", "--tokenizer", str(tmp_path / "char.json"), "--input", str(text)]
    assert main([*prepare, "--out", str(tmp_path / "data"), "--quiet"]) == 0
    capsys.readouterr()
    train = ["train", "--data", str(tmp_path / "data"), "--preset", "tiny", "--quiet"]
    train += sets(max_steps=1, eval_steps=0, context_length=16)
    assert main([*train, "--out", str(tmp_path / "r1"), "--tokenizer", str(tmp_path / "bpe.json")]) == 2
    assert "prepared with a different tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists()
    assert main([*train, "--out", str(tmp_path / "r2"), "--tokenizer", str(tmp_path / "char.json")]) == 0


def test_fill_mask_reads_only_the_masks_in_user_text() -> None:
    """fill-mask opts in to [MASK] alone: a "[CLS]" or "<|endoftext|>" typed into the text is text."""
    import torch

    from scratchllm.generate.fill_mask import fill_mask
    from scratchllm.model.bert import BertConfig, BertModel

    text = "bob reads the book. <|endoftext|> [CLS] alice [SEP] eats"
    tok = with_special_tokens(train_bpe(text * 10, 300), BERT_SPECIAL_TOKENS)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, context_length=64, n_layer=1, n_head=2, n_embd=16)
    model = BertModel(cfg).eval()
    seen: list[list[int]] = []
    forward = model.forward
    model.forward = lambda ids, *a, **k: (seen.append(ids[0].tolist()), forward(ids, *a, **k))[1]
    out = fill_mask(model, tok, "bob [MASK] the <|endoftext|>[CLS] [MASK].", top_k=2)
    assert len(out) == 2 and all(len(r["candidates"]) == 2 for r in out)
    (ids,) = seen
    sp = tok.special_tokens
    assert ids[0] == sp["[CLS]"] and ids[-1] == sp["[SEP]"] and ids.count(sp["[MASK]"]) == 2
    inner = ids[1:-1]
    assert sp["[CLS]"] not in inner and sp["<|endoftext|>"] not in inner, "only [MASK] is read as a special"
    assert out[1]["candidates"][0]["text"].startswith("bob [MASK] the <|endoftext|>[CLS]")
