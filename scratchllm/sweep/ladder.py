"""The model-size ladder and the compute budgets of a sweep.

A scaling-law sweep trains *the same recipe* at several model sizes and several compute budgets.
This module says which sizes exist (:data:`DEFAULT_LADDER`), how a size is written on the command
line (``L2-d48``: 2 layers, width 48), how budgets are parsed (``3e10,1e11``), and which sizes to
train at each budget.

**The ladder** grows depth and width together, as the papers' model families do: each step roughly
doubles the non-embedding parameters, from ~0.9k to ~0.8M. Heads are 16 wide, and the feed-forward
layer is ``8/3 · d`` wide for SwiGLU (``4 · d`` otherwise), rounded to a multiple of 8, so the
parameter count follows ``≈ 12 · n_layer · d²`` smoothly along the ladder.

**Which sizes per budget.** A budget ``C`` buys each size ``D = C / flops_per_token`` tokens, i.e.
``D / (batch · context)`` optimizer steps; a size that would get fewer than :data:`MIN_STEPS`
steps cannot be trained meaningfully at that budget. Among the rest, ``--sizes auto`` trains a
window of consecutive sizes around the expected optimum (the Chinchilla prior of ~20 tokens per
parameter for the first budget, then the trend of the budgets already fitted), and widens the
window when the iso-FLOP minimum lands on its edge; ``--sizes all`` trains every size that fits,
and an explicit list (``L1-d32,L2-d48,...``) trains exactly those.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from scratchllm.errors import ScratchLLMError

#: A size gets at least this many optimizer steps at a budget, or it is not trained there.
MIN_STEPS = 50
#: ``--sizes auto``: sizes trained per budget (before any widening).
DEFAULT_PER_BUDGET = 5
#: ``--sizes auto``: how many sizes a budget's window may grow by when its minimum sits on an edge.
MAX_WIDEN = 2
#: The prior for the first budget's window: Chinchilla's ~20 training tokens per parameter.
PRIOR_TOKENS_PER_PARAM = 20.0
#: Heads are this wide (fewer heads for very narrow models: at least one).
HEAD_DIM = 16


@dataclass(frozen=True, order=True)
class Size:
    """One rung of the ladder: depth, width and heads (the rest comes from the recipe)."""

    n_layer: int
    n_embd: int
    n_head: int

    @property
    def name(self) -> str:
        return f"L{self.n_layer}-d{self.n_embd}"

    def model_overrides(self, activation: str) -> dict[str, int]:
        """The model config keys this size sets (``ffn_hidden`` from the width and the activation)."""
        if activation == "swiglu":
            hidden = 8 * math.ceil(8 * self.n_embd / 3 / 8)
        else:
            hidden = 4 * self.n_embd
        return {"n_layer": self.n_layer, "n_embd": self.n_embd, "n_head": self.n_head, "ffn_hidden": hidden}


def default_heads(n_embd: int) -> int:
    """Heads of width :data:`HEAD_DIM` (at least one; the width must divide evenly)."""
    return max(1, round(n_embd / HEAD_DIM))


def _size(n_layer: int, n_embd: int, n_head: int | None = None) -> Size:
    return Size(n_layer, n_embd, n_head or default_heads(n_embd))


#: ~0.9k to ~0.8M non-embedding parameters, each rung about twice the one before.
DEFAULT_LADDER: tuple[Size, ...] = (
    _size(1, 8),
    _size(1, 16),
    _size(1, 24),
    _size(2, 24),
    _size(2, 32),
    _size(2, 48),
    _size(2, 64),
    _size(3, 80),
    _size(4, 96),
    _size(4, 128),
)

_SIZE_RE = re.compile(r"^L(\d+)-d(\d+)(?:-h(\d+))?$", re.IGNORECASE)


def parse_size(text: str) -> Size:
    """``L2-d48`` (2 layers, width 48, heads of 16) or ``L2-d48-h4`` (4 heads)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise ScratchLLMError(
            f"bad model size {text!r} in --sizes; write LAYERS and WIDTH as L2-d48 (or L2-d48-h4 for 4 heads)"
        )
    n_layer, n_embd = int(m.group(1)), int(m.group(2))
    n_head = int(m.group(3)) if m.group(3) else default_heads(n_embd)
    if n_layer < 1 or n_embd < 1 or n_head < 1:
        raise ScratchLLMError(f"model size {text!r}: layers, width and heads must be >= 1")
    if n_embd % n_head:
        raise ScratchLLMError(f"model size {text!r}: width {n_embd} is not divisible by {n_head} heads")
    return Size(n_layer, n_embd, n_head)


