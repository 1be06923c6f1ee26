"""GPU tests of the CUDA extension ``semgan_fast._C`` through ``semgan_fast.ops._cuda``.

Compared with ``class_conv_reference`` and a literal one_hot + cat + pad + conv2d reference, forward
and backward (autograd of the reference), in fp64 (tight) and in fp32 / fp16 / bf16 with the
FlashAttention rule: the extension's error vs the fp64 reference is at most twice the error of the
reference run in the same low precision, plus a small atol. Also: fp64 gradcheck, determinism of
the gradients (bitwise), argument errors. Skipped without a CUDA device or without the built
extension (CPU coverage of the same kernel source: tests/test_csrc_build.py, emulated).
"""
from __future__ import annotations

import pytest
import torch

from semgan_fast.ops import _cuda
from semgan_fast.ops.class_conv import class_conv_reference
from semgan_fast.ops.onehot_conv import onehot_conv_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(torch.cuda.is_available() and not _cuda.cuda_ext_available(),
                       reason=f"semgan_fast._C is not built ({_cuda._IMPORT_ERROR}); "
                              "build with pip install --no-build-isolation -e ."),
]

DEV = "cuda"


@pytest.fixture(autouse=True)
def _no_tf32():
    """The fp32 references must be real fp32 (cuDNN/cuBLAS default to TF32 on Ampere+), or the
    2x-of-reference bound for fp32 would be TF32's error."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm
LOW = [torch.float32, torch.float16, torch.bfloat16]
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _labels(B, H, W, K, gen, block=(5, 7), oor=()):
    coarse = torch.randint(0, K, (B, (H + block[0] - 1) // block[0], (W + block[1] - 1) // block[1]), generator=gen)
    lab = coarse.repeat_interleave(block[0], 1).repeat_interleave(block[1], 2)[:, :H, :W].contiguous()
    flat = lab.view(-1)
    idx = torch.randint(0, flat.numel(), (max(1, flat.numel() // 30),), generator=gen)
    flat[idx] = torch.randint(0, K, idx.shape, generator=gen)
    for v in oor:
        flat[torch.randint(0, flat.numel(), (5,), generator=gen)] = v
    return lab.to(torch.int32).to(DEV)


def _maxerr(a, b):
    return (a.double() - b.double()).abs().max().item()


def _check_rule(name, ours, ref_lp, ref64, dtype):
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    ours_err, ref_err = _maxerr(ours, ref64), _maxerr(ref_lp, ref64)
    scale = ref64.abs().max().item()
    assert ours_err <= 2 * ref_err + ATOL[dtype] * max(1.0, scale), \
        f"{name} {dtype}: error {ours_err:.3e} vs reference-in-{dtype} error {ref_err:.3e}"


def onehot_reference(labels, extra, weight, bias, stride, padding, padding_mode):
    """``onehot_conv_reference`` in these tests' argument order."""
    return onehot_conv_reference(labels, extra, weight, bias, padding, padding_mode, stride)


def _ref_grads(fn, tensors, grad):
    leaves = [None if t is None else (t.detach().clone().requires_grad_() if t.is_floating_point() else t)
              for t in tensors]
    out = fn(*leaves)
    out.backward(grad)
    return out.detach(), [None if (t is None or not t.is_floating_point()) else t.grad for t in leaves]


# ---- class_conv ---------------------------------------------------------------------------------

CC_CASES = [
    # B, C, H, W, K, O, ks, mode, act, bias, oor
    pytest.param(2, 64, 40, 70, 35, 3, 7, "reflect", "tanh", True, (), id="lggan-local-k7"),
    pytest.param(1, 17, 33, 31, 5, 5, 3, "zeros", None, False, (5, -3), id="k3-zeros-O5-odd-oor"),
    pytest.param(3, 8, 16, 32, 4, 2, 5, "reflect", "tanh", True, (), id="k5-exact-tiles"),
    pytest.param(1, 6, 4, 5, 3, 4, 7, "reflect", None, True, (), id="k7-tiny-double-reflection"),
    pytest.param(2, 12, 19, 23, 1, 3, 7, "reflect", "tanh", True, (), id="single-class"),
    pytest.param(1, 9, 21, 18, 52, 3, 1, "zeros", "tanh", True, (), id="k1-many-absent-classes"),
]


