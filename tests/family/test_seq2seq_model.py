"""The encoder-decoder transformer: masks, decoding, cross-attention, and learning the date task."""

from __future__ import annotations

import torch

from scratchllm.data import mlm
from scratchllm.data import seq2seq as s2s
from scratchllm.generate.seq2seq import beam_search, cross_attention_map, greedy_decode, translate
from scratchllm.model.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from scratchllm.tokenizer import CharTokenizer
from scratchllm.visualize import plot_cross_attention


def date_tokenizer() -> CharTokenizer:
    base = CharTokenizer.train(s2s.date_task_alphabet(), special_tokens=())
    return mlm.with_special_tokens(base, s2s.SEQ2SEQ_SPECIAL_TOKENS)


def tiny_model(tok, **kw) -> Seq2SeqTransformer:
    sp = s2s.Seq2SeqSpecialIds(tok)
    base = dict(
        src_vocab_size=tok.vocab_size,
        tgt_vocab_size=tok.vocab_size,
        context_length=40,
        n_layer=1,
        n_head=2,
        n_embd=32,
        dropout=0.0,
        pad_id=sp.pad,
        bos_id=sp.bos,
        eos_id=sp.eos,
    )
    base.update(kw)
    return Seq2SeqTransformer(Seq2SeqConfig(**base))


def test_decoder_is_causal_and_source_padding_is_ignored() -> None:
    torch.manual_seed(0)
    tok = date_tokenizer()
    model = tiny_model(tok, n_layer=2).eval()
    src = torch.randint(0, 50, (1, 9))
    tgt = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        full = model(src, tgt)
        changed = tgt.clone()
        changed[0, -1] = (tgt[0, -1] + 1) % 50
        assert torch.allclose(model(src, changed)[:, :-1], full[:, :-1], atol=1e-5)
        padded = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], dim=1)
        mask = torch.tensor([[1] * 9 + [0] * 4])
        torch.testing.assert_close(model(padded, tgt, mask), full, atol=1e-5, rtol=1e-5)


def test_separate_vocabularies() -> None:
    model = Seq2SeqTransformer(
        Seq2SeqConfig(
            src_vocab_size=30, tgt_vocab_size=20, share_embeddings=False, n_layer=1, n_embd=16, n_head=2
        )
    )
    assert model.src_emb is not None and model.out_head.weight is model.tgt_emb.weight
    assert model(torch.randint(0, 30, (2, 5)), torch.randint(0, 20, (2, 3))).shape == (2, 3, 20)


def test_beam_one_equals_greedy() -> None:
    torch.manual_seed(1)
    tok = date_tokenizer()
    model = tiny_model(tok).eval()
    for text in ("3rd of March 1998", "12/31/99", "2001.02.03"):
        src = torch.tensor([tok.encode(text) + [tok.special_tokens[s2s.EOS]]])
        greedy = greedy_decode(model, src, max_len=15)[0]
        assert beam_search(model, src, beam=1, max_len=15) == greedy
        assert len(beam_search(model, src, beam=3, max_len=15)) <= 14


def test_cross_attention_weights_and_png(tmp_path) -> None:
    torch.manual_seed(2)
    tok = date_tokenizer()
    model = tiny_model(tok, n_layer=2).eval()
    src = torch.randint(0, 50, (2, 7))
    tgt = torch.randint(0, 50, (2, 5))
    weights = model.cross_attention(src, tgt)
    assert len(weights) == 2 and weights[0].shape == (2, 2, 5, 7)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, 2, 5))
    w, s_tokens, t_tokens = cross_attention_map(model, tok, "Mar 3, 98", "1998-03-03")
    assert w.shape == (len(t_tokens), len(s_tokens)) == (11, 10)
    plot_cross_attention(w, s_tokens, t_tokens, str(tmp_path / "attn.png"))
    assert (tmp_path / "attn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_seq2seq_learns_dates_above_chance() -> None:
    """A few hundred steps on a 1-layer model: far better than chance on held-out dates."""
    from scratchllm.data.batches import SeededBatches
    from scratchllm.tasks.seq2seq import Seq2SeqTask

    torch.manual_seed(3)
    tok = date_tokenizer()
    train, val = s2s.date_task_splits(4000, 64, seed=5)
    task = Seq2SeqTask(tok, train, val, context_length=40, batch_size=32, eval_examples=64)
    model = tiny_model(tok, n_embd=64, n_head=4, label_smoothing=0.0)
    before = task.evaluate(model.eval(), max_batches=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches: SeededBatches = task.train_batches(seed=0)
    model.train()
    for _ in range(150):
        loss, _ = task.loss(model, batches.next_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = task.evaluate(model.eval(), max_batches=2)
    # Chance: ~4.2 nats (uniform over ~60 characters). The year and separators are easy wins.
    assert after["val_loss"] < 1.6 < before["val_loss"]
    assert after["bleu"] > before["bleu"] + 10
    hyps = translate(model, tok, ["2001.02.03"])
    assert hyps[0].startswith("20")
