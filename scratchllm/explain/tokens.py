"""Tokenization topics: one text through every tokenizer, and a replay of BPE training."""

from __future__ import annotations

from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.explain.context import Context
from scratchllm.explain.result import Explanation
from scratchllm.tokenizer.base import EOT

#: The book's example (chapter 2): two documents, a separator and a word no vocabulary has.
TOKENIZATION_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
#: Vocabulary of the BPE trained on the embedded corpus for the comparison.
BPE_VOCAB = 1024
#: How many merges the BPE replay learns and shows.
BPE_MERGES = 40


def show_piece(piece: str | bytes) -> str:
    """A token as a reader can see it: spaces as ␣, newlines and tabs escaped, bad UTF-8 as bytes."""
    if isinstance(piece, bytes):
        try:
            piece = piece.decode("utf-8")
        except UnicodeDecodeError:
            return repr(piece)[2:-1]
    return piece.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t") or "∅"


def pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """How each token of ``ids`` reads on its own (the playground's labels, whitespace made visible)."""
    from scratchllm.inspect.tokens import token_pieces

    return [show_piece(p) for p in token_pieces(tokenizer, ids)]


def _comparison_tokenizers(ctx: Context) -> list[tuple[str, Any]]:
    from scratchllm.data.corpus import default_corpus
    from scratchllm.explain.context import corpus_char_tokenizer
    from scratchllm.tokenizer import load_tokenizer
    from scratchllm.tokenizer.bpe import train_bpe
    from scratchllm.tokenizer.word import WordTokenizer

    corpus = default_corpus()
    toks: list[tuple[str, Any]] = [
        ("char", corpus_char_tokenizer()),
        ("word", WordTokenizer.train(corpus)),
        (f"bpe-{BPE_VOCAB}", train_bpe(corpus, BPE_VOCAB)),
    ]
    if ctx.tokenizer_path is not None:
        extra = load_tokenizer(ctx.tokenizer_path)
        toks.append((_tokenizer_name(extra, ctx.tokenizer_path), extra))
    if ctx.loaded is not None:
        toks.append((f"your model's ({ctx.loaded.tokenizer.kind})", ctx.loaded.tokenizer))
    return toks


def _tokenizer_name(tok: Any, path: str) -> str:
    if tok.kind == "bpe" and tok.vocab_size == 50257 and tok.special_tokens.get(EOT) == 50256:
        return "gpt2"
    return f"{tok.kind} ({path})"