@pytest.mark.parametrize("B,C,H,W,K,O,ks,mode,act,has_bias,oor", CC_CASES)
def test_class_conv_fp64(B, C, H, W, K, O, ks, mode, act, has_bias, oor):
    gen = torch.Generator().manual_seed(ks * 100 + C)
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(DEV)
    labels = _labels(B, H, W, K, gen, oor=oor)
    w = (torch.randn(K, O, C, ks, ks, generator=gen, dtype=torch.float64) * 0.1).to(DEV)
    b = torch.randn(K, O, generator=gen, dtype=torch.float64).to(DEV) if has_bias else None
    g = torch.randn(B, K, O, H, W, generator=gen, dtype=torch.float64).to(DEV)
    ref, (dx_ref, _, dw_ref, db_ref) = _ref_grads(
        lambda xx, ll, ww, bb: class_conv_reference(xx, ll, ww, bb, mode, act), [x, labels, w, b], g)
    out = _cuda.class_conv_forward_cuda(x, labels, w, b, mode, act)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    dx, dw, db = _cuda.class_conv_backward_cuda(g, x, labels, w, b, out, mode, act)
    torch.testing.assert_close(dx, dx_ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(dw, dw_ref, atol=1e-9, rtol=1e-9)
    if has_bias:
        torch.testing.assert_close(db, db_ref, atol=1e-9, rtol=1e-9)
    else:
        assert db is None


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("case", ["lggan", "odd"])
def test_class_conv_low_precision(dtype, case):
    B, C, H, W, K, O, ks, mode = (2, 64, 48, 80, 35, 3, 7, "reflect") if case == "lggan" else \
        (1, 20, 29, 37, 6, 5, 3, "zeros")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, C, H, W, generator=gen).to(DEV, dtype)
    labels = _labels(B, H, W, K, gen)
    w = (torch.randn(K, O, C, ks, ks, generator=gen) * 0.05).to(DEV, dtype)
    b = (torch.randn(K, O, generator=gen) * 0.1).to(DEV, dtype)
    g = torch.randn(B, K, O, H, W, generator=gen).to(DEV, dtype)
    ref64, (dx64, _, dw64, db64) = _ref_grads(
        lambda xx, ll, ww, bb: class_conv_reference(xx, ll, ww, bb, mode, "tanh"),
        [x.double(), labels, w.double(), b.double()], g.double())
    ref_lp, (dx_lp, _, dw_lp, db_lp) = _ref_grads(
        lambda xx, ll, ww, bb: class_conv_reference(xx, ll, ww, bb, mode, "tanh"), [x, labels, w, b], g)
    out = _cuda.class_conv_forward_cuda(x, labels, w, b, mode, "tanh")
    assert out.dtype == dtype
    _check_rule("forward", out, ref_lp, ref64, dtype)
    dx, dw, db = _cuda.class_conv_backward_cuda(g, x, labels, w, b, out, mode, "tanh")
    _check_rule("dx", dx, dx_lp, dx64, dtype)
    _check_rule("dweight", dw, dw_lp, dw64, dtype)
    _check_rule("dbias", db, db_lp, db64, dtype)


def test_class_conv_every_class_present_and_absent_classes():
    """K = 8 with classes 0..5 present in every tile and 6, 7 absent everywhere."""
    B, C, H, W, K, O = 1, 8, 24, 40, 8, 3
    gen = torch.Generator().manual_seed(11)
    labels = (torch.arange(H * W).view(1, H, W) % 6).to(torch.int32).to(DEV)
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(DEV)
    w = torch.randn(K, O, C, 7, 7, generator=gen, dtype=torch.float64).to(DEV) * 0.1
    b = torch.randn(K, O, generator=gen, dtype=torch.float64).to(DEV)
    out = _cuda.class_conv_forward_cuda(x, labels, w, b, "reflect", "tanh")
    torch.testing.assert_close(out, class_conv_reference(x, labels, w, b, "reflect", "tanh"))
    torch.testing.assert_close(out[:, 6:], torch.tanh(b[6:]).view(1, 2, O, 1, 1).expand(B, 2, O, H, W))


def test_class_conv_gradcheck_fp64():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 6, 7, generator=gen, dtype=torch.float64).to(DEV).requires_grad_()
    labels = _labels(1, 6, 7, 3, gen, block=(2, 3))
    w = (torch.randn(3, 2, 3, 3, 3, generator=gen, dtype=torch.float64) * 0.5).to(DEV).requires_grad_()
    b = torch.randn(3, 2, generator=gen, dtype=torch.float64).to(DEV).requires_grad_()

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, xx, ww, bb):
            out = _cuda.class_conv_forward_cuda(xx, labels, ww, bb, "reflect", "tanh")
            ctx.save_for_backward(xx, ww, bb, out)
            return out

        @staticmethod
        def backward(ctx, grad):
            xx, ww, bb, out = ctx.saved_tensors
            return _cuda.class_conv_backward_cuda(grad.contiguous(), xx, labels, ww, bb, out, "reflect", "tanh")

    assert torch.autograd.gradcheck(Fn.apply, (x, w, b), fast_mode=True)