@dataclass(frozen=True)
class SizeChoice:
    """What ``--sizes`` asked for: ``auto`` (a window per budget), ``all``, or a fixed list."""

    mode: str  # "auto" | "all" | "list"
    sizes: tuple[Size, ...]


def parse_sizes(text: str | None) -> SizeChoice:
    """``auto`` (default), ``all``, or a comma-separated list of sizes (each trained at every budget
    that gives it :data:`MIN_STEPS` steps; fewer than 3 sizes leave approach 2 without parabolas)."""
    text = (text or "auto").strip()
    if text.lower() in ("auto", "all"):
        return SizeChoice(text.lower(), DEFAULT_LADDER)
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise ScratchLLMError("--sizes lists no size; write e.g. L1-d32,L2-d48,L2-d64 (or auto)")
    if len(set(sizes)) != len(sizes):
        raise ScratchLLMError("--sizes lists a size twice")
    return SizeChoice("list", tuple(sorted(sizes, key=lambda s: (s.n_layer * s.n_embd**2, s))))


#: The default budgets (training FLOPs): five budgets over two decades, sized for 2 CPU cores.
DEFAULT_BUDGETS: tuple[float, ...] = (1e10, 3e10, 1e11, 3e11, 1e12)
#: The default recipe: the char-shakespeare preset (RoPE, RMSNorm, SwiGLU, lr 6e-3, ...) with a
#: smaller batch, 16 x 64 tokens. At these budgets a point gets a few hundred steps, and smaller
#: batches spend tokens better (at 1e11 FLOPs: val loss 1.75 vs 1.93 for batch 32, same tokens).
DEFAULT_PRESET = "char-shakespeare"
DEFAULT_RECIPE_OVERRIDES: dict[str, str] = {"batch_size": "16"}


def parse_budget(text: str, what: str = "--budget") -> float:
    """One compute budget in FLOPs, e.g. ``1e12`` or ``3.5e11`` (a positive, finite number)."""
    try:
        value = float(str(text).strip().replace("_", ""))
    except ValueError:
        raise ScratchLLMError(f"{what}: {text!r} is not a number of FLOPs (write e.g. 1e12)") from None
    if not math.isfinite(value) or value <= 0:
        raise ScratchLLMError(f"{what}: {text!r} must be a positive, finite number of FLOPs")
    return value


def parse_budgets(text: str | None) -> tuple[float, ...]:
    """``"3e10,1e11,3e11"`` → sorted budgets (None: :data:`DEFAULT_BUDGETS`). At least 2 are needed
    for a power law in C; duplicates are errors."""
    if text is None or not text.strip() or text.strip().lower() == "default":
        return DEFAULT_BUDGETS
    values = [parse_budget(part, "--budgets") for part in text.split(",") if part.strip()]
    if len(values) < 2:
        raise ScratchLLMError(
            "--budgets needs at least 2 budgets (a power law in C needs 2; 3 or more are better), "
            "e.g. --budgets 1e11,3e11,1e12"
        )
    if len(set(values)) != len(values):
        raise ScratchLLMError("--budgets lists a budget twice")
    return tuple(sorted(values))


def format_budget(c: float) -> str:
    """``3e11`` rather than ``3e+11`` or ``300000000000.0``: short, and safe in a directory name."""
    mantissa, exponent = f"{c:.3g}".partition("e")[::2] if "e" in f"{c:.3g}" else (f"{c:.3g}", "")
    if not exponent:
        exp = int(math.floor(math.log10(c)))
        mantissa = f"{c / 10**exp:.3g}"
        exponent = str(exp)
    return f"{mantissa}e{int(exponent)}"


def window(candidates: Sequence[float], target: float, k: int) -> tuple[int, int]:
    """The ``k`` consecutive candidates (sorted ``log N`` values) centred on the one closest to
    ``target`` (shifted to stay inside): returns ``(start, stop)`` indices."""
    if not candidates:
        return 0, 0
    k = min(k, len(candidates))
    centre = min(range(len(candidates)), key=lambda i: abs(candidates[i] - target))
    start = max(0, min(centre - k // 2, len(candidates) - k))
    return start, start + k