def tokenization(ctx: Context) -> Explanation:
    text = ctx.text_or(TOKENIZATION_TEXT)
    extra = [f"--tokenizer {ctx.tokenizer_path}"] if ctx.tokenizer_path is not None else []
    extra += [f"the tokenizer of {ctx.model_path}"] if ctx.loaded is not None else []
    exp = Explanation(
        "tokenization",
        "one text, four tokenizers",
        "tokenizers trained on the spot on the embedded corpus (char, word, byte-level BPE)"
        + (f" plus {' and '.join(extra)}" if extra else ""),
    )
    n_bytes = len(text.encode("utf-8"))
    rows, encoded = [], {}
    for name, tok in _comparison_tokenizers(ctx):
        try:
            # The demo text stands for documents joined by the separator prepare inserts as an
            # id, so its <|endoftext|> is read as the special token here (allowed on purpose).
            ids = tok.encode(text, allowed_special="all")
        except ScratchLLMError as err:  # a char tokenizer meets a character it never saw
            rows.append({"tokenizer": name, "vocab": tok.vocab_size, "tokens": "-", "error": str(err)})
            continue
        decoded = tok.decode(ids)
        encoded[name] = (tok, ids, decoded)
        rows.append(
            {
                "tokenizer": name,
                "vocab": tok.vocab_size,
                "tokens": len(ids),
                "bytes/token": round(n_bytes / len(ids), 2),
                "exact round trip": decoded == text,
            }
        )
    exp.step(
        "Four tokenizers, one text",
        f"The text is {n_bytes} bytes of UTF-8. Each tokenizer cuts it into pieces and gives every piece "
        "an integer id: the model only ever sees these ids. A bigger vocabulary means fewer, longer "
        "tokens (more bytes per token) — a shorter sequence for the same text, at the price of a "
        "bigger embedding table.",
    ).value("text", text).value("comparison", rows)
    if ctx.tokenizer_path is None and ctx.loaded is None:
        exp.note(
            "GPT-2's own tokenizer is not built in (nothing is downloaded at run time): add it with "
            "--tokenizer DIR (a directory with encoder.json + vocab.bpe, or vocab.json + merges.txt)."
        )

    explain_kind = {
        "char": "One id per character: a tiny vocabulary, but long sequences, and the model must "
        "learn spelling.",
        "word": "One id per word or punctuation mark (the book's regex splitter). Whitespace is dropped, so "
        "the round trip is lossy, and any word not seen in training becomes <|unk|>.",
        "bpe": "Byte-level BPE: start from the 256 bytes, then merge frequent pairs into longer tokens. "
        "Frequent words are one token (with their leading space), rare ones are spelled from pieces.",
    }
    for name, (tok, ids, decoded) in encoded.items():
        s = exp.step(
            f"{name}: {len(ids)} tokens",
            explain_kind.get(tok.kind, "This tokenizer's pieces and ids.")
            + f" Vocabulary: {tok.vocab_size:,} ids.",
        )
        s.tokens("pieces", pieces(tok, ids)).value("ids", ids)
        if tok.kind == "word":
            s.value("decoded", decoded).value("exact round trip", decoded == text)
        else:  # char and byte-level BPE tokenizers are lossless by construction
            s.check("decode(encode(text)) == text", decoded == text)

    if "word" in encoded:
        wtok, wids, _ = encoded["word"]
        from scratchllm.tokenizer.word import UNK, split_words

        unk_id = wtok.special_tokens[UNK]
        words = [w for piece in text.split(EOT) for w in split_words(piece)]
        unknown = [w for w in words if w not in wtok.stoi and w != EOT]
        s = exp.step(
            "Unknown words: <|unk|> or sub-words",
            "The word tokenizer knows only the words of its training text; every other word becomes "
            "<|unk|> and is lost for good. Byte-level BPE never needs <|unk|>: an unknown word is spelled "
            "from smaller pieces, down to single bytes, so nothing is lost.",
        )
        s.value("unknown to the word tokenizer", unknown)
        s.value("<|unk|> ids in the word tokenizer's output", sum(1 for i in wids if i == unk_id))
        for name, (tok, _, _) in encoded.items():
            if tok.kind == "bpe" and unknown:
                s.value(
                    f"{name} pieces of the unknown words", {w: pieces(tok, tok.encode(w)) for w in unknown}
                )
        bpe_round_trips = [d == text for n, (t, _, d) in encoded.items() if t.kind == "bpe"]
        s.check(
            "every BPE tokenizer round-trips the text exactly", bool(bpe_round_trips) and all(bpe_round_trips)
        )
        s.check(
            "the word tokenizer turned every unknown word into <|unk|>", wids.count(unk_id) == len(unknown)
        )

    if EOT in text:
        s = exp.step(
            "<|endoftext|> between documents",
            "Training data is many documents glued into one stream; a special token marks where one "
            "ends and the next begins, so the model learns not to carry context across the boundary. "
            "It is one id, never spelled out of ordinary pieces (GPT-2: id 50256, the last one). "
            "The id is inserted by the code that joins documents (prepare); the same 13 characters "
            "typed into a corpus, a prompt or a chat message are ordinary text (several tokens, or an "
            "unknown character), so no user can forge a boundary — unless --allow-special is given.",
        )
        eot_ids = {name: tok.special_tokens[EOT] for name, (tok, _, _) in encoded.items()}
        s.value("<|endoftext|> id", eot_ids)
        as_text = {}
        for name, (tok, _, _) in encoded.items():
            try:
                as_text[name] = pieces(tok, tok.encode(EOT))
            except ScratchLLMError:
                as_text[name] = "(cannot spell '<' or '|': not in its vocabulary)"
        s.value("the text '<|endoftext|>' read as ordinary text", as_text)
        s.check(
            "<|endoftext|> is a single token in every tokenizer",
            all(ids.count(eot_ids[n]) == text.count(EOT) for n, (_, ids, _) in encoded.items()),
        )
    return exp


# ----------------------------------------------------------------------------- bpe


def bpe_default_text() -> str:
    """The first document of the embedded corpus (the ``assert`` statement's documentation)."""
    from scratchllm.data.corpus import default_corpus_documents

    return default_corpus_documents()[0]


def initial_pair_counts(word_counts: dict[bytes, int]) -> dict[tuple[bytes, bytes], int]:
    """Adjacent byte pairs over all pre-tokens, weighted by how often each pre-token occurs."""
    counts: dict[tuple[bytes, bytes], int] = {}
    for word, n in word_counts.items():
        for a, b in zip(word, word[1:]):
            pair = (bytes([a]), bytes([b]))
            counts[pair] = counts.get(pair, 0) + n
    return counts


