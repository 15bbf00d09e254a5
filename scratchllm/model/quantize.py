"""Weight-only int8 quantization for faster CPU generation.

Why: generating one token multiplies one activation vector by *every* weight matrix once. That is
not limited by arithmetic but by how fast the weights stream from memory — GPT-2 small's 124M
fp32 weights are ~0.5 GB per token. Stored as int8 they are ~0.13 GB: up to 4x fewer bytes to read.

How: each output row (channel) ``w`` of a Linear layer gets its own scale ``s = max|w| / 127`` and
is stored as ``round(w / s)`` in int8 (symmetric, per-output-channel). The matmul computes
``(x @ q.T) * s``, which equals ``x @ (q * s).T``: the scale is applied to the *outputs*, so the
weights are never expanded back to float in memory. Activations stay in floating point (only the
weights are quantized), which keeps the error small: typically a ~1 % perplexity increase.

The kernel is PyTorch's ``aten._weight_int8pack_mm`` (int8 weights x bf16 activations, per-channel
scales — the same op torchao's int8 weight-only path lowers to). With fp32 activations this op falls
back to a slow path on the CPUs we measured, so inputs are cast to bf16 for the product and the
result cast back. Quantized models are for inference only (no gradients through int8 weights).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """fp weight ``[N, K]`` -> (int8 ``[N, K]``, fp32 scales ``[N]``), symmetric per output row."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales


class Int8Linear(nn.Module):
    """A drop-in ``nn.Linear`` replacement holding int8 weights and per-row scales (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scales = quantize_weight(linear.weight)
        self.register_buffer("weight_int8", q)
        # The kernel wants the scales in the activation dtype.
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by :class:`Int8Linear`; return the model.

    The output head is quantized too: it is the largest matrix of a small GPT. The token embedding
    stays in float (it is a table lookup, one row per token, so its size costs no bandwidth).
    """
    model.eval()
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8Linear(child))
        del name
    return model
