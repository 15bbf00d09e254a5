"""How a sweep counts parameters N and compute C — the way the scaling-law papers do.

Two counts of parameters matter:

* **non-embedding N** (Kaplan et al. 2020): every weight except the token (and learned position)
  embedding table. The sweep's fits use it. For a small vocabulary, the embedding is a small,
  size-independent lookup that barely costs compute, and counting it bends the small end of the
  curves (Kaplan et al. §2.1).
* **total N** (Hoffmann et al. 2022 count all parameters); recorded beside it for comparison
  (``--count total`` fits on it instead).

Compute per training token is taken from the model itself,
:meth:`scratchllm.model.gpt.GPTModel.estimate_flops_per_token`: ``6·N_matmul + 12·n_layer·d·T``,
i.e. the forward and backward pass through every matrix that multiplies a token's activations
(the non-embedding weights *and* the output head) plus attention's two ``T × T`` products per
layer — the attention term that ``6ND`` leaves out (Hoffmann et al. appendix F; PaLM appendix
B). For the tiny models of a CPU sweep those extra terms are large (a 1-layer, 16-wide model
spends more FLOPs on attention and the head than on its 3k "parameters"), so ``C = D ×
flops_per_token`` is what the sweep budgets and fits; ``6ND`` is recorded next to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Written into sweep.json and fit.json so every number says how it was counted.
CONVENTIONS = {
    "N": "non-embedding parameters (Kaplan et al. 2020): all weights except the token/position "
    "embedding tables; N_total counts them too (Hoffmann et al. 2022)",
    "D": "training tokens (optimizer steps x batch x context)",
    "C": "training FLOPs = D x (6 x N_matmul + 12 x n_layer x d_model x context): forward+backward "
    "through every matrix incl. the output head, plus attention's QK^T and AV products "
    "(Hoffmann et al. 2022 appendix F; PaLM appendix B); C_6ND = 6 x N x D is recorded beside it",
    "loss": "mean next-token cross-entropy on the validation split, nats per token",
}


@dataclass(frozen=True)
class ModelCount:
    """Parameters and training FLOPs per token of one model shape."""

    n_params: int  # non-embedding
    n_params_total: int
    flops_per_token: float  # training (forward + backward), incl. the attention term
    context_length: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_model(model_config: Any, context_length: int) -> ModelCount:
    """Count a GPT config's parameters and training FLOPs per token without allocating it.

    The model is built on PyTorch's ``meta`` device (shapes only), and its own counters are used:
    ``num_params(exclude_embeddings=...)`` and ``estimate_flops_per_token(seq_len)``.
    """
    import torch

    from scratchllm.architectures import build_model

    with torch.device("meta"):
        model = build_model("gpt", model_config)
    return ModelCount(
        n_params=int(model.num_params(exclude_embeddings=True)),
        n_params_total=int(model.num_params()),
        flops_per_token=float(model.estimate_flops_per_token(context_length, training=True)),
        context_length=int(context_length),
    )
