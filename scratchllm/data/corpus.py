"""The embedded default corpus: English prose that ships with every CPython.

A language model needs text, and a first run should not need a download. CPython carries the
prose of its language reference and library topics (what ``help("assert")`` prints) in the
module ``pydoc_data.topics``: about 465 KB of well-edited technical English in 79 topics. That
is enough for a tokenizer and a small GPT to learn something visible in a few minutes on a CPU.

Two views of it:

* :func:`default_corpus_documents` — one string per topic, in sorted topic order. ``prepare``
  treats each as a document and separates them with ``<|endoftext|>``.
* :func:`default_corpus` — the same documents joined by a blank line, as one plain text (for
  tokenizer training, or anywhere a single string is handier).

Both are deterministic for a given Python version (the topics change slightly between
releases), and :data:`DEFAULT_CORPUS_NAME` says where the text came from.
"""

from __future__ import annotations

import sys
from pathlib import Path

from scratchllm.errors import ScratchLLMError

#: How ``meta.json`` and the CLI name this source.
DEFAULT_CORPUS_NAME = (
    f"default corpus (CPython {sys.version_info.major}.{sys.version_info.minor} pydoc_data.topics)"
)

# Documents are joined with a blank line in the single-string view: it reads naturally and, unlike
# "<|endoftext|>", it cannot be mistaken for a special token by any tokenizer.
_SEPARATOR = "\n\n"


def default_corpus_documents() -> list[str]:
    """The embedded corpus as a list of documents (one per pydoc topic, sorted by topic name)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some slimmed-down Python builds drop pydoc_data
        raise ScratchLLMError(
            "this Python build has no pydoc_data module, so the embedded default corpus is unavailable; "
            "pass your own text with --input FILE (or install a full CPython)"
        ) from None
    docs = [topics[name].strip() for name in sorted(topics)]
    return [d for d in docs if d]


def default_corpus() -> str:
    """The embedded corpus as one string (documents joined by a blank line)."""
    return _SEPARATOR.join(default_corpus_documents()) + "\n"


def read_text_data(data: str | Path, *, what: str) -> tuple[str, str]:
    """``--data`` as text: ``default`` (the embedded corpus), a text file, or a directory of ``*.txt``.

    Returns ``(text, description of the source)``. Prepared token shards are refused with a hint:
    models that read sentences (BERT) need the text itself.
    """
    from scratchllm.io import read_text

    if str(data) == "default":
        return default_corpus(), "default corpus"
    path = Path(data)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            if (path / "train.bin").is_file():
                raise ScratchLLMError(
                    f"{path} holds prepared token shards; {what} needs sentences, so give the text file "
                    "itself (or --data default)"
                )
            raise ScratchLLMError(f"no .txt files in {path}; give a text file or --data default")
        return "\n\n".join(read_text(f, "training text") for f in files), str(path)
    if not path.exists():
        raise ScratchLLMError(f"training text not found: {path} (give a .txt file, a directory or 'default')")
    return read_text(path, "training text"), str(path)
