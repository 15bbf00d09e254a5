"""Int8 weights for faster CPU generation.

Why: generating one token multiplies one activation vector by *every* weight matrix once. That is
not limited by arithmetic but by how fast the weights stream from memory — GPT-2 small's 124M
fp32 weights are ~0.5 GB per token. Stored as int8 they are ~0.13 GB: up to 4x fewer bytes to read.

How: each output row (channel) ``w`` of a Linear layer gets its own scale ``s = max|w| / 127`` and
is stored as ``round(w / s)`` in int8 (symmetric, per-output-channel). The matmul computes
``(x @ q.T) * s``, which equals ``x @ (q * s).T``: the scale is applied to the *outputs*, so the
weights are never expanded back to float in memory.

Kernels (one ``Int8Linear`` module, the fastest kernel this PyTorch build offers):

* ``"fbgemm"`` (x86 CPUs): PyTorch's int8 GEMM ``quantized.linear_dynamic``. It also rounds each
  activation row to 8 bits on the fly ("dynamic" quantization) so that the product runs on integer
  SIMD units. Measured on GPT-2 124M, batch-1 greedy decoding, 1 thread: ~5x the fp32 tokens/s,
  ~2.5x the weight-only kernel below; perplexity of a small trained char model +0.03 %.
* ``"int8pack"`` (everything else, e.g. ARM, CUDA, or a future PyTorch without the quantized
  tensor API): ``aten._weight_int8pack_mm``, weight-only int8 x bf16 activations. (With fp32
  activations this op takes a slow path on the CPUs we measured, hence the bf16 cast.)

Quantized models are for inference only (no gradients through int8 weights, not saved).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """fp weight ``[N, K]`` -> (int8 ``[N, K]``, fp32 scales ``[N]``), symmetric per output row."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def _fbgemm_available() -> bool:
    return (
        "fbgemm" in torch.backends.quantized.supported_engines
        or "x86" in torch.backends.quantized.supported_engines
    )


class Int8Linear(nn.Module):
    """A drop-in ``nn.Linear`` replacement holding int8 weights and per-row scales (inference only)."""

    def __init__(self, linear: nn.Linear, kernel: str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scales = quantize_weight(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        if kernel is None:
            kernel = "fbgemm" if linear.weight.device.type == "cpu" and _fbgemm_available() else "int8pack"
        self.kernel = kernel
        self._packed = None
        if kernel == "fbgemm":
            try:
                with warnings.catch_warnings():  # the quantized-tensor API warns it is deprecated
                    warnings.simplefilter("ignore")
                    zero = torch.zeros(q.shape[0], dtype=torch.long)
                    qweight = torch._make_per_channel_quantized_tensor(q, scales.double(), zero, 0)
                    self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
            except (RuntimeError, AttributeError):  # this build has no fbgemm int8 GEMM
                self.kernel = kernel = "int8pack"
        if self._packed is None:  # (the fbgemm kernel keeps its own packed copy of q)
            self.register_buffer("weight_int8", q)
            self.register_buffer("scales", scales.to(torch.bfloat16))  # the kernel wants activation dtype
            self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        if self._packed is not None:
            # reduce_range=True: 7-bit activations, safe on x86 CPUs without VNNI instructions.
            return torch.ops.quantized.linear_dynamic(x.float(), self._packed, True).to(x.dtype)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


def quantize_int8(model: nn.Module, kernel: str | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by :class:`Int8Linear`; return the model.

    ``kernel``: ``"fbgemm"`` or ``"int8pack"``; None picks the fastest available (see above).

    The output head is quantized too: it is the largest matrix of a small GPT. The token embedding
    stays in float (it is a table lookup, one row per token, so its size costs no bandwidth).
    """
    model.eval()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8Linear(child, kernel))
    return model


def relayout_for_decoding(model: nn.Module) -> nn.Module:
    """Store every ``nn.Linear`` weight column-major (in place; inference only); return the model.

    ``nn.Linear`` keeps its weight as ``[out, in]`` and computes ``x @ W.T``. When ``x`` is a single
    row (one token per decoding step) the product is a matrix-vector product whose speed is the
    speed of reading W, and the CPU BLAS we measured reads ``W.T`` ~1.4x faster when ``W.T`` itself
    is contiguous (the layout Hugging Face's GPT-2 ``Conv1D`` happens to use). Here each weight
    keeps its logical ``[out, in]`` shape — names, shapes and results are unchanged — but its
    storage becomes the transpose. Tied weights (``out_head`` = ``tok_emb``) are relaid once.

    Costs: a copy of each weight while converting, slower training matmuls with this layout, and
    safetensors refuses non-contiguous tensors — use it for a model that only generates.
    """
    done: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and id(module.weight) not in done:
                done.add(id(module.weight))
                module.weight.data = module.weight.data.t().contiguous().t()
    return model
