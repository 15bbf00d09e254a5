"""The building blocks around attention: normalisation, activations, the feed-forward network,
and the ways a transformer learns *where* a token is (positional encodings).

Read in this order:

1. ``LayerNorm`` and ``RMSNorm`` — keep activations at a sane scale so deep stacks train.
2. ``GELU`` — the smooth ReLU that GPT-2 uses (tanh approximation); ``ReLU2``, its squared cousin.
3. ``FeedForward`` — the per-token MLP of every block (GELU/ReLU, or SwiGLU as in Llama).
4. Positions — a sinusoidal table (the original transformer), rotary embeddings (RoPE), and
   ALiBi slopes. Learned absolute positions are just an ``nn.Embedding`` in ``gpt.py``.

Everything here is configured by a :class:`~scratchllm.model.config.BlockConfig` (GPT, BERT and the
encoder-decoder configs all are one); ``make_norm`` turns a config into the right norm.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from scratchllm.model.config import BlockConfig


# ---------------------------------------------------------------------------------------------
# 1. Normalisation
# ---------------------------------------------------------------------------------------------
class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's ``nn.LayerNorm`` always has one).

    Each token vector is shifted to mean 0 and scaled to variance 1, then a learned per-feature
    ``weight`` (and ``bias``) lets the network undo that where it helps.
    """

    def __init__(self, dim: int, *, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama, T5): only rescales, never re-centres, and has no bias.

    ``x / sqrt(mean(x**2) + eps) * weight`` — cheaper than LayerNorm and, in practice, as good.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def make_norm(config: BlockConfig, dim: int | None = None) -> nn.Module:
    """The normalisation layer that ``config.norm`` asks for (LayerNorm bias follows ``config.bias``)."""
    dim = config.n_embd if dim is None else dim
    if config.norm == "rmsnorm":
        return RMSNorm(dim, eps=config.norm_eps)
    return LayerNorm(dim, bias=config.bias, eps=config.norm_eps)


# ---------------------------------------------------------------------------------------------
# 2. Activations
# ---------------------------------------------------------------------------------------------
class GELU(nn.Module):
    """GELU with GPT-2's tanh approximation:

    ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))``

    Unlike ReLU it is smooth and lets a little negative signal through. We call PyTorch's fused
    kernel (``approximate="tanh"``), which computes exactly that formula in one pass instead of
    the six separate tensor operations the formula would take in Python.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate="tanh")


class ReLU2(nn.Module):
    """Squared ReLU, ``relu(x) ** 2`` (So et al. 2021, "Primer: Searching for Efficient Transformers").

    As cheap as ReLU, but smooth at 0 from the right and growing quadratically: in small-scale
    speedruns it learns faster per step than GELU for the same parameters.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x).square()


