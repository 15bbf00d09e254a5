"""BERT: Hugging Face parity, padding, and the pretraining losses."""

from __future__ import annotations

import pytest
import torch

from scratchllm.convert.hf_bert import bert_config_from_hf, from_hf_bert_state_dict
from scratchllm.model.bert import BertConfig, BertModel, bert_losses


def tiny_config(**kw) -> BertConfig:
    base = dict(vocab_size=60, context_length=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    base.update(kw)
    return BertConfig(**base)


def test_hf_bert_for_pretraining_parity() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    hf = transformers.BertForPreTraining(hf_cfg).eval()
    with torch.no_grad():  # random, non-trivial norms and biases so the mapping is really tested
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    cfg = bert_config_from_hf(hf_cfg)
    ours = BertModel(cfg).eval()
    missing, unexpected = ours.load_state_dict(from_hf_bert_state_dict(hf.state_dict(), cfg), strict=False)
    assert not unexpected and not missing
    ids = torch.randint(0, 60, (2, 12))
    seg = torch.tensor([[0] * 6 + [1] * 6, [0] * 8 + [1] * 4])
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=seg, attention_mask=mask)
        out = ours(ids, seg, mask)
    real = mask.bool()
    torch.testing.assert_close(out.mlm_logits[real], ref.prediction_logits[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.nsp_logits, ref.seq_relationship_logits, atol=1e-4, rtol=1e-4)


def test_padding_does_not_change_real_positions() -> None:
    torch.manual_seed(1)
    model = BertModel(tiny_config(norm_position="pre")).eval()
    ids = torch.randint(0, 56, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 7 + [0] * 3])
    with torch.no_grad():
        a = model(ids).mlm_logits
        b = model(padded, attention_mask=mask).mlm_logits[:, :7]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_attention_is_bidirectional() -> None:
    torch.manual_seed(2)
    model = BertModel(tiny_config()).eval()
    ids = torch.randint(0, 56, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 56
    with torch.no_grad():
        assert not torch.allclose(model(ids).hidden[0, 0], model(changed).hidden[0, 0])


def test_loss_only_on_chosen_positions() -> None:
    torch.manual_seed(3)
    model = BertModel(tiny_config())
    ids = torch.randint(0, 56, (2, 10))
    labels = torch.full((2, 10), -100)
    labels[0, 3], labels[1, 5] = 7, 9
    out = model(ids)
    loss, metrics = bert_losses(out, labels, torch.tensor([0, 1]))
    expected_mlm = torch.nn.functional.cross_entropy(out.mlm_logits[[0, 1], [3, 5]], torch.tensor([7, 9]))
    expected_nsp = torch.nn.functional.cross_entropy(out.nsp_logits, torch.tensor([0, 1]))
    torch.testing.assert_close(loss, expected_mlm + expected_nsp)
    assert metrics["n_masked"] == 2
    # Gradient reaches the logits of the chosen positions only.
    grad = torch.autograd.grad(loss, out.mlm_logits)[0]
    assert grad[0, 3].abs().sum() > 0 and grad[0, 4].abs().sum() == 0


def test_tiny_bert_learns_context() -> None:
    """On text where every character is fixed by its neighbours, MLM accuracy must go far beyond the
    unigram plateau: the model has learned to attend to positions around the mask."""
    import random

    from scratchllm.data import mlm
    from scratchllm.tokenizer import CharTokenizer

    alpha = "abcdefghijklmnop"
    tok = mlm.with_special_tokens(CharTokenizer.train(alpha), mlm.BERT_SPECIAL_TOKENS)
    sp = mlm.BertSpecialIds.of(tok)
    torch.manual_seed(0)
    model = BertModel(
        tiny_config(vocab_size=tok.vocab_size, context_length=40, n_embd=64, norm_position="pre")
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = random.Random(0)
    for _ in range(300):
        examples = []
        for _ in range(32):
            start = rng.randrange(16)
            ids = [sp.cls, *tok.encode("".join(alpha[(start + i) % 16] for i in range(30))), sp.sep]
            inputs, labels = mlm.mask_tokens(ids, special=sp, vocab_size=tok.vocab_size, rng=rng)
            examples.append(mlm.PretrainingExample(inputs, [0] * len(ids), labels, -100))
        batch = mlm.collate(examples, sp.pad)
        loss, metrics = bert_losses(
            model(batch["input_ids"], batch["segment_ids"]), batch["mlm_labels"], None
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["masked_token_accuracy"] > 0.8  # the unigram plateau is ~0.25
