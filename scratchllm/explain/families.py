"""The other model families: Mixture-of-Experts, BERT's masking, the encoder-decoder's cross-attention."""

from __future__ import annotations

import random
from typing import Any

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.explain.context import Context, encode_checked, save_picture
from scratchllm.explain.result import Explanation
from scratchllm.explain.tokens import pieces

MOE_TEXT = "The function returns None"


# ----------------------------------------------------------------------------- moe


def _moe_input(model: Any, idx: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """The first MoE layer of ``model`` and the tokens it receives for ``idx`` (``[N, C]``)."""
    from scratchllm.model.moe import MoEFeedForward

    moe = next(m for m in model.modules() if isinstance(m, MoEFeedForward))
    seen: list[torch.Tensor] = []
    hook = moe.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        model(idx)
    finally:
        hook.remove()
    return moe, seen[0].reshape(-1, seen[0].shape[-1])


@torch.no_grad()
def moe(ctx: Context) -> Explanation:
    from scratchllm.explain.context import tiny_moe_lm

    lm = ctx.language_model() if ctx.loaded is not None else tiny_moe_lm(ctx.seed)
    model, tok = lm.model, lm.tokenizer
    ids = encode_checked(tok, ctx.text_or(MOE_TEXT), model.config.context_length)
    labels = pieces(tok, ids)
    layer, x = _moe_input(model, torch.tensor([ids]))
    E, k = layer.n_experts, layer.top_k
    exp = Explanation(
        "moe",
        "Mixture-of-Experts: a router picks experts per token",
        f"scratchllm.model.moe.MoEFeedForward (the first MoE layer) of {lm.description}",
    )
    logits, weights, experts = layer.route(x)
    probs = torch.softmax(logits.float(), dim=-1)
    n = min(len(ids), 8)
    cols = [f"expert {e}" for e in range(E)]
    s = exp.step(
        "The router's probabilities",
        f"Instead of one feed-forward network, the layer holds {E} ('experts') and a tiny linear router "
        "that scores every expert for every token: softmax(router(x)).",
    ).value(f"router probabilities (first {n} tokens)", probs[:n], rows=labels[:n], cols=cols)
    s.check(
        "every token's probabilities sum to 1",
        torch.allclose(probs.sum(-1), torch.ones(len(probs)), atol=1e-5),
    )

    s = (
        exp.step(
            f"Top-{k} choice",
            f"Each token visits only its {k} best experts; their probabilities are renormalised to sum to 1 "
            "and become the mixing weights. The model has n_experts times the FFN parameters but spends "
            f"only {k} FFNs of compute per token.",
        )
        .value("chosen experts", experts[:n], rows=labels[:n])
        .value("weights", weights[:n], rows=labels[:n])
    )
    s.check(
        "the chosen experts are the most probable ones",
        torch.equal(experts.sort(-1).values, probs.topk(k, dim=-1).indices.sort(-1).values),
    )
    s.check("the weights sum to 1", torch.allclose(weights.sum(-1), torch.ones(len(weights)), atol=1e-5))
    out = layer(x)
    by_hand = sum(weights[0, j] * layer.experts[int(experts[0, j])](x[:1])[0] for j in range(k))
    s.value(f"output for {labels[0]!r} (first 6 numbers)", out[0, :6]).check(
        "output == sum of weight x expert(x) over the chosen experts",
        torch.allclose(out[0], by_hand, atol=1e-5),
    )

    counts = torch.bincount(experts.reshape(-1), minlength=E).float()
    f = counts / (len(x) * k)
    P = probs.mean(0)
    aux = layer.aux_loss_coef * E * float((f * P).sum())
    s = (
        exp.step(
            "Expert load and the balancing loss",
            "Left alone a router collapses onto a few favourite experts (they get more gradient, get better, "
            "get chosen more). The load-balancing loss of Switch Transformer pushes back: "
            "coef x n_experts x sum_i f_i P_i, with f_i the fraction of assignments that went to expert i "
            "and P_i its mean router probability. It is smallest when both are uniform (then it "
            "equals coef).",
        )
        .value("assignments per expert", counts, cols=cols)
        .value("f (fraction of assignments)", f, cols=cols)
    )
    s.value("P (mean router probability)", P, cols=cols).value("balance loss", aux).value(
        "if perfectly balanced", layer.aux_loss_coef
    )
    s.check("f sums to 1", abs(float(f.sum()) - 1) < 1e-6)
    s.check("== the layer's aux_loss() that training adds", abs(aux - float(layer.aux_loss())) < 1e-6)
    s.check(
        "== expert_utilisation() the trainer logs",
        torch.allclose(f, torch.tensor(layer.expert_utilisation()), atol=1e-4),
    )

    fresh = lm.fresh_copy(ctx.seed)
    layer0, x0 = _moe_input(fresh, torch.tensor([ids]))
    layer0(x0)
    expert_params = sum(p.numel() for p in layer.experts.parameters())
    s = (
        exp.step(
            "Before and after training, and the cost",
            "Utilisation of the same text in a freshly initialised model of the same configuration: a new "
            "router's logits are tiny, so its probabilities are nearly uniform. Parameters vs compute: "
            "all experts are stored, only top-k run per token.",
        )
        .value("utilisation, fresh", layer0.expert_utilisation(), cols=cols)
        .value("utilisation, trained", f, cols=cols)
    )
    s.value("expert parameters in this layer", expert_params).value("used per token", expert_params * k // E)
    s.check(
        "a fresh router is near uniform (every probability within 0.1 of 1/n_experts)",
        bool((torch.softmax(layer0.route(x0)[0].float(), -1) - 1 / E).abs().max() < 0.1),
    )

    if (path := ctx.figure_path("moe")) is not None:
        from scratchllm.visualize import pyplot

        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        axes[0].imshow(probs.numpy(), cmap="viridis", aspect="auto", vmin=0, vmax=1)
        axes[0].set_yticks(range(len(labels)), labels)
        axes[0].set_xticks(range(E), cols, rotation=45)
        axes[0].set_title("router probabilities per token")
        axes[1].bar(range(E), f.numpy(), label="trained")
        axes[1].axhline(1 / E, color="grey", ls=":", label="balanced")
        axes[1].set_xticks(range(E), cols, rotation=45)
        axes[1].set_title("fraction of assignments")
        axes[1].legend()
        save_picture(exp, fig, path, "router probabilities and expert load")
    return exp


# ----------------------------------------------------------------------------- bert masking


def _bert_tokenizer(ctx: Context) -> tuple[Any, str]:
    if ctx.loaded is not None:
        return ctx.loaded.tokenizer, f"the tokenizer of {ctx.model_path}"
    from scratchllm.data.corpus import default_corpus
    from scratchllm.tokenizer.specials import BERT_SPECIAL_TOKENS, with_special_tokens
    from scratchllm.tokenizer.word import WordTokenizer

    tok = with_special_tokens(WordTokenizer.train(default_corpus()), BERT_SPECIAL_TOKENS)
    return tok, "a word tokenizer of the embedded corpus with [PAD] [CLS] [SEP] [MASK] added"


def bert_masking(ctx: Context) -> Explanation:
    from scratchllm.data.corpus import default_corpus
    from scratchllm.data.mlm import IGNORE_INDEX, PretrainingExamples, mask_tokens, split_documents
    from scratchllm.tokenizer.specials import BertSpecialIds

    tok, tok_source = _bert_tokenizer(ctx)
    sp = BertSpecialIds.of(tok)
    docs = split_documents(default_corpus())
    sentences = [s for d in docs for s in d]
    if ctx.text:
        sentence = ctx.text
    else:
        sentence = next(s for s in sentences if 20 <= len(s.split()) <= 30)
    exp = Explanation(
        "bert-masking",
        "BERT's self-made exercises: masked tokens and sentence pairs",
        f"scratchllm.data.mlm (mask_tokens, PretrainingExamples) with {tok_source}",
    )
    body = tok.encode(sentence)
    if not body:
        raise ScratchLLMError("the text has no tokens; give a sentence with --text")
    ids = [sp.cls, *body, sp.sep]
    rng = random.Random(ctx.seed)
    # Draw until the example shows something: at least two chosen tokens (when the sentence allows).
    for _ in range(100):
        inputs, labels = mask_tokens(ids, special=sp, vocab_size=tok.vocab_size, rng=rng)
        if sum(lab != IGNORE_INDEX for lab in labels) >= min(2, len(body)):
            break
    rows = []
    names = pieces(tok, ids)
    for i, (orig, inp, lab) in enumerate(zip(ids, inputs, labels)):
        if lab == IGNORE_INDEX:
            continue
        what = "[MASK]" if inp == sp.mask else "kept" if inp == orig else "random token"
        rows.append(
            {"position": i, "token": names[i], "becomes": pieces(tok, [inp])[0], "kind": what, "label": lab}
        )
    s = exp.step(
        "Masking one sentence",
        "BERT reads the whole sentence at once (no causal mask), so 'predict the next token' would be "
        "trivial. Instead 15 % of the tokens are chosen and hidden, and the model must recover them "
        "from both sides. Of the chosen tokens 80 % become [MASK], 10 % a random token and 10 % stay "
        "as they are — at fine-tuning time there is no [MASK], so the model must not rely on seeing "
        "one. Only chosen positions get a label; the rest are -100 (ignored by the loss).",
    )
    s.tokens("input", names).tokens("after masking", pieces(tok, inputs)).value("chosen", rows)
    s.value("labels", labels)
    s.check("[CLS] and [SEP] are never chosen", labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX)
    s.check(
        "a chosen position's label is its original token", all(r["label"] == ids[r["position"]] for r in rows)
    )
    s.check(
        "positions that were not chosen are unchanged",
        all(inp == orig for inp, orig, lab in zip(inputs, ids, labels) if lab == IGNORE_INDEX),
    )

    chosen = masked = kept = rand = eligible = 0
    for sent in sentences[:4000]:
        seq = [sp.cls, *tok.encode(sent), sp.sep]
        ins, labs = mask_tokens(seq, special=sp, vocab_size=tok.vocab_size, rng=rng)
        eligible += len(seq) - 2
        for orig, inp, lab in zip(seq, ins, labs):
            if lab == IGNORE_INDEX:
                continue
            chosen += 1
            masked += inp == sp.mask
            kept += inp == orig
            rand += inp not in (sp.mask, orig)
    stats = {
        "chosen / eligible": chosen / eligible,
        "[MASK] / chosen": masked / chosen,
        "random / chosen": rand / chosen,
        "kept / chosen": kept / chosen,
    }
    s = (
        exp.step(
            "The 15 % and the 80/10/10, measured",
            f"The same function over {min(len(sentences), 4000):,} sentences of the embedded corpus "
            f"({eligible:,} tokens). (A random replacement that happens to draw the original token "
            "counts as kept.)",
        )
        .value("sentences", min(len(sentences), 4000))
        .value("eligible tokens", eligible)
        .value("chosen", chosen)
    )
    s.value("fractions", stats)
    s.check("about 15 % chosen (within 1 %)", abs(stats["chosen / eligible"] - 0.15) < 0.01)
    s.check("about 80 % [MASK] (within 2 %)", abs(stats["[MASK] / chosen"] - 0.8) < 0.02)
    s.check(
        "about 10 % random and 10 % kept (within 2 %)",
        abs(stats["random / chosen"] - 0.1) < 0.02 and abs(stats["kept / chosen"] - 0.1) < 0.02,
    )

    enc_docs = [[tok.encode(x) for x in d] for d in docs[:40]]
    examples = PretrainingExamples(
        enc_docs, special=sp, vocab_size=tok.vocab_size, context_length=64, mlm=False, nsp=True
    )
    nsp_rng = random.Random(ctx.seed)
    shown = []
    for _ in range(4):
        ex = examples.example(nsp_rng)
        sep = ex.input_ids.index(sp.sep)
        shown.append(
            {
                "A": tok.decode(ex.input_ids[1:sep]),
                "B": tok.decode(ex.input_ids[sep + 1 : -1]),
                "label": "is next (0)" if ex.nsp_label == 0 else "random (1)",
            }
        )
    labels_nsp = [examples.example(nsp_rng).nsp_label for _ in range(2000)]
    first = examples.example(random.Random(ctx.seed))
    s = (
        exp.step(
            "Next-sentence prediction pairs",
            "The second exercise: [CLS] A [SEP] B [SEP], where half the time B really follows A and half "
            "the time it is a random sentence. Segment ids (0 for A, 1 for B) tell the model which is which; "
            "the [CLS] output is classified as is-next or random.",
        )
        .value("pairs", shown)
        .value("segment ids of the first pair", first.segment_ids)
    )
    s.value("share of is-next pairs in 2,000", labels_nsp.count(0) / 2000)
    s.check("about half are is-next (within 5 %)", abs(labels_nsp.count(0) / 2000 - 0.5) < 0.05)
    s.check(
        "segment ids are 0 up to the first [SEP], then 1",
        first.segment_ids
        == [0] * (first.input_ids.index(sp.sep) + 1)
        + [1] * (len(first.input_ids) - first.input_ids.index(sp.sep) - 1),
    )

    if ctx.loaded is not None:
        from scratchllm.generate.fill_mask import fill_mask_ids

        mask_positions = [i for i, t in enumerate(inputs) if t == sp.mask]
        if mask_positions and len(inputs) <= ctx.loaded.model.config.context_length:
            filled = fill_mask_ids(ctx.loaded.model, inputs, sp.mask, top_k=3)
            preds = [
                {
                    "position": pos,
                    "true": names[pos],
                    "top 3": [pieces(tok, [t])[0] for t, _ in c],
                    "p(top 1)": c[0][1],
                }
                for pos, c in filled
            ]
            hits = sum(p["top 3"][0] == p["true"] for p in preds)
            exp.step(
                "What your BERT puts at the masks",
                "Your model's guesses for the [MASK] positions above (scratchllm.generate.fill_mask).",
            ).value("predictions", preds).value("top-1 correct", f"{hits} of {len(preds)}")
    return exp


# ----------------------------------------------------------------------------- cross-attention


@torch.no_grad()
def cross_attention(ctx: Context) -> Explanation:
    from scratchllm.generate.seq2seq import cross_attention_map, translate

    if ctx.loaded is not None:
        model, tok = ctx.loaded.model, ctx.loaded.tokenizer
        source_desc = f"model {ctx.model_path}"
        text = ctx.text_or("3rd of March 1998")
        val_pairs: list[tuple[str, str]] = []
    else:
        from scratchllm.explain.context import tiny_date_model

        dm = tiny_date_model(ctx.seed)
        model, tok, source_desc, val_pairs = dm.model, dm.tokenizer, dm.description, dm.val_pairs
        text = ctx.text_or(val_pairs[0][0])
    model.eval()
    try:
        src_ids = tok.encode(text)
    except ScratchLLMError as err:
        raise ScratchLLMError(
            f"{err}; the tiny date model reads dates like 24.06.1971 (or pass --model)"
        ) from None
    if len(src_ids) + 1 > model.config.context_length:
        raise ScratchLLMError(
            f"the text is {len(src_ids)} tokens; this model reads at most {model.config.context_length - 1}"
        )
    exp = Explanation(
        "cross-attention",
        "where the decoder looks while it writes",
        f"scratchllm.model.seq2seq and scratchllm.generate.seq2seq on {source_desc}",
    )
    if val_pairs:
        hyps = translate(model, tok, [s for s, _ in val_pairs])
        exact = sum(h == t for h, (_, t) in zip(hyps, val_pairs)) / len(val_pairs)
        exp.step(
            "The task and the model",
            "The encoder reads the source date; the decoder writes the ISO date one character at a time. "
            "Trained for a few seconds only, it is not perfect — but it has already learned where to look.",
        ).value("examples", [{"source": s, "target": t} for s, t in val_pairs[:3]]).value(
            "held-out exact match (50 dates)", exact
        ).value(
            "held-out outputs",
            [{"source": s, "output": h, "reference": t} for h, (s, t) in zip(hyps[:5], val_pairs[:5])],
        )
    output = translate(model, tok, [text])[0]
    weights, src_tokens, out_tokens = cross_attention_map(model, tok, text, output)
    # every head of every decoder layer, for the check below
    sp_eos = tok.special_tokens["<eos>"]
    per_layer = model.cross_attention(
        torch.tensor([src_ids + [sp_eos]]), torch.tensor([[tok.special_tokens["<bos>"], *tok.encode(output)]])
    )
    s = (
        exp.step(
            "Encode, then decode",
            "The encoder turns the source (plus <eos>) into one vector per token, the memory, once. The "
            "decoder then writes greedily, each step attending to what it wrote (causal self-attention) "
            "and, through cross-attention, to the memory: queries from the decoder, keys and values from "
            "the encoder.",
        )
        .value("source", text)
        .tokens("source tokens", src_tokens)
        .value("output", output)
    )
    s.value("memory shape", list(model.encode(torch.tensor([src_ids + [sp_eos]])).shape))

    align = []
    for t, row in enumerate(weights):
        j = int(row.argmax())
        align.append(
            {
                "writing": out_tokens[t],
                "looks most at": f"{src_tokens[j]} (position {j})",
                "weight": float(row[j]),
            }
        )
    s = (
        exp.step(
            "The cross-attention weights",
            "Row t: how much the decoder, while writing output token t, looked at each source token (last "
            "decoder layer, mean over heads). Each row is a softmax: it sums to 1. For dates in this format "
            "the year is written first but read last: the map is not a diagonal.",
        )
        .value("weights [output x source]", weights, rows=out_tokens, cols=src_tokens)
        .value("alignment", align)
    )
    s.check("every row sums to 1", torch.allclose(weights.sum(-1), torch.ones(len(weights)), atol=1e-5))
    s.check(
        "== the mean over heads of the last layer's weights",
        torch.allclose(per_layer[-1][0].mean(0), weights, atol=1e-6),
    )

    if (path := ctx.figure_path("cross-attention")) is not None:
        from scratchllm.visualize import plot_cross_attention

        plot_cross_attention(weights, src_tokens, out_tokens, path)
        exp.figure(path, "cross-attention: output tokens down, source tokens across")
    return exp