def bpe(ctx: Context) -> Explanation:
    from scratchllm.tokenizer.bpe import (
        GPT2_PATTERN,
        BPETokenizer,
        bpe_encode_piece,
        count_words,
        learn_merges,
        learn_merges_naive,
    )

    text = ctx.text_or(bpe_default_text())
    exp = Explanation(
        "bpe",
        "byte-pair encoding, trained merge by merge",
        "scratchllm.tokenizer.bpe (the trainer behind 'scratchllm tokenizer train --kind bpe') on "
        + ("your --text" if ctx.text else "the first document of the embedded corpus"),
    )
    data = text.encode("utf-8")
    exp.step(
        "Start from bytes",
        "Byte-level BPE starts with 256 tokens, one per byte value, so any text in any language can be "
        "written down and no token is ever unknown. UTF-8 spells ASCII characters with one byte and "
        "others with 2 to 4.",
    ).value("characters", len(text)).value("bytes", len(data)).value("first 12 bytes", list(data[:12]))

    counts = count_words([text], GPT2_PATTERN, [EOT])
    if not counts:
        raise ScratchLLMError("the text has nothing to train BPE on; give a longer --text")
    top_words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    exp.step(
        "Pre-tokenise and count",
        "A regex (GPT-2's) first splits the text into words with their leading space, numbers and "
        "punctuation runs, so a merge never glues a word to the punctuation after it. Training only "
        "needs each distinct pre-token once, with how often it occurs.",
    ).value("distinct pre-tokens", len(counts)).value(
        "most frequent", [{"pre-token": show_piece(w), "count": n} for w, n in top_words]
    )

    pairs = initial_pair_counts(counts)
    top_pairs = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
    merges: list[dict[str, Any]] = []

    def record(left: bytes, right: bytes, count: int, token_id: int) -> None:
        merges.append(
            {
                "merge": len(merges) + 1,
                "left": show_piece(left),
                "right": show_piece(right),
                "pair count": count,
                "new token": show_piece(left + right),
                "id": token_id,
            }
        )

    vocab = learn_merges(counts, 256 + BPE_MERGES, on_merge=record)
    s = exp.step(
        "Count adjacent pairs",
        "Every pair of neighbouring tokens inside a pre-token is counted, weighted by the pre-token's "
        "count. The most frequent pair will become the first new token.",
    ).value(
        "most frequent pairs",
        [{"pair": f"{show_piece(a)} + {show_piece(b)}", "count": n} for (a, b), n in top_pairs],
    )
    if merges and top_pairs:
        s.check("the first merge is the most frequent pair", merges[0]["pair count"] == top_pairs[0][1])

    s = exp.step(
        f"The first {len(merges)} merges",
        "Repeat: merge the most frequent pair everywhere into one new token (its id is the next free "
        "one, its rank), recount the pairs next to each merge, pick the next. Ties go to the "
        "lexicographically smallest pair, so training is deterministic. Counts fall as the common "
        "pairs are used up; later merges build on earlier ones (whole words appear).",
    ).value("merges", merges)
    s.check(
        "pair counts never increase from one merge to the next",
        all(a["pair count"] >= b["pair count"] for a, b in zip(merges, merges[1:])),
    )
    naive = learn_merges_naive(counts, 256 + BPE_MERGES)
    s.check("the incremental trainer and the textbook recount-everything trainer agree", naive == vocab)

    tok = BPETokenizer.from_vocab(vocab, [EOT], GPT2_PATTERN)
    ranks = tok.ranks
    multi = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1] * len(kv[0]), kv[0])) if len(w) > 3]
    word = multi[0] if multi else top_words[0][0]
    stages = [[show_piece(p) for p in bpe_encode_piece(word, ranks, max_rank=256)]]
    for rank in range(257, len(vocab) + 1):
        parts = [show_piece(p) for p in bpe_encode_piece(word, ranks, max_rank=rank)]
        if parts != stages[-1]:
            stages.append(parts)
    final = pieces(tok, tok.encode(word.decode("utf-8", errors="replace")))
    s = exp.step(
        f"Encoding {show_piece(word)!r} merge by merge",
        "To encode, a pre-token starts as bytes and the adjacent pair with the lowest rank (the "
        "earliest-learned merge) is merged, again and again, until no learned pair is left. Each line "
        "is the word after one more of the learned merges applies.",
    ).value("stages", [" | ".join(st) for st in stages])
    s.check("the last stage is what the tokenizer (tiktoken underneath) produces", stages[-1] == final)

    ids = tok.encode(text)
    exp.step(
        "Compression",
        f"After {len(merges)} merges the same text takes fewer tokens. Real tokenizers learn thousands "
        "of merges (GPT-2: 50,000), which is why one token is about 4 bytes of English.",
    ).value("bytes", len(data)).value("tokens", len(ids)).value(
        "bytes per token", len(data) / len(ids)
    ).check("decode(encode(text)) == text", tok.decode(ids) == text)
    return exp
