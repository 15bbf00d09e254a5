"""Mixture-of-Experts feed-forward: many FFNs, and a router that sends each token to a few of them.

A dense transformer block runs every token through the same feed-forward network (FFN). A
Mixture-of-Experts (MoE) block holds ``n_experts`` FFNs ("experts") and a tiny linear *router* that
scores every expert for every token. Each token only visits its ``top_k`` best-scoring experts, and
their outputs are mixed with the router's (renormalised) probabilities::

    p      = softmax(router(x))                 # [tokens, n_experts]
    w, e   = topk(p, k);  w = w / w.sum()       # k experts per token, weights summing to 1
    y      = sum_j w_j * expert_{e_j}(x)

So the model has ``n_experts`` times the FFN parameters but spends only ``top_k`` FFNs of compute per
token — the trick behind Switch Transformer and Mixtral.

Left alone, a router tends to collapse onto a few favourite experts (they get more gradient, get
better, get chosen more). Two auxiliary losses push back:

* **load balancing** (Switch Transformer, eq. 4; Mixtral uses the same form)::

      aux = coef * n_experts * sum_i f_i * P_i

  where ``f_i`` is the fraction of the token→expert assignments that went to expert ``i`` and
  ``P_i`` the mean router probability of expert ``i``. ``f`` has no gradient (it comes from an
  argmax) but ``P`` does, and the product is smallest (= ``coef``) when both are uniform.
* **router z-loss** (ST-MoE): ``z_coef * mean(logsumexp(logits)^2)`` keeps router logits small,
  which keeps the softmax numerically tame.

Tokens are dispatched *by expert*: for each expert we gather the tokens routed to it with
``index_select``, run the expert once on that batch, and scatter the weighted results back with
``index_add_``. A loop over experts is fine (there are few); a loop over tokens would not be.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.model.config import BlockConfig
from scratchllm.model.layers import FeedForward


class MoEFeedForward(nn.Module):
    """Drop-in replacement for :class:`~scratchllm.model.layers.FeedForward` (``[B,T,C] -> [B,T,C]``).

    After every forward pass the module keeps:

    * ``aux_loss()`` — load-balancing + z-loss of that pass (a scalar with gradient), which
      ``GPTModel.aux_loss()`` sums over layers and the training loss adds;
    * ``expert_utilisation()`` — fraction of token→expert assignments per expert (sums to 1), for
      logging how evenly the experts are used.
    """

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        self.n_experts = config.n_experts
        self.top_k = config.moe_top_k
        self.aux_loss_coef = config.moe_aux_loss_coef
        self.z_loss_coef = config.moe_z_loss_coef
        self.router = nn.Linear(config.n_embd, config.n_experts, bias=False)
        # Each expert is an ordinary FFN of the configured kind (GELU, ReLU or SwiGLU).
        self.experts = nn.ModuleList(FeedForward(config) for _ in range(config.n_experts))
        self._aux_loss: torch.Tensor | None = None
        self._utilisation: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score experts for tokens ``x`` ``[N, C]``.

        Returns ``(logits [N,E], weights [N,k], experts [N,k])``: the router logits, and for every
        token its ``k`` chosen experts with their renormalised weights (each row sums to 1).
        """
        logits = self.router(x)
        # Softmax in float32: router probabilities feed a loss and a ranking, both precision-sensitive.
        probs = F.softmax(logits.float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights.to(x.dtype), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, C]: routing is per token, so batch and time are one axis
        logits, weights, experts = self.route(x)

        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            # (token, slot) pairs whose slot chose expert e; a token picks an expert at most once.
            token_idx, slot_idx = torch.where(experts == e)
            if token_idx.numel() == 0:
                continue
            y = expert(x.index_select(0, token_idx))
            y = y * weights[token_idx, slot_idx].unsqueeze(-1)
            out.index_add_(0, token_idx, y.to(out.dtype))  # under autocast y may be bf16, out fp32

        self._aux_loss, self._utilisation = self._losses(logits, experts)
        return out.reshape(shape)

    def _losses(self, logits: torch.Tensor, experts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Load-balancing loss + router z-loss, and the per-expert assignment fractions ``f``."""
        n_tokens = experts.shape[0]
        counts = torch.bincount(experts.reshape(-1), minlength=self.n_experts).float()
        f = counts / (n_tokens * self.top_k)  # fraction of assignments per expert; sums to 1
        p = F.softmax(logits.float(), dim=-1).mean(dim=0)  # mean router probability per expert
        aux = self.aux_loss_coef * self.n_experts * (f * p).sum()
        if self.z_loss_coef > 0:
            z = torch.logsumexp(logits.float(), dim=-1)
            aux = aux + self.z_loss_coef * (z**2).mean()
        return aux, f.detach()

    def aux_loss(self) -> torch.Tensor:
        """Auxiliary loss of the last forward pass (zero before the first one)."""
        if self._aux_loss is None:
            return torch.zeros((), device=self.router.weight.device)
        return self._aux_loss

    def expert_utilisation(self) -> list[float]:
        """Fraction of token→expert assignments per expert in the last forward pass (sums to 1)."""
        if self._utilisation is None:
            return [0.0] * self.n_experts
        return [round(float(v), 4) for v in self._utilisation]


def expert_utilisation(model: nn.Module) -> dict[str, list[float]]:
    """``{"layer_0": [f_0, ..., f_E-1], ...}`` for every MoE layer in ``model`` (empty if dense).

    The training loop logs this at eval time so one can watch whether the router collapses.
    """
    moes = [m for m in model.modules() if isinstance(m, MoEFeedForward)]
    return {f"layer_{i}": m.expert_utilisation() for i, m in enumerate(moes)}
