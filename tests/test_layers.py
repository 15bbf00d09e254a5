"""The package's layering (docs/ARCHITECTURE.md) is a rule, and these tests enforce it.

A module may import from its own package and from *lower* layers only; two packages on the same
layer never import each other (``train`` and ``convert`` are independent: the converter plugs in
from above, through ``load``). Every import counts — at module level or inside a function — so a
lazy import cannot hide an upward dependency. There are no import cycles between modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scratchllm"

#: lowest first; a name is a subpackage or a top-level module of scratchllm.
LAYERS: list[set[str]] = [
    {"errors"},
    {"io", "config", "device", "progress"},
    {"tokenizer"},
    {"data"},
    {"model"},
    {"weights", "generate", "visualize"},
    {"adapters", "evaluate"},
    {"tasks"},
    {"architectures"},
    {"runs"},
    {"convert", "train"},
    {"load"},
    {"inspect"},
    {"finetune", "serve", "explain", "sweep"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """``scratchllm.train.loop`` -> ``train``; ``scratchllm`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, *, top_level_only: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``scratchllm`` import in a file (``top_level_only``: just the
    statements that run at import time, not those in functions or under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("scratchllm")]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("scratchllm")
        ):
            base = node.module
            for a in node.names:  # `from scratchllm import runs` imports the module scratchllm.runs
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if sub in _MODULES else base))
    return found


_MODULES = _modules()


def test_every_package_has_a_layer() -> None:
    units = {_unit(m) for m in _MODULES} - {"__init__"}
    assert units <= set(RANK), f"add these to LAYERS (and docs/ARCHITECTURE.md): {sorted(units - set(RANK))}"


def test_no_import_goes_up_or_sideways() -> None:
    bad = []
    for module, path in sorted(_MODULES.items()):
        me = _unit(module)
        if me == "__init__":
            continue
        for line, target in _imports(path):
            other = _unit(target)
            if other in (me, "__init__"):
                continue
            if RANK[other] >= RANK[me]:
                rel = path.relative_to(PACKAGE.parent)
                bad.append(f"{rel}:{line}: {me} (layer {RANK[me]}) imports {target} (layer {RANK[other]})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_layer_test_would_catch_an_upward_import(tmp_path) -> None:
    """The checker itself works: a model module importing train is reported."""
    fake = tmp_path / "m.py"
    fake.write_text("def f():\n    from scratchllm.train.loop import train\n")
    (line, target) = _imports(fake)[0]
    assert (line, _unit(target)) == (2, "train") and RANK["train"] > RANK["model"]


def test_no_import_cycles_between_modules() -> None:
    """Module-level imports (what runs at import time) form no cycle."""
    graph = {
        m: {t for _, t in _imports(p, top_level_only=True) if t in _MODULES and t != m}
        for m, p in _MODULES.items()
    }
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("verb_module", ["generate", "eval", "inspect", "chat", "serve"])
def test_loading_a_model_imports_no_training_code(tmp_path, verb_module) -> None:
    """generate/eval/inspect/chat/serve load models without importing any scratchllm.train module."""
    code = f"""
import sys, torch
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.runs import save_run_files
from scratchllm.tokenizer import CharTokenizer
tok = CharTokenizer.train("hello world")
cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=1, n_head=2, n_embd=16)
save_run_files({str(tmp_path / "run")!r}, GPTModel(cfg), arch="gpt", model_config=cfg, tokenizer=tok)
import scratchllm.cli.{verb_module}
if "{verb_module}" == "serve":
    import scratchllm.serve.app, scratchllm.serve.server  # noqa: E401
from scratchllm.load import load_model
load_model({str(tmp_path / "run")!r})
leaked = sorted(m for m in sys.modules if m.startswith("scratchllm.train"))
assert not leaked, leaked
"""
    subprocess.run([sys.executable, "-c", code], check=True)
