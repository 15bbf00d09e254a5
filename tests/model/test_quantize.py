"""int8 quantization: every kernel computes the dequantized product, tiny perplexity cost on a
briefly trained model, generation works, and "auto" picks an available kernel (and caches it)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import generate
from scratchllm.model import quantize as q8
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel, lm_loss
from scratchllm.model.quantize import (
    Int8Linear,
    choose_kernel,
    kernel_in_use,
    pack_weight,
    quantize_int8,
    quantize_weight,
    relayout_for_decoding,
    unpack_weight,
)


def _kernel_params() -> list:
    """Every kernel; the C++ ones are skipped (with the reason) only where they cannot be built,
    e.g. no compiler."""
    why = q8.cpp_kernel_error()
    skip = pytest.mark.skipif(why is not None, reason=f"cpp kernel: {why}")
    return [*(pytest.param(k, marks=skip) for k in q8.CPP_KERNELS), "int8pack", "fp32"]


#: kernels that round the activations too (bf16 or int8) on the one-row path
ROUNDS_ACTIVATIONS = ("int8pack", "cpp-q8")


KERNELS = _kernel_params()


def test_quantize_weight_round_trip():
    w = torch.randn(16, 40)
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and s.shape == (16,)
    assert q.abs().max() == 127
    assert (q.float() * s[:, None] - w).abs().max() <= s.max() / 2 + 1e-6


@pytest.mark.parametrize("n,k", [(4, 16), (5, 16), (7, 20), (64, 48), (3, 1)])
def test_pack_unpack_round_trip(n, k):
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=torch.Generator().manual_seed(n * k))
    p = pack_weight(q)
    assert p.shape == (-(-n // 4), 4 * (-(-k // 16) * 16)) and p.is_contiguous()
    assert torch.equal(unpack_weight(p, n, k), q)
    # the layout: block 0, inputs 0..15 of rows 0..3 lie one after the other (one cache line)
    assert torch.equal(p[0, :16], torch.nn.functional.pad(q[0, :16], (0, max(0, 16 - k))))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n,k,bias", [(5, 16, True), (7, 20, False), (65, 64, True), (300, 768, False)])
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_each_kernel_matches_the_dequantized_reference(kernel, n, k, bias, rows):
    """Odd shapes on purpose: rows not a multiple of 4, inputs not a multiple of 16, and more rows
    than SMALL_M (the dequant + matmul path)."""
    torch.manual_seed(n + k + rows)
    lin = torch.nn.Linear(k, n, bias=bias)
    layer = Int8Linear(lin, kernel)
    assert layer.kernel == kernel and kernel in repr(layer)
    q, s = quantize_weight(lin.weight)
    ref_w = (q.double() * s.double()[:, None]).T
    x = torch.randn(2, rows, k)
    ref = x.double() @ ref_w + (lin.bias.double() if bias else 0)
    with torch.inference_mode():
        y = layer(x)
    assert y.shape == (2, rows, n) and y.dtype == torch.float32
    err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    # int8pack multiplies bf16 activations (8-bit mantissa) on the one-row path, cpp-q8 int8 ones
    # (its exact reference is the next test); the others are fp32
    assert err < (2e-2 if kernel in ROUNDS_ACTIVATIONS and rows <= q8.SMALL_M else 1e-5), err
    if kernel != "fp32":
        assert torch.equal(layer.int8_weight(), q)
    assert torch.allclose(layer.dequantized(), q.float() * s[:, None])


@pytest.mark.skipif(q8.cpp_kernel_error() is not None, reason="the C++ kernels cannot be built here")
@pytest.mark.parametrize(
    "n,k,bias", [(5, 16, True), (7, 20, False), (65, 64, True), (300, 768, False), (9, 48, True)]
)
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_q8_kernel_is_the_integer_product_of_the_rounded_activations(n, k, bias, rows):
    """cpp-q8 = (activations rounded in runs of 16, as quantize_activations does) @ int8 weights,
    exactly up to fp32 summation; and the rounding itself is within half a step of each run."""
    torch.manual_seed(n * k + rows)
    lin = torch.nn.Linear(k, n, bias=bias)
    layer = Int8Linear(lin, "cpp-q8")
    x = torch.randn(rows, k) * torch.linspace(0.01, 20, k)  # runs of very different magnitudes
    x[0, :16] = 0.0  # an all-zero run (scale 0) must not divide by zero
    with torch.inference_mode():
        y = layer(x)
    xp = torch.nn.functional.pad(x, (0, layer.k16 - k))
    qx, d = q8.quantize_activations(xp)
    assert qx.dtype == torch.int8 and d.shape == (rows, layer.k16 // 16) and qx.abs().max() <= 127
    x_rounded = (qx.double().view(rows, -1, 16) * d.double()[..., None]).view(rows, -1)
    assert ((x_rounded - xp.double()).abs() <= d.double().repeat_interleave(16, dim=1) / 2 + 1e-6).all()
    qw, s = quantize_weight(lin.weight)
    ref = x_rounded[:, :k] @ (qw.double() * s.double()[:, None]).T + (lin.bias.double() if bias else 0)
    assert torch.isfinite(y).all()
    err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    assert err < 1e-5, err


@pytest.mark.skipif(q8.cpp_kernel_error() is not None, reason="the C++ kernels cannot be built here")
def test_cpp_kernel_is_built_with_openmp():
    """``at::parallel_for`` gets its threads from an ``omp parallel`` pragma compiled into the
    extension itself: without ``-fopenmp`` the pragma is ignored and the kernel silently runs on
    one thread (as it did until this test), whatever ``torch.set_num_threads`` says."""
    assert "-fopenmp" in q8.kernel_cflags()
    library = (q8.cpp_kernel_build_dir() / "scratchllm_int8.so").read_bytes()
    assert b"GOMP_parallel" in library  # the pragma became a call into OpenMP's runtime


def test_unknown_kernel_is_an_error():
    with pytest.raises(ValueError, match="unknown int8 kernel"):
        Int8Linear(torch.nn.Linear(4, 4), "fbgemm")


@pytest.fixture(scope="module")
def trained(shared_data):
    """A char model trained for a few dozen steps on the-verdict, and its validation batch."""
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=len(chars), context_length=32, n_layer=2, n_head=2, n_embd=64)
    model = GPTModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train, val = data[:18000], data[18000:]
    for _ in range(40):
        ix = torch.randint(len(train) - 33, (16,))
        x = torch.stack([train[i : i + 32] for i in ix])
        y = torch.stack([train[i + 1 : i + 33] for i in ix])
        loss = lm_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    starts = range(0, len(val) - 33, 32)
    xv = torch.stack([val[i : i + 32] for i in starts])
    yv = torch.stack([val[i + 1 : i + 33] for i in starts])
    return model.eval(), xv, yv


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_close_to_fp32_and_small_perplexity_cost(trained, kernel):
    model, xv, yv = trained
    q = quantize_int8(copy.deepcopy(model), kernel=kernel)
    assert all(not isinstance(m, torch.nn.Linear) for m in q.modules())
    assert isinstance(q.out_head, Int8Linear) and kernel_in_use(q) == kernel
    with torch.no_grad():
        ref, out = model(xv), q(xv)
    assert (out - ref).abs().max().item() < 0.3 * ref.std().item()
    assert torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1] > 0.999
    ppl_ref = math.exp(lm_loss(ref, yv).item())
    ppl_q = math.exp(lm_loss(out, yv).item())
    assert ppl_ref < 25  # it did learn something
    assert ppl_q < ppl_ref * 1.01  # < 1 % perplexity cost
    # one-token decoding steps (the kernels' own path) agree with the dequantized model's
    prompt = xv[0, :8]
    a = generate(model, prompt, 16, temperature=0)
    b = generate(q, prompt, 16, temperature=0)
    assert b.shape == a.shape
    assert (a == b).float().mean() > 0.8


def _decoded_perplexity(model, xv, yv, rows: int = 4) -> float:
    """Perplexity with every position computed by a one-token decoding step (KV cache): the path
    the kernels run, which a whole-batch forward (the dequant + matmul path) never takes."""
    losses = []
    with torch.inference_mode():
        for x, y in zip(xv[:rows], yv[:rows]):
            cache = model.make_kv_cache(1)
            logits = torch.cat([model(x[None, t : t + 1], kv_cache=cache) for t in range(len(x))], dim=1)
            losses.append(lm_loss(logits, y[None]).item())
    return math.exp(sum(losses) / len(losses))


@pytest.mark.parametrize("kernel", KERNELS)
def test_perplexity_cost_on_the_decoding_path(trained, kernel):
    """< 1 % perplexity cost where it matters for the kernels that round activations too."""
    model, xv, yv = trained
    ref = _decoded_perplexity(model, xv, yv)
    ppl = _decoded_perplexity(quantize_int8(copy.deepcopy(model), kernel=kernel), xv, yv)
    assert ppl < ref * 1.01, (ppl, ref)


def test_kernels_agree_token_for_token(trained):
    """The kernel changes speed, not results: fp32-math kernels give the same greedy tokens."""
    model, xv, _ = trained
    kernels = [k for k in q8.available_kernels() if k not in ROUNDS_ACTIVATIONS]
    outs = [
        generate(quantize_int8(copy.deepcopy(model), kernel=k), xv[1, :8], 24, temperature=0) for k in kernels
    ]
    for other in outs[1:]:
        assert torch.equal(other, outs[0])


def test_choose_kernel_measures_then_caches(tmp_path, monkeypatch):
    monkeypatch.delenv("SCRATCHLLM_INT8_KERNEL", raising=False)
    cache = tmp_path / "int8-kernels.json"
    shapes = [(96, 32), (32, 32), (50, 32)]
    first = choose_kernel(shapes, cache_path=cache)
    available = q8.available_kernels()
    assert not first.cached and first.kernel in available
    assert set(first.seconds) == set(available) and all(v > 0 for v in first.seconds.values())
    assert first.kernel == min(first.seconds, key=first.seconds.get)
    saved = json.loads(cache.read_text())
    assert [rec["kernel"] for rec in saved.values()] == [first.kernel]
    again = choose_kernel(shapes, cache_path=cache)
    assert again.cached and again.kernel == first.kernel
    # other shapes are another entry; a damaged cache file is ignored and rewritten
    choose_kernel([(8, 16)], cache_path=cache)
    assert len(json.loads(cache.read_text())) == 2
    cache.write_text("{not json")
    assert not choose_kernel(shapes, cache_path=cache).cached
    # quantize_int8's default is "auto": it uses the same choice
    monkeypatch.setattr(q8, "cache_dir", lambda: tmp_path)
    model = GPTModel(GPTConfig(vocab_size=50, context_length=16, n_layer=1, n_head=2, n_embd=32))
    assert kernel_in_use(quantize_int8(model)) in available


def test_kernel_override_by_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCHLLM_INT8_KERNEL", "fp32")
    assert choose_kernel([(8, 16)], cache_path=tmp_path / "c.json").kernel == "fp32"
    assert not (tmp_path / "c.json").exists()
    monkeypatch.setenv("SCRATCHLLM_INT8_KERNEL", "fbgemm")
    with pytest.raises(ScratchLLMError, match="SCRATCHLLM_INT8_KERNEL"):
        choose_kernel([(8, 16)])


def test_isa_flags_follow_the_cpu():
    assert q8.kernel_isa_flags({"avx2", "fma", "f16c"}) == ["-mavx2", "-mfma"]
    avx512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "amx_tile"}
    assert "-mavx512f" in q8.kernel_isa_flags(avx512)
    assert not any("amx" in f for f in q8.kernel_isa_flags(avx512))
    assert q8.kernel_isa_flags({"avx512f", "avx2", "fma"}) == ["-mavx2", "-mfma"]  # incomplete AVX-512
    assert q8.kernel_isa_flags(set()) == []
    assert q8.cpu_flags("processor: 0\nflags\t\t: fpu avx2 fma\n") == {"fpu", "avx2", "fma"}


def test_relayout_for_decoding_changes_storage_not_results():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=50, context_length=16, n_layer=2, n_head=2, n_embd=32)).eval()
    idx = torch.randint(0, 50, (1, 10))
    ref = generate(model, idx, 5, temperature=0)
    with torch.no_grad():
        logits = model(idx)
    relayout_for_decoding(model)
    qkv = model.blocks[0].attn.qkv.weight
    assert qkv.shape == (96, 32) and not qkv.is_contiguous() and qkv.t().is_contiguous()
    assert model.out_head.weight is model.tok_emb.weight
    with torch.no_grad():
        assert torch.allclose(model(idx), logits, atol=1e-5)
    assert torch.equal(generate(model, idx, 5, temperature=0), ref)


needs_cpp = pytest.mark.skipif(
    q8.cpp_kernel_error() is not None, reason="the C++ kernels cannot be built here"
)


@needs_cpp
@pytest.mark.parametrize("n,k,bias", [(37, 50, True), (5, 16, False), (300, 768, True), (64, 3, False)])
@pytest.mark.parametrize("rows", [1, 3, 16, 17])
def test_decoding_linear_computes_f_linear(n, k, bias, rows):
    """Odd shapes on purpose (inputs not a multiple of 16, fewer rows than the kernel's streams);
    17 rows is past SMALL_M, where F.linear itself runs."""
    torch.manual_seed(n * k + rows)
    lin = torch.nn.Linear(k, n, bias=bias)
    x = torch.randn(2, rows, k)
    ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
    weight = lin.weight
    q8.use_decoding_kernel(lin)
    assert isinstance(lin, q8.DecodingLinear) and lin.weight is weight
    with torch.inference_mode():
        y = lin(x)
    assert y.shape == ref.shape and torch.allclose(y, ref, atol=1e-5, rtol=1e-5)
    # with gradients wanted it is plain F.linear, and they flow
    lin(x).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.shape == (n, k)


@needs_cpp
def test_prepare_fp32_decoding_keeps_parameters_ties_and_greedy_tokens():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=50, context_length=16, n_layer=2, n_head=2, n_embd=32)).eval()
    idx = torch.randint(0, 50, (1, 10))
    ref = generate(model, idx, 8, temperature=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert q8.prepare_fp32_decoding(model, "cpp") == "cpp"
    assert all(type(m) is not torch.nn.Linear for m in model.modules())
    assert model.out_head.weight is model.tok_emb.weight  # a tied head stays tied
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(generate(model, idx, 8, temperature=0), ref)
    with pytest.raises(ValueError, match="unknown fp32 decoder"):
        q8.prepare_fp32_decoding(model, "mkl")


def test_choose_fp32_decoder_measures_caches_and_obeys_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SCRATCHLLM_FP32_DECODER", raising=False)
    cache = tmp_path / "kernels.json"
    shapes = [(96, 32), (32, 96)]
    first = q8.choose_fp32_decoder(shapes, cache_path=cache)
    expected = [d for d in q8.FP32_DECODERS if d != "cpp" or q8.cpp_kernel_error() is None]
    assert not first.cached and set(first.seconds) == set(expected)
    assert first.kernel == min(first.seconds, key=first.seconds.get)
    again = q8.choose_fp32_decoder(shapes, cache_path=cache)
    assert again.cached and again.kernel == first.kernel
    # the int8 choice for the same shapes is another entry of the same file
    q8.choose_kernel(shapes, cache_path=cache)
    assert len(json.loads(cache.read_text())) == 2
    monkeypatch.setenv("SCRATCHLLM_FP32_DECODER", "blas")
    assert q8.choose_fp32_decoder(shapes, cache_path=cache).kernel == "blas"
    monkeypatch.setenv("SCRATCHLLM_FP32_DECODER", "mkl")
    with pytest.raises(ScratchLLMError, match="SCRATCHLLM_FP32_DECODER"):
        q8.choose_fp32_decoder(shapes)


# ----------------------------------------------------------------------------- fused decode blocks
FUSED_VARIANTS = [
    {},  # GPT-2: LayerNorm with bias, GELU-tanh, learned positions
    {"norm": "rmsnorm", "activation": "swiglu", "pos_emb": "none", "bias": False},
    {"activation": "gelu_erf", "n_kv_head": 2},  # grouped-query attention
    {"activation": "relu2"},
    {"activation": "relu", "bias": False},
]


def _variant_id(variant: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in variant.items()) or "gpt2"


def _decoding_logits(model, cfg, steps: int = 24, rows: int = 1) -> torch.Tensor:
    """Logits of ``steps`` one-token decoding steps (KV cache) after a 5-token prompt, fed the same
    random tokens whatever the model predicts, so that two models are compared step by step."""
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (rows, 5 + steps), generator=gen)
    cache = model.make_kv_cache(rows)
    with torch.inference_mode():
        model(idx[:, :5], kv_cache=cache)
        return torch.cat([model(idx[:, t : t + 1], kv_cache=cache) for t in range(5, 5 + steps)], dim=1)


def _counting_fused_steps(model) -> list[int]:
    calls = [0]
    for block in model.blocks:
        if block.decode_step is not None:
            inner = block.decode_step

            def counted(x, cache, inner=inner):
                calls[0] += 1
                return inner(x, cache)

            block.decode_step = counted
    return calls


@pytest.mark.skipif(q8.cpp_kernel_error() is not None, reason="the C++ kernels cannot be built here")
@pytest.mark.parametrize("kernel", q8.CPP_KERNELS)
@pytest.mark.parametrize(
    "variant", FUSED_VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "gpt2"
)
def test_fused_decode_block_computes_the_module_path(kernel, variant):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, context_length=48, n_layer=2, n_head=4, n_embd=64, dropout=0.0, **variant)
    base = GPTModel(cfg).eval()
    fused = quantize_int8(copy.deepcopy(base), kernel=kernel)
    plain = quantize_int8(copy.deepcopy(base), kernel=kernel, fuse_blocks=False)
    assert all(b.decode_step is not None for b in fused.blocks)
    assert all(b.decode_step is None for b in plain.blocks)
    calls = _counting_fused_steps(fused)
    a, b = _decoding_logits(fused, cfg), _decoding_logits(plain, cfg)
    assert calls[0] == 24 * cfg.n_layer  # every decoding step of every block went through C++
    if kernel == "cpp":  # the same numbers up to the order of the sums
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    else:  # cpp-q8 rounds each product's inputs to int8: a last-bit difference can move one a step
        torch.testing.assert_close(a, b, rtol=0, atol=1e-2 * float(b.abs().max()))


@pytest.mark.skipif(q8.cpp_kernel_error() is not None, reason="the C++ kernels cannot be built here")
def test_what_the_fused_block_leaves_to_the_module_path():
    torch.manual_seed(0)
    small = {"vocab_size": 97, "context_length": 48, "n_layer": 2, "n_head": 4, "n_embd": 64, "dropout": 0.0}
    # blocks it cannot take, and why
    for variant, why in [
        ({"qk_norm": True}, "QK-norm"),
        ({"norm_position": "post"}, "pre-norm"),
        ({"n_experts": 4}, "dense FFN"),
        ({"n_embd": 40, "n_head": 4}, "padding"),
    ]:
        model = quantize_int8(GPTModel(GPTConfig(**{**small, **variant})).eval(), kernel="cpp")
        assert all(b.decode_step is None for b in model.blocks), variant
        assert why in q8.fused_decoding_obstacle(model.blocks[0])
    model = quantize_int8(GPTModel(GPTConfig(**small)).eval(), kernel="fp32")
    assert "C++ int8 kernel" in q8.fused_decoding_obstacle(model.blocks[0])
    # calls it leaves alone: RoPE, several rows, gradients on — exactly the module path's numbers
    for variant, rows in [({"pos_emb": "rope"}, 1), ({}, 3)]:
        cfg = GPTConfig(**{**small, **variant})
        base = GPTModel(cfg).eval()
        fused = quantize_int8(copy.deepcopy(base), kernel="cpp")
        calls = _counting_fused_steps(fused)
        plain = quantize_int8(copy.deepcopy(base), kernel="cpp", fuse_blocks=False)
        assert torch.equal(_decoding_logits(fused, cfg, 6, rows), _decoding_logits(plain, cfg, 6, rows))
        assert calls[0] == 0, variant
    cfg = GPTConfig(**small)
    fused = quantize_int8(GPTModel(cfg).eval(), kernel="cpp")
    calls = _counting_fused_steps(fused)
    cache = fused.make_kv_cache(1)
    fused(torch.tensor([[1, 2]]), kv_cache=cache)
    fused(torch.tensor([[3]]), kv_cache=cache)  # gradients on (no inference mode): module path
    assert calls[0] == 0
