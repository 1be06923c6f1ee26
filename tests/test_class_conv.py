"""Tests for ``class_conv``: reference vs an independent loop definition, every fast backend vs the
reference (forward and backward), precision, layouts, torch.library integration, validation.

Triton runs in the interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU), so
its shapes are tiny and its cost scales with the (tile, class) pairs present: keep those few.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from semgan_fast.ops import _library
from semgan_fast.ops.class_conv import (CLASS_CONV_BACKENDS, class_conv, class_conv_backward_cpu,
                                        class_conv_forward_cpu, class_conv_reference)

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
CPU_BACKENDS = ["cpu", "triton"]


def _cuda_ext() -> bool:
    return HAS_CUDA and _library.cuda_ext_available(torch.device("cuda"))


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def _labels(kind: str, batch: int, height: int, width: int, num_classes: int, device="cpu") -> torch.Tensor:
    """Label maps with the structures the kernels must handle."""
    if kind == "random":
        return torch.randint(0, num_classes, (batch, height, width), device=device)
    if kind == "single":        # one class everywhere
        return torch.zeros(batch, height, width, dtype=torch.long, device=device)
    if kind == "all":           # every class present in every sample
        n = height * width
        assert n >= num_classes
        base = torch.cat([torch.arange(num_classes), torch.randint(0, num_classes, (n - num_classes,))])
        return torch.stack([base[torch.randperm(n)] for _ in range(batch)]).view(batch, height, width).to(device)
    if kind == "sparse":        # a few classes spread over [0, K): most classes absent
        pool = torch.tensor([0, num_classes // 3, num_classes // 2, num_classes - 1])
        return pool[torch.randint(0, len(pool), (batch, height, width))].to(device)
    if kind == "border":        # blocks of classes 0/1, class K-1 only on the left and bottom borders
        lab = (torch.arange(width) >= width // 2).long().expand(batch, height, width).clone()
        lab[:, :, 0] = num_classes - 1
        lab[:, -1, 2:4] = num_classes - 1
        return lab.to(device)
    if kind == "invalid":       # out-of-range values: the reference assigns them to no class
        lab = torch.randint(0, num_classes, (batch, height, width))
        lab[:, 0, 0] = -1
        lab[:, -1, 1] = num_classes
        lab[:, 2, -1] = num_classes + 7
        return lab.to(device)
    raise AssertionError(kind)


def _inputs(batch, channels, out_ch, num_classes, height, width, kernel, labels="random", dtype=torch.float64,
            bias=True, device="cpu"):
    x = torch.randn(batch, channels, height, width, dtype=dtype, device=device)
    lab = _labels(labels, batch, height, width, num_classes, device)
    w = (torch.randn(num_classes, out_ch, channels, kernel, kernel, dtype=dtype, device=device)
         / (channels * kernel) ** 0.5)
    b = torch.randn(num_classes, out_ch, dtype=dtype, device=device) if bias else None
    return x, lab, w, b


def _fwd_bwd(fn, x, lab, w, b, grad_out=None):
    """Forward output and gradients (x, weight, bias) for a fixed upstream gradient."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w)]
    bias = None if b is None else b.detach().clone().requires_grad_(True)
    out = fn(leaves[0], lab, leaves[1], bias)
    if grad_out is None:
        grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [*leaves, *([bias] if bias is not None else [])], grad_out)
    return out.detach(), list(grads), grad_out