def test_class_conv_backward_deterministic():
    gen = torch.Generator().manual_seed(5)
    B, C, H, W, K, O = 2, 32, 64, 96, 10, 3
    x = torch.randn(B, C, H, W, generator=gen).to(DEV)
    labels = _labels(B, H, W, K, gen)
    w = torch.randn(K, O, C, 7, 7, generator=gen).to(DEV) * 0.05
    b = torch.randn(K, O, generator=gen).to(DEV)
    g = torch.randn(B, K, O, H, W, generator=gen).to(DEV)
    out = _cuda.class_conv_forward_cuda(x, labels, w, b, "reflect", "tanh")
    first = _cuda.class_conv_backward_cuda(g, x, labels, w, b, out, "reflect", "tanh")
    for _ in range(3):
        again = _cuda.class_conv_backward_cuda(g, x, labels, w, b, out, "reflect", "tanh")
        for a, c in zip(first, again):
            assert torch.equal(a, c)


def test_class_conv_argument_errors():
    x = torch.randn(1, 4, 8, 8, device=DEV)
    labels = torch.zeros(1, 8, 8, dtype=torch.int32, device=DEV)
    w = torch.randn(2, 3, 4, 7, 7, device=DEV)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        _cuda.class_conv_forward_cuda(x.cpu(), labels, w, None, "reflect", None)
    with pytest.raises(RuntimeError, match="labels must be int32"):
        _cuda.class_conv_forward_cuda(x, labels.long(), w, None, "reflect", None)
    with pytest.raises(RuntimeError, match="weight.shape\\[2\\]"):
        _cuda.class_conv_forward_cuda(x, labels, w[:, :, :3].contiguous(), None, "reflect", None)
    with pytest.raises(RuntimeError, match="kernel size 9"):
        _cuda.class_conv_forward_cuda(x, labels, torch.randn(2, 3, 4, 9, 9, device=DEV), None, "zeros", None)
    with pytest.raises(RuntimeError, match="padding_mode"):
        _cuda.class_conv_forward_cuda(x, labels, w, None, "circular", None)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        _cuda.class_conv_forward_cuda(x, labels, w, torch.randn(3, 2, device=DEV), "reflect", None)
    with pytest.raises(RuntimeError, match="out \\(the forward output\\) is required"):
        _cuda.class_conv_backward_cuda(torch.randn(1, 2, 3, 8, 8, device=DEV), x, labels, w, None, None, "reflect",
                                       "tanh")


# ---- onehot_conv --------------------------------------------------------------------------------

OH_CASES = [
    # B, H, W, K, E, O, ks, stride, padding, mode, bias, oor
    pytest.param(2, 64, 128, 35, 1, 64, 7, 1, 3, "reflect", True, (), id="lggan-encoder-conv1"),
    pytest.param(2, 33, 45, 36, 0, 128, 3, 1, 1, "zeros", True, (36,), id="spade-mlp-shared-oor"),
    pytest.param(1, 31, 50, 39, 0, 64, 4, 2, 2, "zeros", True, (), id="discriminator-k4-s2"),
    pytest.param(2, 17, 19, 6, 3, 20, 3, 2, 1, "reflect", False, (), id="k3-s2-reflect-E3"),
    pytest.param(1, 3, 4, 2, 1, 5, 5, 1, 2, "reflect", True, (), id="tiny-double-reflection"),
    pytest.param(1, 20, 24, 151, 0, 9, 3, 1, 1, "zeros", True, (), id="ade-151-classes"),
]