# ---------------------------------------------------------------------------------------------
# 3. Feed-forward network
# ---------------------------------------------------------------------------------------------
class FeedForward(nn.Module):
    """The per-token MLP: expand to a hidden width, apply a non-linearity, project back.

    * GELU / ReLU / ReLU² (GPT-2, the original transformer, Primer): ``proj(act(fc(x)))`` with
      hidden = 4 * n_embd.
    * SwiGLU (PaLM, Llama): ``proj(silu(gate(x)) * up(x))``. ``gate`` and ``up`` are stored as one
      fused ``fc`` Linear of width 2 * hidden (gate rows first, then up rows) so that one matmul
      computes both.
    """

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        hidden = config.hidden_dim
        self.activation = config.activation
        fc_out = 2 * hidden if config.activation == "swiglu" else hidden
        self.fc = nn.Linear(config.n_embd, fc_out, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        if config.activation == "gelu":
            self.act: nn.Module = GELU()
        elif config.activation == "gelu_erf":
            self.act = nn.GELU()  # exact erf GELU, as in BERT
        elif config.activation == "relu":
            self.act = nn.ReLU()
        elif config.activation == "relu2":
            self.act = ReLU2()
        else:
            self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = self.act(h)
        return self.proj(h)


@torch.no_grad()
def init_transformer_weights(model: nn.Module, std: float, residual_std: float | None) -> None:
    """The GPT-2 initialisation, shared by every model here (GPT, BERT, seq2seq).

    Linear and embedding weights ~ N(0, std), biases 0 (norms keep their 1 / 0). Every residual
    branch ends in a ``proj`` Linear whose output is *added* to the stream; with ``residual_std``
    (std / sqrt(number of additions)) those weights start smaller so that the stream's variance
    does not grow with depth; None leaves them at ``std`` (BERT's post-norm recipe). A submodule
    that keeps weights in raw Parameters (a Mixture-of-Experts layer) can define
    ``init_weights(std, residual_std)`` to take part.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    if residual_std is not None:
        for name, param in model.named_parameters():
            if name.endswith(".proj.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)
    for module in model.modules():
        hook = getattr(module, "init_weights", None)
        if module is not model and callable(hook):
            hook(std, std if residual_std is None else residual_std)


def sum_aux_losses(model: nn.Module) -> Tensor:
    """Sum of the auxiliary losses (MoE load balancing, z-loss) of ``model``'s last forward pass.

    Any submodule may expose ``aux_loss`` (a tensor, or a method returning one). Dense models
    return a zero scalar, so training code can always add it to the main loss.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    total = torch.zeros((), device=device)
    for module in model.modules():
        if module is model:
            continue
        value = getattr(module, "aux_loss", None)
        if callable(value):
            value = value()
        if isinstance(value, Tensor):
            total = total + value
    return total


# ---------------------------------------------------------------------------------------------
# 4. Positional encodings
# ---------------------------------------------------------------------------------------------
# Attention by itself is blind to order: permute the tokens and every output is permuted the same
# way. Each scheme below injects position somewhere different:
#   learned / sinusoidal  -> a vector *added to the token embedding* at the input;
#   RoPE                  -> a rotation of every query and key vector inside attention;
#   ALiBi                 -> a penalty *added to the attention scores*, growing with distance.


def sinusoidal_table(n_pos: int, dim: int, base: float = 10000.0) -> Tensor:
    """The fixed position table of "Attention Is All You Need", shape ``[n_pos, dim]``.

    Even features are ``sin(pos / base**(2i/dim))`` and odd features the matching ``cos``, so each
    feature pair is a clock turning at its own speed; nearby positions get similar vectors and
    nothing has to be learned.
    """
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = pos * inv_freq  # [n_pos, ceil(dim/2)]
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


def rope_cache(n_pos: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin tables for rotary position embeddings, each ``[n_pos, head_dim]``.

    RoPE (Su et al. 2021) rotates feature pairs of each query and key by an angle proportional to
    the token's position. The dot product of a rotated query at position m and a rotated key at
    position n then depends only on m - n: relative positions for free, with no parameters.

    Layout: **rotate-half** (GPT-NeoX / Hugging Face Llama style) — feature ``i`` is paired with
    feature ``i + head_dim/2`` rather than with its neighbour ``i + 1`` (the "interleaved" layout of
    the paper and of Meta's original Llama code). Both are equally good; weights trained with one
    layout need their q/k rows permuted to be used with the other.
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(n_pos, dtype=torch.float32)[:, None] * inv_freq  # [n_pos, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)  # the same angle for feature i and i + head_dim/2
    return angles.cos(), angles.sin()


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension: a 90-degree turn of every feature pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (``[B, heads, T, head_dim]``) by the angles in ``cos``/``sin``.

    ``cos``/``sin`` are ``[T, head_dim]`` (all rows share positions) or ``[B, 1, T, head_dim]``
    (per-row positions, e.g. a left-padded batch). This is the 2-D rotation
    ``(a, b) -> (a cos t - b sin t, b cos t + a sin t)`` applied to every pair at once.
    """
    return x * cos + rotate_half(x) * sin


def alibi_slopes(n_head: int) -> Tensor:
    """The per-head slopes of ALiBi (Press et al. 2022), shape ``[n_head]``.

    Head h adds ``-slope[h] * distance`` to its attention scores, so it prefers recent tokens;
    steep heads look locally, shallow heads far. For 2**k heads the slopes are the geometric
    sequence ``2**(-8/n), 2**(-16/n), ...``; other head counts take the slopes of the nearest
    smaller power of two and fill up with every other slope of the next power of two.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        slopes = power_of_two(n_head)
    else:
        lower = 2 ** math.floor(math.log2(n_head))
        slopes = power_of_two(lower) + power_of_two(2 * lower)[0::2][: n_head - lower]
    return torch.tensor(slopes, dtype=torch.float32)