def _assert_close(actual, expected, atol, rtol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _assert_2x(fast, low_ref, ref64, atol, what):
    """FlashAttention rule: fast-path error vs fp64 <= 2x the reference's own low-precision error + atol."""
    assert torch.isfinite(fast).all(), f"{what}: non-finite values"
    err_fast = (fast.double() - ref64).abs().max().item()
    err_ref = (low_ref.double() - ref64).abs().max().item()
    assert err_fast <= 2 * err_ref + atol, \
        f"{what}: error {err_fast:.3e} > 2 x reference error {err_ref:.3e} + {atol:.1e}"


def _loop_class_conv(x, labels, weight, bias, padding_mode, activation):
    """Independent definition by explicit loops (gather form, explicit rho): fp64, tiny sizes only."""
    batch, _, height, width = x.shape
    num_classes, out_ch, _, kernel, _ = weight.shape
    pad = kernel // 2

    def rho(u, n):
        if padding_mode == "zeros":
            return u if 0 <= u < n else None
        return -u if u < 0 else (2 * (n - 1) - u if u >= n else u)

    out = torch.zeros(batch, num_classes, out_ch, height, width, dtype=torch.float64)
    for b, c, h, w in itertools.product(range(batch), range(num_classes), range(height), range(width)):
        z = bias[c].double().clone() if bias is not None else torch.zeros(out_ch, dtype=torch.float64)
        for i, j in itertools.product(range(kernel), range(kernel)):
            qh, qw = rho(h + i - pad, height), rho(w + j - pad, width)
            if qh is None or qw is None or int(labels[b, qh, qw]) != c:
                continue
            z += weight[c, :, :, i, j].double() @ x[b, :, qh, qw].double()
        out[b, c, :, h, w] = torch.tanh(z) if activation == "tanh" else z
    return out


# ------------------------------------------------------------------------------------------------
# reference
# ------------------------------------------------------------------------------------------------

def test_reference_hand_computed():
    """Zero padding, 3x3 box filters: class 0 sums its pixels in the window (+0.5), class 1 doubles (-1)."""
    x = (torch.arange(12, dtype=torch.float64) + 1).view(1, 1, 3, 4)      # 1..12
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]])
    weight = torch.stack([torch.ones(1, 1, 3, 3), 2 * torch.ones(1, 1, 3, 3)]).double()
    bias = torch.tensor([[0.5], [-1.0]], dtype=torch.float64)
    out = class_conv_reference(x, labels, weight, bias, "zeros", None)
    # Pixel (0, 0): window rows 0-1, cols 0-1 = 1, 2, 5, 6, all class 0.
    assert out[0, 0, 0, 0, 0].item() == 1 + 2 + 5 + 6 + 0.5
    assert out[0, 1, 0, 0, 0].item() == -1.0
    # Pixel (1, 1): class-0 pixels 1, 2, 5, 6, 9 -> 23.5; class-1 pixels 3, 7, 10, 11 -> 2 * 31 - 1.
    assert out[0, 0, 0, 1, 1].item() == 23.5
    assert out[0, 1, 0, 1, 1].item() == 61.0
    # Pixel (2, 3): class 1 only: 7, 8, 11, 12 -> 2 * 38 - 1; class 0 absent -> bias.
    assert out[0, 1, 0, 2, 3].item() == 75.0
    assert out[0, 0, 0, 2, 3].item() == 0.5
    torch.testing.assert_close(out, _loop_class_conv(x, labels, weight, bias, "zeros", None))