@pytest.mark.parametrize("B,H,W,K,E,O,ks,stride,padding,mode,has_bias,oor", OH_CASES)
def test_onehot_conv_fp64(B, H, W, K, E, O, ks, stride, padding, mode, has_bias, oor):
    gen = torch.Generator().manual_seed(K + O + ks)
    labels = _labels(B, H, W, K, gen, oor=oor)
    extra = torch.randn(B, E, H, W, generator=gen, dtype=torch.float64).to(DEV) if E else None
    w = torch.randn(O, K + E, ks, ks, generator=gen, dtype=torch.float64).to(DEV)
    b = torch.randn(O, generator=gen, dtype=torch.float64).to(DEV) if has_bias else None
    ref = onehot_reference(labels, extra, w, b, stride, padding, mode)
    g = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(DEV)
    ref, (_, dextra_ref, dw_ref, _) = _ref_grads(
        lambda ll, ee, ww, bb: onehot_reference(ll, ee, ww, bb, stride, padding, mode), [labels, extra, w, b], g)
    out = _cuda.onehot_conv_forward_cuda(labels, extra, w, b, stride, padding, mode)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    dw, db, dextra = _cuda.onehot_conv_backward_cuda(g, labels, extra, w, stride, padding, mode, True)
    torch.testing.assert_close(dw, dw_ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(db, g.sum(dim=(0, 2, 3)), atol=1e-9, rtol=1e-9)
    if E:
        torch.testing.assert_close(dextra, dextra_ref, atol=1e-9, rtol=1e-9)
        _, _, none = _cuda.onehot_conv_backward_cuda(g, labels, extra, w, stride, padding, mode, False)
        assert none is None
    else:
        assert dextra is None


@pytest.mark.parametrize("dtype", LOW)
def test_onehot_conv_low_precision(dtype):
    B, H, W, K, E, O, ks, stride, padding, mode = 2, 48, 96, 35, 1, 64, 7, 1, 3, "reflect"
    gen = torch.Generator().manual_seed(8)
    labels = _labels(B, H, W, K, gen)
    extra = torch.randn(B, E, H, W, generator=gen).to(DEV, dtype)
    w = (torch.randn(O, K + E, ks, ks, generator=gen) * 0.1).to(DEV, dtype)
    b = torch.randn(O, generator=gen).to(DEV, dtype)
    ref64 = onehot_reference(labels, extra.double(), w.double(), b.double(), stride, padding, mode)
    g = torch.randn(ref64.shape, generator=gen).to(DEV, dtype)
    ref64, (_, de64, dw64, db64) = _ref_grads(
        lambda ll, ee, ww, bb: onehot_reference(ll, ee, ww, bb, stride, padding, mode),
        [labels, extra.double(), w.double(), b.double()], g.double())
    ref_lp, (_, de_lp, dw_lp, db_lp) = _ref_grads(
        lambda ll, ee, ww, bb: onehot_reference(ll, ee, ww, bb, stride, padding, mode), [labels, extra, w, b], g)
    out = _cuda.onehot_conv_forward_cuda(labels, extra, w, b, stride, padding, mode)
    _check_rule("forward", out, ref_lp, ref64, dtype)
    dw, db, de = _cuda.onehot_conv_backward_cuda(g, labels, extra, w, stride, padding, mode, True)
    _check_rule("dweight", dw, dw_lp, dw64, dtype)
    _check_rule("dbias", db, db_lp, db64, dtype)
    _check_rule("dextra", de, de_lp, de64, dtype)


def test_onehot_conv_backward_deterministic():
    gen = torch.Generator().manual_seed(2)
    labels = _labels(2, 96, 160, 35, gen)
    extra = torch.randn(2, 1, 96, 160, generator=gen).to(DEV)
    w = torch.randn(64, 36, 3, 3, generator=gen).to(DEV)
    g = torch.randn(2, 64, 96, 160, generator=gen).to(DEV)
    first = _cuda.onehot_conv_backward_cuda(g, labels, extra, w, 1, 1, "zeros", True)
    for _ in range(3):
        again = _cuda.onehot_conv_backward_cuda(g, labels, extra, w, 1, 1, "zeros", True)
        for a, c in zip(first, again):
            assert torch.equal(a, c)


def test_onehot_conv_argument_errors():
    labels = torch.zeros(1, 8, 8, dtype=torch.int32, device=DEV)
    w = torch.randn(4, 5, 3, 3, device=DEV)
    with pytest.raises(RuntimeError, match="labels must be int32"):
        _cuda.onehot_conv_forward_cuda(labels.long(), None, w, None, 1, 1, "zeros")
    with pytest.raises(RuntimeError, match="extra must have shape"):
        _cuda.onehot_conv_forward_cuda(labels, torch.randn(1, 1, 7, 8, device=DEV), w, None, 1, 1, "zeros")
    with pytest.raises(RuntimeError, match="needs H and W > padding"):
        _cuda.onehot_conv_forward_cuda(labels, None, w, None, 1, 8, "reflect")
    with pytest.raises(RuntimeError, match="bias must have shape"):
        _cuda.onehot_conv_forward_cuda(labels, None, w, torch.randn(5, device=DEV), 1, 1, "zeros")
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        _cuda.onehot_conv_backward_cuda(torch.randn(1, 4, 7, 8, device=DEV), labels, None, w, 1, 1, "zeros", False)
