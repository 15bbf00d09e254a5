"""moe, bert-masking, cross-attention: the printed numbers recomputed by hand."""

from __future__ import annotations

import math

import torch
from explain_helpers import assert_checks_hold, close, value


def test_moe_router_choice_and_balance(explain) -> None:
    exp = explain("moe")
    assert_checks_hold(exp)
    probs = value(exp, "The router's probabilities", "router probabilities (first 8 tokens)")
    step = exp.find("Top-2 choice")
    for p, chosen, w in zip(probs, step.values["chosen experts"], step.values["weights"]):
        best = sorted(range(4), key=lambda e: -p[e])[:2]
        assert sorted(chosen) == sorted(best)
        assert close(w, [p[e] / (p[best[0]] + p[best[1]]) for e in chosen])
    load = exp.find("Expert load and the balancing loss").values
    counts = load["assignments per expert"]
    n_tokens = len("The function returns None")
    assert sum(counts) == 2 * n_tokens
    f = [c / (2 * n_tokens) for c in counts]
    assert close(load["f (fraction of assignments)"], f)
    assert close(
        load["balance loss"],
        0.01 * 4 * sum(fi * pi for fi, pi in zip(f, load["P (mean router probability)"])),
        tol=1e-7,
    )
    assert (exp.out_dir / "moe.png").is_file()


def test_moe_on_a_users_model(explain, runs) -> None:
    assert_checks_hold(explain("moe", model=runs["moe"]))


def test_bert_masking(explain) -> None:
    from scratchllm.data.corpus import default_corpus
    from scratchllm.data.mlm import split_documents

    exp = explain("bert-masking")
    assert_checks_hold(exp)
    step = exp.find("Masking one sentence")
    labels, before, after = step.values["labels"], step.values["input"], step.values["after masking"]
    for i, lab in enumerate(labels):
        if lab == -100:
            assert before[i] == after[i]
    chosen = step.values["chosen"]
    assert [c["position"] for c in chosen] == [i for i, lab in enumerate(labels) if lab != -100]
    assert all(c["kind"] != "[MASK]" or after[c["position"]] == "[MASK]" for c in chosen)
    fr = value(exp, "The 15 % and the 80/10/10, measured", "fractions")
    assert close(fr["[MASK] / chosen"] + fr["random / chosen"] + fr["kept / chosen"], 1.0, tol=1e-9)
    stats = exp.find("The 15 % and the 80/10/10, measured").values
    sentences = [s for d in split_documents(default_corpus()) for s in d][:4000]
    tok = _word_tokenizer_with_bert_specials()
    assert stats["eligible tokens"] == sum(len(tok.encode(s)) for s in sentences)  # [CLS]/[SEP] excluded
    assert close(fr["chosen / eligible"], stats["chosen"] / stats["eligible tokens"], tol=1e-12)
    nsp = exp.find("Next-sentence prediction pairs").values
    assert len(nsp["pairs"]) == 4 and all(p["label"] in ("is next (0)", "random (1)") for p in nsp["pairs"])
    sep = nsp["segment ids of the first pair"].index(1)
    assert nsp["segment ids of the first pair"] == [0] * sep + [1] * (
        len(nsp["segment ids of the first pair"]) - sep
    )


def _word_tokenizer_with_bert_specials():
    from scratchllm.data.corpus import default_corpus
    from scratchllm.tokenizer.specials import BERT_SPECIAL_TOKENS, with_special_tokens
    from scratchllm.tokenizer.word import WordTokenizer

    return with_special_tokens(WordTokenizer.train(default_corpus()), BERT_SPECIAL_TOKENS)


def test_bert_masking_on_a_bert(explain, runs) -> None:
    exp = explain(
        "bert-masking", model=runs["bert"], text="The function returns the value of the expression."
    )
    assert_checks_hold(exp)
    preds = value(exp, "What your BERT puts at the masks", "predictions")
    labels = value(exp, "Masking one sentence", "labels")
    masked = [c["position"] for c in value(exp, "Masking one sentence", "chosen") if c["kind"] == "[MASK]"]
    assert [p["position"] for p in preds] == masked and len(masked) <= sum(lab != -100 for lab in labels)


def test_cross_attention_weights_by_hand(explain) -> None:
    from scratchllm.explain.context import tiny_date_model

    exp = explain("cross-attention")
    assert_checks_hold(exp)
    dm = tiny_date_model(0)
    model, tok = dm.model, dm.tokenizer
    source = value(exp, "Encode, then decode", "source")
    output = value(exp, "Encode, then decode", "output")
    assert source == dm.val_pairs[0][0]
    src = torch.tensor([tok.encode(source) + [tok.special_tokens["<eos>"]]])
    tgt = torch.tensor([[tok.special_tokens["<bos>"], *tok.encode(output)]])
    layer = model.decoder[-1].cross_attn
    seen = {}
    hook = layer.register_forward_pre_hook(
        lambda m, args, kw: seen.update(h=args[0], mem=kw["context"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(src, tgt)
    finally:
        hook.remove()
    H, D = layer.n_head, layer.head_dim
    W, b = layer.qkv.weight, layer.qkv.bias
    with torch.no_grad():
        q = seen["h"][0] @ W[: H * D].T + b[: H * D]
        k = seen["mem"][0] @ W[H * D : 2 * H * D].T + b[H * D : 2 * H * D]
    mean = [[0.0] * k.shape[0] for _ in range(q.shape[0])]
    for h in range(H):
        qh, kh = q[:, h * D : (h + 1) * D].tolist(), k[:, h * D : (h + 1) * D].tolist()
        for t, qrow in enumerate(qh):
            scores = [sum(a * c for a, c in zip(qrow, krow)) / math.sqrt(D) for krow in kh]
            m = max(scores)
            e = [math.exp(s - m) for s in scores]
            for j, v in enumerate(e):
                mean[t][j] += v / sum(e) / H
    shown = value(exp, "The cross-attention weights", "weights [output x source]")
    assert close(shown, mean, tol=1e-5)
    align = value(exp, "The cross-attention weights", "alignment")
    assert [a["weight"] for a in align] == [max(r) for r in shown]
    held_out = value(exp, "The task and the model", "held-out exact match (50 dates)")
    assert held_out > 0.2  # a few seconds of training already decode many dates exactly
    assert (exp.out_dir / "cross-attention.png").is_file()


def test_cross_attention_on_a_users_model(explain, runs) -> None:
    assert_checks_hold(explain("cross-attention", model=runs["seq2seq"]))