@pytest.mark.parametrize("padding_mode,activation", [("reflect", "tanh"), ("zeros", None), ("reflect", None)])
def test_reference_matches_loop_definition(padding_mode, activation):
    x, lab, w, b = _inputs(2, 3, 2, 3, 5, 6, 5, labels="border")
    torch.testing.assert_close(class_conv_reference(x, lab, w, b, padding_mode, activation),
                               _loop_class_conv(x, lab, w, b, padding_mode, activation), atol=1e-12, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# fast backends vs reference (fp64: equal up to summation order)
# ------------------------------------------------------------------------------------------------

# id: (B, C, O, K, H, W, k, labels, padding_mode, activation, bias)
PARITY_CASES = {
    "K1_single_class_B2_odd": (2, 3, 2, 1, 5, 7, 3, "single", "reflect", "tanh", True),
    "K35_all_present": (1, 4, 3, 35, 6, 7, 3, "all", "zeros", None, True),
    "K151_sparse_absent": (1, 3, 3, 151, 5, 9, 3, "sparse", "reflect", "tanh", True),
    "k7_border_class_B2_odd": (2, 5, 3, 5, 9, 11, 7, "border", "reflect", "tanh", True),
    "k5_zeros_no_bias_B3": (3, 2, 1, 4, 7, 5, 5, "random", "zeros", "tanh", False),
    "out_of_range_labels": (1, 3, 2, 3, 6, 5, 3, "invalid", "reflect", None, True),
    "k5_reflect_minimal_image": (2, 2, 2, 3, 3, 4, 5, "random", "reflect", "tanh", True),  # pad = H - 1
}


@pytest.fixture(scope="module")
def parity_reference():
    """Reference results per PARITY_CASES id, computed once and shared by the backends."""
    cache = {}

    def get(case):
        if case not in cache:
            torch.manual_seed(1234)
            batch, channels, out_ch, num_classes, height, width, kernel, labels, mode, act, bias = PARITY_CASES[case]
            x, lab, w, b = _inputs(batch, channels, out_ch, num_classes, height, width, kernel, labels, bias=bias)
            ref_out, ref_grads, go = _fwd_bwd(lambda *a: class_conv_reference(*a, mode, act), x, lab, w, b)
            cache[case] = ((x, lab, w, b), ref_out, ref_grads, go)
        return cache[case]

    return get


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_backend_matches_reference_fp64(backend, case, parity_reference):
    mode, act = PARITY_CASES[case][8:10]
    (x, lab, w, b), ref_out, ref_grads, go = parity_reference(case)
    out, grads, _ = _fwd_bwd(lambda *a: class_conv(*a, padding_mode=mode, activation=act, backend=backend),
                             x, lab, w, b, go)
    _assert_close(out, ref_out, 1e-11, 1e-10, f"{backend} forward")
    assert len(grads) == len(ref_grads)
    for name, g, rg in zip(("dx", "dweight", "dbias"), grads, ref_grads):
        _assert_close(g, rg, 1e-10, 1e-9, f"{backend} {name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_absent_classes_give_activation_of_bias(backend):
    x, lab, w, b = _inputs(1, 3, 3, 12, 6, 8, 3, labels="sparse", dtype=torch.float32)
    out = class_conv(x, lab, w, b, "reflect", "tanh", backend=backend)
    absent = [c for c in range(12) if not (lab == c).any()]
    assert absent, "test needs absent classes"
    expected = torch.tanh(b[absent])[None, :, :, None, None].expand(1, len(absent), 3, 6, 8)
    # cpu applies torch.tanh to the bias itself (bitwise); Triton's exp-form tanh is within ~1 ulp of 1.
    tol = 0.0 if backend == "cpu" else 2e-7
    torch.testing.assert_close(out[:, absent], expected, atol=tol, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_deterministic(backend):
    x, lab, w, b = _inputs(2, 3, 2, 4, 6, 7, 3, dtype=torch.float32)
    runs = [_fwd_bwd(lambda *a: class_conv(*a, "reflect", "tanh", backend=backend), x, lab, w, b,
                     torch.ones(2, 4, 2, 6, 7)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    for g0, g1 in zip(runs[0][1], runs[1][1]):
        assert torch.equal(g0, g1)


# ------------------------------------------------------------------------------------------------
# precision: fp32 / fp16 (+ bf16 for the plain-PyTorch cpu backend; Triton bf16 on GPU only, since the
# interpreter's bf16 math is wrong)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float32), ("cpu", torch.float16), ("cpu", torch.bfloat16),
                                           ("triton", torch.float32), ("triton", torch.float16)])
def test_low_precision_2x_rule(backend, dtype):
    x64, lab, w64, b64 = _inputs(2, 8, 3, 6, 10, 12, 3, labels="random")
    mode, act = "reflect", "tanh"
    ref64, ref64_grads, go64 = _fwd_bwd(lambda *a: class_conv_reference(*a, mode, act), x64, lab, w64, b64)
    low = [t.to(dtype) for t in (x64, w64, b64)]
    go = go64.to(dtype)
    ref_low, ref_low_grads, _ = _fwd_bwd(lambda *a: class_conv_reference(*a, mode, act), low[0], lab, low[1], low[2], go)
    out, grads, _ = _fwd_bwd(lambda *a: class_conv(*a, mode, act, backend=backend), low[0], lab, low[1], low[2], go)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    atol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    _assert_2x(out, ref_low, ref64, atol, f"{backend} {dtype} forward")
    for name, g, gl, g64 in zip(("dx", "dweight", "dbias"), grads, ref_low_grads, ref64_grads):
        scale = max(g64.abs().max().item(), 1.0)
        _assert_2x(g, gl, g64, atol * scale, f"{backend} {dtype} {name}")


# ------------------------------------------------------------------------------------------------
# layouts, dtypes of labels, gradcheck
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_noncontiguous_and_channels_last(backend):
    x, lab, w, b = _inputs(2, 4, 2, 3, 6, 9, 3)
    ref_out, ref_grads, go = _fwd_bwd(lambda *a: class_conv_reference(*a, "reflect", "tanh"), x, lab, w, b)
    lab_strided = lab.transpose(1, 2).contiguous().transpose(1, 2)
    # Layouts are applied inside the function so that autograd flows through the strided views.
    variants = {
        "channels_last": (lambda xx: xx.to(memory_format=torch.channels_last), lab, lambda ww: ww, lambda bb: bb),
        "strided": (lambda xx: torch.stack([xx, xx], dim=2).flatten(1, 2)[:, ::2], lab_strided,
                    lambda ww: ww.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3),
                    lambda bb: bb.t().contiguous().t()),
        "uint8_labels": (lambda xx: xx, lab.to(torch.uint8), lambda ww: ww, lambda bb: bb),
        "int32_labels": (lambda xx: xx, lab.to(torch.int32), lambda ww: ww, lambda bb: bb),
    }
    for name, (fx, lv, fw, fb) in variants.items():
        if name == "strided":
            assert not fx(x).is_contiguous() and not lv.is_contiguous() and not fw(w).is_contiguous()
        if name == "channels_last":
            assert fx(x).is_contiguous(memory_format=torch.channels_last) and not fx(x).is_contiguous()

        def run(xx, ll, ww, bb, fx=fx, fw=fw, fb=fb):
            return class_conv(fx(xx), ll, fw(ww), fb(bb), "reflect", "tanh", backend=backend)

        out, grads, _ = _fwd_bwd(run, x, lv, w, b, go)
        _assert_close(out, ref_out, 1e-11, 1e-10, f"{backend} {name} forward")
        for gname, g, rg in zip(("dx", "dweight", "dbias"), grads, ref_grads):
            _assert_close(g, rg, 1e-10, 1e-9, f"{backend} {name} {gname}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("padding_mode,activation", [("reflect", "tanh"), ("zeros", None)])
def test_gradcheck_fp64(backend, padding_mode, activation):
    x, lab, w, b = _inputs(1, 2, 2, 3, 5, 6, 3, labels="border")
    args = [t.requires_grad_(True) for t in (x, w, b)]
    assert torch.autograd.gradcheck(
        lambda xx, ww, bb: class_conv(xx, lab, ww, bb, padding_mode, activation, backend=backend),
        args, fast_mode=True)


# ------------------------------------------------------------------------------------------------
# torch.library integration
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    x, lab, w, b = _inputs(1, 2, 2, 3, 5, 6, 3)
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    torch.library.opcheck(torch.ops.semgan.class_conv.default, (x, lab, w, b, "reflect", "tanh", backend))
    torch.library.opcheck(torch.ops.semgan.class_conv.default, (x, lab, w, None, "zeros", None, backend))
    out = torch.ops.semgan.class_conv(x, lab, w, b, "reflect", "tanh", backend).detach()
    torch.library.opcheck(torch.ops.semgan.class_conv_backward.default,
                          (torch.randn_like(out), x.detach(), lab, w.detach(), b.detach(), out, "reflect", "tanh",
                           backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_smoke(backend):
    x, lab, w, b = _inputs(2, 3, 2, 3, 5, 6, 3)

    def loss(xx, ww, bb):
        return class_conv(xx, lab, ww, bb, "reflect", "tanh", backend=backend).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    value = compiled(*leaves)
    grads = torch.autograd.grad(value, leaves)
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    ref_value = class_conv_reference(ref_leaves[0], lab, ref_leaves[1], ref_leaves[2], "reflect", "tanh").square().sum()
    ref_grads = torch.autograd.grad(ref_value, ref_leaves)
    torch.testing.assert_close(value, ref_value, atol=1e-10, rtol=1e-10)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, atol=1e-10, rtol=1e-9)


def test_backend_functions_follow_contract():
    """The cpu backend called directly with the contract's signature (as the CUDA backend is)."""
    x, lab, w, b = _inputs(2, 3, 2, 4, 5, 6, 3, dtype=torch.float32)
    out = class_conv_forward_cpu(x, lab.to(torch.int32), w, b, "reflect", "tanh")
    assert out.shape == (2, 4, 2, 5, 6) and out.dtype == torch.float32 and out.is_contiguous()
    dx, dw, db = class_conv_backward_cpu(torch.ones_like(out), x, lab.to(torch.int32), w, b, out, "reflect", "tanh")
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    _, _, db_none = class_conv_backward_cpu(torch.ones_like(out), x, lab.to(torch.int32), w, None, out, "reflect", None)
    assert db_none is None


# ------------------------------------------------------------------------------------------------
# backend selection and validation
# ------------------------------------------------------------------------------------------------

def test_auto_backend_selection(monkeypatch):
    monkeypatch.delenv("SEMGAN_BACKEND", raising=False)
    cpu = torch.device("cpu")
    assert CLASS_CONV_BACKENDS.auto_order == ["cuda", "cpu", "triton"]
    assert CLASS_CONV_BACKENDS.resolve("auto", cpu) is CLASS_CONV_BACKENDS.backends["cpu"].fn
    assert not CLASS_CONV_BACKENDS.backends["cuda"].available(cpu)
    assert not CLASS_CONV_BACKENDS.backends["cpu"].available(torch.device("cuda"))
    monkeypatch.setenv("SEMGAN_BACKEND", "reference")
    assert CLASS_CONV_BACKENDS.resolve("auto", cpu) is class_conv_reference
    with pytest.raises(ValueError, match="backend"):
        class_conv(*_inputs(1, 2, 2, 2, 4, 4, 3), backend="nope")
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="cuda"):
            class_conv(*_inputs(1, 2, 2, 2, 4, 4, 3), backend="cuda")


# id: (argument the message must name, overrides of the valid call built from (x, labels, weight, bias))
BAD_INPUTS = {
    "x_not_tensor": ("x", lambda x, lab, w, b: dict(x=x.numpy())),
    "x_3d": ("x", lambda x, lab, w, b: dict(x=x[0])),
    "x_int": ("x", lambda x, lab, w, b: dict(x=x.to(torch.int32))),
    "labels_float": ("labels", lambda x, lab, w, b: dict(labels=lab.float())),
    "labels_shape": ("labels", lambda x, lab, w, b: dict(labels=lab[:, :5])),
    "weight_channels": ("weight", lambda x, lab, w, b: dict(weight=w[:, :, :2])),
    "weight_even_kernel": ("weight", lambda x, lab, w, b: dict(weight=torch.randn(4, 2, 3, 2, 2))),
    "weight_not_square": ("weight", lambda x, lab, w, b: dict(weight=torch.randn(4, 2, 3, 3, 5))),
    "weight_dtype": ("weight", lambda x, lab, w, b: dict(weight=w.double())),
    "bias_shape": ("bias", lambda x, lab, w, b: dict(bias=b[:, :1])),
    "padding_mode_unknown": ("padding_mode", lambda x, lab, w, b: dict(padding_mode="circular")),
    "activation_unknown": ("activation", lambda x, lab, w, b: dict(activation="relu")),
    "reflect_too_small": ("padding_mode", lambda x, lab, w, b: dict(x=torch.randn(1, 3, 2, 6), labels=lab[:, :2],
                                                                    weight=torch.randn(4, 2, 3, 5, 5), bias=None)),
    "labels_out_of_range_checked": ("labels", lambda x, lab, w, b: dict(labels=lab + 4, check_values=True)),
    "x_nan_checked": ("x", lambda x, lab, w, b: dict(x=torch.full_like(x, float("nan")), check_values=True)),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_invalid_inputs_raise(case):
    name, overrides = BAD_INPUTS[case]
    x, lab, w, b = _inputs(1, 3, 2, 4, 6, 6, 3, dtype=torch.float32)
    kwargs = dict(x=x, labels=lab, weight=w, bias=b)
    kwargs.update(overrides(x, lab, w, b))
    with pytest.raises(ValueError, match=name):
        class_conv(**kwargs, backend="cpu")


# ------------------------------------------------------------------------------------------------
# GPU: Triton / CUDA vs reference at realistic sizes (skipped without a GPU)
# ------------------------------------------------------------------------------------------------

def _gpu_backends():
    return ["triton"] + (["cuda"] if _cuda_ext() else [])


@needs_cuda
@pytest.mark.parametrize("padding_mode,activation,labels", [("reflect", "tanh", "random"), ("zeros", None, "all"),
                                                             ("reflect", "tanh", "border")])
def test_gpu_backends_fp32(padding_mode, activation, labels):
    for backend in _gpu_backends():
        x, lab, w, b = _inputs(2, 64, 3, 35, 64, 96, 7, labels=labels, device="cuda")
        lab = lab if labels != "random" else torch.randint(0, 35, (2, 8, 12), device="cuda").repeat_interleave(
            8, 1).repeat_interleave(8, 2)
        ref64, ref_grads, go = _fwd_bwd(lambda *a: class_conv_reference(*a, padding_mode, activation), x, lab, w, b)
        low = [t.float() for t in (x, w, b)]
        ref32, ref32_grads, _ = _fwd_bwd(lambda *a: class_conv_reference(*a, padding_mode, activation),
                                         low[0], lab, low[1], low[2], go.float())
        out, grads, _ = _fwd_bwd(lambda *a: class_conv(*a, padding_mode, activation, backend=backend),
                                 low[0], lab, low[1], low[2], go.float())
        _assert_2x(out, ref32, ref64, 1e-5, f"{backend} fp32 forward")
        for name, g, gl, g64 in zip(("dx", "dweight", "dbias"), grads, ref32_grads, ref_grads):
            _assert_2x(g, gl, g64, 1e-5 * max(g64.abs().max().item(), 1.0), f"{backend} fp32 {name}")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_backends_half(dtype):
    for backend in _gpu_backends():
        x, lab, w, b = _inputs(2, 64, 3, 151, 48, 64, 7, labels="random", device="cuda")
        ref64, ref_grads, go = _fwd_bwd(lambda *a: class_conv_reference(*a, "reflect", "tanh"), x, lab, w, b)
        low = [t.to(dtype) for t in (x, w, b)]
        ref_low, ref_low_grads, _ = _fwd_bwd(lambda *a: class_conv_reference(*a, "reflect", "tanh"),
                                             low[0], lab, low[1], low[2], go.to(dtype))
        out, grads, _ = _fwd_bwd(lambda *a: class_conv(*a, "reflect", "tanh", backend=backend),
                                 low[0], lab, low[1], low[2], go.to(dtype))
        atol = 2e-3 if dtype == torch.float16 else 1.6e-2
        _assert_2x(out, ref_low, ref64, atol, f"{backend} {dtype} forward")
        for name, g, gl, g64 in zip(("dx", "dweight", "dbias"), grads, ref_low_grads, ref_grads):
            _assert_2x(g, gl, g64, atol * max(g64.abs().max().item(), 1.0), f"{backend} {dtype} {name}")


@needs_cuda
def test_gpu_gradcheck_and_determinism():
    for backend in _gpu_backends():
        x, lab, w, b = _inputs(1, 3, 2, 4, 9, 20, 3, labels="border", device="cuda")
        args = [t.requires_grad_(True) for t in (x, w, b)]
        assert torch.autograd.gradcheck(lambda xx, ww, bb: class_conv(xx, lab, ww, bb, "reflect", "tanh",
                                                                      backend=backend), args, fast_mode=True)
        runs = [_fwd_bwd(lambda *a: class_conv(*a, "reflect", "tanh", backend=backend), x, lab, w, b,
                         torch.ones(1, 4, 2, 9, 20, device="cuda", dtype=torch.float64)) for _ in range(2)]
        assert torch.equal(runs[0][0], runs[1][0]) and all(torch.equal(p, q) for p, q in zip(runs[0][1], runs[1][1]))


_AOT_SCRIPT = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from semgan_fast.kernels import class_conv as kc
sig = {"x_ptr": "*fp16", "lab_ptr": "*i32", "w_ptr": "*fp16", "b_ptr": "*fp16", "pres_ptr": "*i8",
       "out_ptr": "*fp16", "C": "i32", "H": "i32", "W": "i32", "K": "i32", "O": "i32", "n_tw": "i32",
       "n_tiles_img": "i32"}
consts = dict(KS=7, REFLECT=1, TANH=1, HAS_BIAS=1, TH=8, TW=16, TPC=1, BLOCK_C=64, BLOCK_O=16,
              ACC=tl.float32, DOT=tl.float16)
src = triton.compiler.ASTSource(fn=kc._cc_fwd_kernel, signature={**sig, **{k: "constexpr" for k in consts}},
                                constexprs=consts)
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
assert ".target sm_90" in ptx, ptx[:500]
print("ok")
"""


def test_triton_forward_kernel_compiles_for_hopper():
    """AOT-compile the forward kernel to PTX for sm_90 without a GPU (a subprocess without the
    interpreter): catches GPU-only compile errors the interpreter accepts. The backward kernels take
    ~10 s each to compile and are exercised by the GPU tests instead."""
    import os
    import subprocess
    import sys
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
