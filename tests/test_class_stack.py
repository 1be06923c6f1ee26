"""Tests for ``class_stack`` (grouped class sub-generator stacks with background-response fill).

Reference = the naive per-class loop (K masked copies, K stacks). Every fast backend must match it
in fp64 to rounding, forward and backward, for reflect and zero padding, depth 2 and 3 (mixed kernel
sizes), several tiles with a partial last tile, odd H and W, batch > 1, absent classes, every class
present, a class only at the border, out-of-range labels, K = 1 / 35 / 151. The planner's presence
test (which (tile, class) pairs are computed) is checked against an independent dilation of the
one-hot map. Triton runs in the interpreter here: its cases are few and tiny.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from semgan_fast.ops.class_stack import (CLASS_STACK_BACKENDS, class_stack, class_stack_reference, class_stack_work,
                                         plan_class_stack)

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def _labels(kind: str, batch: int, height: int, width: int, num_classes: int, device="cpu") -> torch.Tensor:
    if kind == "regions":       # blocky regions, as in semantic maps
        low = torch.randint(0, num_classes, (batch, 1, -(-height // 4), -(-width // 4)))
        return F.interpolate(low.float(), size=(height, width), mode="nearest")[:, 0].long().to(device)
    if kind == "random":
        return torch.randint(0, num_classes, (batch, height, width), device=device)
    if kind == "all":           # every class present in every sample
        n = height * width
        base = torch.cat([torch.arange(num_classes), torch.randint(0, num_classes, (n - num_classes,))])
        return torch.stack([base[torch.randperm(n)] for _ in range(batch)]).view(batch, height, width).to(device)
    if kind == "sparse":        # most classes absent
        pool = torch.tensor([0, num_classes // 2, num_classes - 1])
        return pool[torch.randint(0, len(pool), (batch, height, width))].to(device)
    if kind == "border":        # class K-1 only in one corner pixel and on part of the last row
        lab = (torch.arange(width) >= width // 2).long().expand(batch, height, width).clone()
        lab[:, 0, 0] = num_classes - 1
        lab[:, -1, 3:5] = num_classes - 1
        return lab.to(device)
    if kind == "invalid":       # out-of-range values belong to no class (as in the reference)
        lab = torch.randint(0, num_classes, (batch, height, width))
        lab[:, 0, 0] = -1
        lab[:, -1, 1] = num_classes
        lab[:, 2, -1] = num_classes + 5
        return lab.to(device)
    raise AssertionError(kind)


def _params(num_classes, channels, widths, kernels, dtype=torch.float64, device="cpu"):
    weights, biases, in_ch = [], [], channels
    for out_ch, k in zip(widths, kernels):
        weights.append(torch.randn(num_classes, out_ch, in_ch, k, k, dtype=dtype, device=device) / (in_ch * k) ** 0.5)
        biases.append(0.5 * torch.randn(num_classes, out_ch, dtype=dtype, device=device))
        in_ch = out_ch
    return weights, biases


def _fwd_bwd(fn, x, labels, weights, biases, grad_out=None):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *weights, *biases)]
    layers = len(weights)
    out = fn(leaves[0], labels, leaves[1:1 + layers], leaves[1 + layers:])
    if grad_out is None:
        grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out.detach(), list(grads), grad_out


def _compare(backend, x, labels, weights, biases, tile, padding_mode="reflect", final="tanh", slope=0.2,
             atol=1e-10, rtol=1e-9):
    def ref(x_, lab, ws, bs):
        return class_stack_reference(x_, lab, ws, bs, padding_mode, slope, final)

    def fast(x_, lab, ws, bs):
        return class_stack(x_, lab, ws, bs, padding_mode, slope, final, tile=tile, backend=backend)

    expected, expected_grads, grad_out = _fwd_bwd(ref, x, labels, weights, biases)
    actual, actual_grads, _ = _fwd_bwd(fast, x, labels, weights, biases, grad_out)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"forward: {m}")
    names = ["dx"] + [f"dweight{l}" for l in range(len(weights))] + [f"dbias{l}" for l in range(len(weights))]
    for name, a, e in zip(names, actual_grads, expected_grads):
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


# (batch, channels, H, W, K, widths, kernels, labels, tile, padding, final activation)
CPU_CASES = {
    "reflect-2layers-partial-tiles": (2, 3, 13, 17, 5, [4, 3], [3, 3], "regions", 4, "reflect", "tanh"),
    "zeros-2layers": (2, 3, 13, 17, 5, [4, 3], [3, 3], "regions", 4, "zeros", "tanh"),
    "reflect-3layers-mixed-k": (1, 2, 15, 11, 4, [3, 3, 2], [5, 3, 3], "random", 4, "reflect", None),
    "zeros-3layers-mixed-k": (1, 2, 15, 11, 4, [3, 3, 2], [5, 3, 3], "regions", 4, "zeros", None),
    "one-class": (2, 3, 9, 10, 1, [3, 3], [3, 3], "regions", 4, "reflect", "tanh"),
    "all-present": (2, 2, 11, 13, 6, [3, 3], [3, 3], "all", 5, "reflect", "tanh"),
    "absent": (2, 2, 12, 12, 9, [3, 3], [3, 3], "sparse", 4, "zeros", "tanh"),
    "border-class": (1, 3, 12, 14, 4, [3, 3], [3, 3], "border", 4, "reflect", "tanh"),
    "invalid-labels": (2, 2, 10, 9, 4, [3, 2], [3, 3], "invalid", 4, "reflect", "tanh"),
    "tile-larger-than-image": (2, 3, 7, 9, 3, [4, 3], [3, 3], "regions", 32, "reflect", "tanh"),
    "image-smaller-than-halo": (1, 2, 5, 6, 3, [3, 3, 3], [3, 5, 3], "random", 2, "zeros", "tanh"),
    "k35-cityscapes-like": (1, 4, 24, 40, 35, [4, 3], [3, 3], "regions", 8, "reflect", "tanh"),
    "k151-ade-like": (1, 3, 20, 20, 151, [3, 3], [3, 3], "regions", 8, "reflect", "tanh"),
}


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_cpu_matches_reference_fp64(case):
    torch.manual_seed(hash(case) % 1000)
    batch, channels, height, width, k, widths, kernels, kind, tile, mode, final = CPU_CASES[case]
    x = torch.randn(batch, channels, height, width, dtype=torch.float64)
    weights, biases = _params(k, channels, widths, kernels)
    _compare("cpu", x, _labels(kind, batch, height, width, k), weights, biases, tile, mode, final)


TRITON_CASES = {   # small: the interpreter pays per program instance
    "reflect-2layers-partial-tiles": (2, 3, 9, 11, 3, [4, 3], [3, 3], "regions", 8, "reflect", "tanh"),
    "zeros-3layers": (1, 2, 9, 10, 3, [3, 3, 2], [3, 3, 3], "regions", 8, "zeros", None),
    "invalid-labels": (1, 2, 8, 9, 3, [3, 2], [3, 3], "invalid", 16, "reflect", "tanh"),
}


@pytest.mark.parametrize("case", list(TRITON_CASES))
def test_triton_matches_reference_fp64(case):
    pytest.importorskip("triton")
    torch.manual_seed(7)
    batch, channels, height, width, k, widths, kernels, kind, tile, mode, final = TRITON_CASES[case]
    x = torch.randn(batch, channels, height, width, dtype=torch.float64)
    weights, biases = _params(k, channels, widths, kernels)
    _compare("triton", x, _labels(kind, batch, height, width, k), weights, biases, tile, mode, final)


def test_leaky_slope_zero_and_other_slope():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 10, 11, dtype=torch.float64)
    weights, biases = _params(4, 3, [4, 3], [3, 3])
    lab = _labels("regions", 2, 10, 11, 4)
    for slope in (0.0, 0.1):
        _compare("cpu", x, lab, weights, biases, 4, "reflect", "tanh", slope)


def _dilated_presence(labels, num_classes, radius, tile):
    """Independent presence: class c within Chebyshev distance R of a tile <=> the max-pooled one-hot map
    (kernel 2R+1, clipped at the image border) is set on one of the tile's pixels."""
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).double()
    onehot = onehot * ((labels >= 0) & (labels < num_classes)).unsqueeze(1)
    near = F.max_pool2d(onehot, 2 * radius + 1, stride=1, padding=radius)
    height, width = labels.shape[1:]
    th, tw = -(-height // tile), -(-width // tile)
    near = F.pad(near, (0, tw * tile - width, 0, th * tile - height))
    return F.max_pool2d(near, tile, stride=tile).permute(0, 2, 3, 1) > 0      # [B, th, tw, K]


@pytest.mark.parametrize("kind,tile,kernels", [("regions", 4, [3, 3]), ("random", 5, [5, 3]), ("border", 3, [3, 3, 3]),
                                               ("invalid", 4, [3, 3])])
def test_planner_computes_exactly_the_pairs_within_the_receptive_field(kind, tile, kernels):
    torch.manual_seed(2)
    k = 6
    labels = _labels(kind, 2, 13, 15, k)
    plan = plan_class_stack(labels, k, kernels, "reflect", tile)
    expected = _dilated_presence(labels, k, sum(kk // 2 for kk in kernels), tile)
    got = torch.zeros_like(expected)
    got[plan.item_batch, plan.item_row, plan.item_col, plan.item_class] = True
    assert torch.equal(got, expected)
    assert torch.all(plan.item_class[1:] >= plan.item_class[:-1])              # sorted by class
    counts = torch.bincount(plan.item_class, minlength=k)
    assert torch.equal(plan.class_offsets[1:] - plan.class_offsets[:-1], counts)


def test_work_is_proportional_to_present_pairs_not_to_k():
    """Same label map, K = 35 vs 151 (the extra classes absent): identical item count; a segmentation-like
    map computes a small fraction of the K x tiles pairs."""
    torch.manual_seed(3)
    low = torch.randint(0, 35, (1, 1, 4, 8)).float()                          # 16 x 16 regions
    labels = F.interpolate(low, size=(64, 128), mode="nearest")[:, 0].long()
    small = class_stack_work(labels, 35, [3, 3], tile=16)
    large = class_stack_work(labels, 151, [3, 3], tile=16)
    assert small["items"] == large["items"]
    assert large["dense_items"] == small["dense_items"] * 151 // 35
    assert large["item_fraction"] < 0.05


def test_background_response_fills_absent_classes():
    """Reflect padding: a class absent from the whole image gets a spatially constant output, equal to the
    stack applied to zeros, and that constant's gradient flows into every layer's weights and biases."""
    torch.manual_seed(4)
    x = torch.randn(1, 3, 9, 10, dtype=torch.float64)
    weights, biases = _params(3, 3, [4, 2], [3, 3])
    lab = torch.zeros(1, 9, 10, dtype=torch.long)
    out = class_stack(x, lab, weights, biases, tile=4, backend="cpu")
    absent = out[0, 2]
    assert torch.allclose(absent, absent[:, :1, :1].expand_as(absent), atol=0, rtol=0)
    zeros_ref = class_stack_reference(torch.zeros_like(x), lab, weights, biases)[0, 2]
    torch.testing.assert_close(absent, zeros_ref, atol=1e-14, rtol=0)


def _assert_2x(fast, low_ref, ref64, atol, what):
    """FlashAttention rule: fast-path error vs fp64 <= 2x the reference's own low-precision error + atol."""
    assert torch.isfinite(fast).all(), f"{what}: non-finite values"
    err_fast = (fast.double() - ref64).abs().max().item()
    err_ref = (low_ref.double() - ref64).abs().max().item()
    assert err_fast <= 2 * err_ref + atol, f"{what}: error {err_fast:.3e} > 2 x reference error {err_ref:.3e} + {atol:.1e}"


@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float32), ("cpu", torch.float16), ("cpu", torch.bfloat16),
                                           ("triton", torch.float32), ("triton", torch.float16)])
def test_low_precision_2x_rule(backend, dtype):
    if backend == "triton":
        pytest.importorskip("triton")
    torch.manual_seed(5)
    batch = 1 if backend == "triton" else 2
    x64 = torch.randn(batch, 4, 10, 12, dtype=torch.float64)
    w64, b64 = _params(4, 4, [4, 3], [3, 3])
    lab = _labels("regions", batch, 10, 12, 4)

    def ref(*a):
        return class_stack_reference(a[0], a[1], a[2], a[3])

    def fast(*a):
        return class_stack(a[0], a[1], a[2], a[3], tile=8, backend=backend)

    ref64, grads64, go64 = _fwd_bwd(ref, x64, lab, w64, b64)
    low = [x64.to(dtype), [w.to(dtype) for w in w64], [b.to(dtype) for b in b64]]
    ref_low, grads_low, _ = _fwd_bwd(ref, low[0], lab, low[1], low[2], go64.to(dtype))
    out, grads, _ = _fwd_bwd(fast, low[0], lab, low[1], low[2], go64.to(dtype))
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    atol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    _assert_2x(out, ref_low, ref64, atol, f"{backend} {dtype} forward")
    for index, (g, gl, g64) in enumerate(zip(grads, grads_low, grads64)):
        scale = max(g64.abs().max().item(), 1.0)
        _assert_2x(g, gl, g64, atol * scale, f"{backend} {dtype} grad {index}")


def test_noncontiguous_and_channels_last_inputs():
    torch.manual_seed(6)
    x = torch.randn(2, 3, 11, 12, dtype=torch.float64)
    weights, biases = _params(4, 3, [4, 3], [3, 3])
    lab = _labels("regions", 2, 11, 12, 4)
    expected = class_stack_reference(x, lab, weights, biases)
    for variant in (x.to(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        out = class_stack(variant, lab.transpose(1, 2).contiguous().transpose(1, 2), weights, biases, tile=4,
                          backend="cpu")
        torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    # int32 / uint8 labels
    for dtype in (torch.int32, torch.uint8):
        torch.testing.assert_close(class_stack(x, lab.to(dtype), weights, biases, tile=4, backend="cpu"), expected,
                                   atol=1e-12, rtol=1e-10)


def test_gradcheck_fp64():
    torch.manual_seed(8)
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    weights, biases = _params(3, 2, [2, 2], [3, 3])
    leaves = [t.requires_grad_() for t in (*weights, *biases)]
    lab = _labels("random", 1, 6, 7, 3)

    def fn(x_, w0, w1, b0, b1):
        return class_stack(x_, lab, [w0, w1], [b0, b1], "zeros", tile=3, backend="cpu")

    assert torch.autograd.gradcheck(fn, (x, *leaves), fast_mode=True)


def test_opcheck_and_compile():
    torch.manual_seed(9)
    x = torch.randn(2, 3, 8, 9)
    weights, biases = _params(3, 3, [3, 2], [3, 3], dtype=torch.float32)
    lab = _labels("regions", 2, 8, 9, 3)
    for t in (x, *weights, *biases):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.semgan.class_stack.default,
                          (x, lab, weights, biases, "reflect", 0.2, "tanh", 4, "cpu"))

    def step(x_, lab_):
        return class_stack(x_, lab_, weights, biases, tile=4, backend="cpu").sum(dim=1)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, lab), step(x, lab))


def test_backward_op_outputs_are_contiguous_like_its_fake():
    """Regression: dx was a strided view into the sentinel-padded gradient rows while the fake kernel says
    contiguous; Inductor asserts the fake strides (``torch.compile`` of a training step failed) and opcheck's
    fake-tensor test caught the mismatch."""
    torch.manual_seed(9)
    x = torch.randn(2, 2, 6, 7)
    weights, biases = _params(3, 2, [2, 3], [3, 3], dtype=torch.float32)
    lab = _labels("regions", 2, 6, 7, 3)
    args = (torch.randn(2, 3, 3, 6, 7), x, lab, weights, biases, "reflect", 0.2, "tanh", 4, "cpu")
    assert all(t.is_contiguous() for t in torch.ops.semgan.class_stack_backward(*args))
    torch.library.opcheck(torch.ops.semgan.class_stack_backward.default, args)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_empty_batch(backend):
    """B = 0 (regression: the planner's and the backward's -1 reshapes of empty tensors raised): an empty
    [0, K, O, H, W] output and zero parameter gradients, as the reference."""
    if backend == "triton":
        pytest.importorskip("triton")
    torch.manual_seed(14)
    x = torch.randn(0, 2, 5, 6, dtype=torch.float64)
    weights, biases = _params(3, 2, [2, 3], [3, 3])
    lab = torch.zeros(0, 5, 6, dtype=torch.long)
    for mode in ("reflect", "zeros"):
        ref = _fwd_bwd(lambda *a: class_stack_reference(*a, mode), x, lab, weights, biases)
        out = _fwd_bwd(lambda *a: class_stack(*a, mode, tile=4, backend=backend), x, lab, weights, biases, ref[2])
        assert out[0].shape == ref[0].shape == (0, 3, 3, 5, 6)
        assert all(g.shape == r.shape and not g.any() for g, r in zip(out[1], ref[1]))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_one_host_sync_per_call(monkeypatch, backend):
    """The planner reads the per-class item counts once (``tolist``) per op call; nothing else reads device
    values on the host (on CUDA nonzero, bincount, item and uploads of host lists each synchronise). Was 4
    reads per forward (items and background plans: nonzero + bincount + tolist each) and, with Triton, an
    upload of the present classes per layer in the backward."""
    if backend == "triton":
        pytest.importorskip("triton")
    calls = {"tolist": 0, "other": 0}

    def counting(name, orig):
        def wrapper(*args, **kwargs):
            calls["tolist" if name == "tolist" else "other"] += 1
            return orig(*args, **kwargs)
        return wrapper

    for name in ("tolist", "item", "nonzero", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    for name in ("nonzero", "bincount", "unique", "tensor", "as_tensor"):
        monkeypatch.setattr(torch, name, counting(name, getattr(torch, name)))
    torch.manual_seed(15)
    x = torch.randn(1, 2, 6, 7, requires_grad=True)
    weights, biases = _params(3, 2, [3, 2], [3, 3], dtype=torch.float32)
    out = class_stack(x, _labels("regions", 1, 6, 7, 3), weights, biases, tile=8, backend=backend)
    assert calls == {"tolist": 1, "other": 0}
    out.backward(torch.ones_like(out))
    assert calls == {"tolist": 2, "other": 0}


def test_deterministic():
    torch.manual_seed(10)
    x = torch.randn(2, 3, 12, 13)
    weights, biases = _params(5, 3, [4, 3], [3, 3], dtype=torch.float32)
    lab = _labels("regions", 2, 12, 13, 5)
    first = _fwd_bwd(lambda *a: class_stack(*a, tile=4, backend="cpu"), x, lab, weights, biases)
    second = _fwd_bwd(lambda *a: class_stack(*a, tile=4, backend="cpu"), x, lab, weights, biases, first[2])
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def test_auto_backend_and_env_override(monkeypatch):
    torch.manual_seed(11)
    x = torch.randn(1, 2, 7, 8)
    weights, biases = _params(3, 2, [2, 2], [3, 3], dtype=torch.float32)
    lab = _labels("regions", 1, 7, 8, 3)
    assert CLASS_STACK_BACKENDS.resolve("auto", x.device) is CLASS_STACK_BACKENDS.backends["cpu"].fn
    monkeypatch.setenv("SEMGAN_BACKEND", "reference")
    assert CLASS_STACK_BACKENDS.resolve("auto", x.device) is CLASS_STACK_BACKENDS.backends["reference"].fn
    torch.testing.assert_close(class_stack(x, lab, weights, biases), class_stack_reference(x, lab, weights, biases))


def _bad_inputs():
    x = torch.randn(1, 3, 8, 8)
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    w, b = _params(2, 3, [4, 3], [3, 3], dtype=torch.float32)
    return {
        "labels shape": ((x, lab[:, :7], w, b), {}, "labels"),
        "labels dtype": ((x, lab.float(), w, b), {}, "labels"),
        "x dims": ((x[0], lab, w, b), {}, "x"),
        "channel chain": ((x, lab, [w[0], w[0]], b), {}, "weights[1]"),
        "classes differ": ((x, lab, [w[0], w[1][:1]], b), {}, "weights[1]"),
        "even kernel": ((x, lab, [w[0][..., :2, :2], w[1]], b), {}, "weights[0]"),
        "bias shape": ((x, lab, w, [b[0][:, :2], b[1]]), {}, "biases[0]"),
        "bias count": ((x, lab, w, b[:1]), {}, "biases"),
        "dtype mismatch": ((x, lab, [w[0].double(), w[1]], b), {}, "weights[0]"),
        "empty": ((x, lab, [], []), {}, "weights"),
        "padding": ((x, lab, w, b), {"padding_mode": "circular"}, "padding_mode"),
        "slope": ((x, lab, w, b), {"negative_slope": -0.1}, "negative_slope"),
        "activation": ((x, lab, w, b), {"final_activation": "sigmoid"}, "final_activation"),
        "tile": ((x, lab, w, b), {"tile": 0}, "tile"),
        "empty image": ((x[:, :, :0], lab[:, :0], w, b), {"padding_mode": "zeros"}, "x"),
        "label range": ((x, lab + 5, w, b), {"check_values": True}, "labels"),
        "nan": ((x.masked_fill(x > 1, float("nan")), lab, w, b), {"check_values": True}, "x"),
        "backend": ((x, lab, w, b), {"backend": "cuda"}, "backend"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_invalid_inputs_raise_naming_the_argument(case):
    args, kwargs, name = _bad_inputs()[case]
    with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
        class_stack(*args, **kwargs)


# ------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA)
# ------------------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("padding_mode,kind,k", [("reflect", "regions", 35), ("zeros", "all", 6), ("reflect", "sparse", 151)])
def test_gpu_triton_fp32(padding_mode, kind, k):
    torch.manual_seed(12)
    height, width = 40, 56
    x = torch.randn(2, 16, height, width, dtype=torch.float64, device="cuda")
    weights, biases = _params(k, 16, [8, 3], [3, 3], device="cuda")
    lab = _labels(kind, 2, height, width, k, device="cuda")
    _compare("triton", x, lab, weights, biases, 16, padding_mode, "tanh", atol=1e-9, rtol=1e-8)   # fp64 kernels
    x32, w32, b32 = x.float(), [w.float() for w in weights], [b.float() for b in biases]
    _compare("triton", x32, lab, w32, b32, 16, padding_mode, "tanh", atol=2e-4, rtol=1e-3)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_triton_half_2x_rule(dtype):
    torch.manual_seed(13)
    x64 = torch.randn(2, 16, 48, 64, dtype=torch.float64, device="cuda")
    w64, b64 = _params(35, 16, [8, 3], [3, 3], device="cuda")
    lab = _labels("regions", 2, 48, 64, 35, device="cuda")
    ref = lambda *a: class_stack_reference(a[0], a[1], a[2], a[3])  # noqa: E731
    ref64, grads64, go64 = _fwd_bwd(ref, x64, lab, w64, b64)
    low = [x64.to(dtype), [w.to(dtype) for w in w64], [b.to(dtype) for b in b64]]
    ref_low, grads_low, _ = _fwd_bwd(ref, low[0], lab, low[1], low[2], go64.to(dtype))
    out, grads, _ = _fwd_bwd(lambda *a: class_stack(*a, backend="triton"), low[0], lab, low[1], low[2], go64.to(dtype))
    atol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    _assert_2x(out, ref_low, ref64, atol, f"{dtype} forward")
    for index, (g, gl, g64) in enumerate(zip(grads, grads_low, grads64)):
        _assert_2x(g, gl, g64, atol * max(g64.abs().max().item(), 1.0), f"{dtype} grad {index}")


@needs_cuda
def test_gpu_one_host_sync_per_call():
    """CUDA sync debug mode: one synchronisation per op call (the planner's item counts), forward and backward."""
    import warnings
    torch.manual_seed(16)
    x = torch.randn(2, 16, 40, 56, device="cuda", requires_grad=True)
    weights, biases = _params(35, 16, [8, 3], [3, 3], dtype=torch.float32, device="cuda")
    lab = _labels("regions", 2, 40, 56, 35, device="cuda")
    class_stack(x, lab, weights, biases, backend="triton").sum().backward()       # compile kernels first
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as fwd:
            warnings.simplefilter("always")
            out = class_stack(x, lab, weights, biases, backend="triton")
        grad = torch.ones_like(out)
        with warnings.catch_warnings(record=True) as bwd:
            warnings.simplefilter("always")
            out.backward(grad)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    syncs = [str(w.message) for w in fwd + bwd if "synchroniz" in str(w.message)]
    assert len(syncs) <= 2, syncs


_AOT_SCRIPT = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from semgan_fast.kernels import class_stack as ks
common = dict(KS=3, BLOCK_P=64, BLOCK_C=32, BLOCK_O=16, ACC=tl.float32, DOT=tl.bfloat16)
kernels = {
    "fwd": (ks._item_conv_fwd_kernel, {"inp_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "cls_ptr": "*i64",
            "out_ptr": "*bf16", "I": "i32", "O": "i32", "Ho": "i32", "Wo": "i32", "s_ip": "i64", "s_ic": "i64",
            "s_ih": "i64", "s_iw": "i64"}),
    "dinp": (ks._item_conv_dinp_kernel, {"g_ptr": "*fp32", "w_ptr": "*bf16", "cls_ptr": "*i64", "dinp_ptr": "*bf16",
             "I": "i32", "O": "i32", "Hi": "i32", "Wi": "i32", "Ho": "i32", "Wo": "i32"}),
    "dw": (ks._item_conv_dw_kernel, {"g_ptr": "*fp32", "inp_ptr": "*bf16", "off_ptr": "*i64", "present_ptr": "*i64",
           "dw_ptr": "*fp32", "db_ptr": "*fp32", "K": "i32", "I": "i32", "O": "i32", "Ho": "i32", "Wo": "i32",
           "s_ip": "i64", "s_ic": "i64", "s_ih": "i64", "s_iw": "i64", "SPLIT": "i32", "n_ob": "i32", "n_cb": "i32"}),
}
for name, (fn, sig) in kernels.items():
    src = triton.compiler.ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in common}}, constexprs=common)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert ".target sm_90" in ptx, (name, ptx[:300])
print("ok")
"""


def test_triton_kernels_compile_for_hopper():
    """AOT-compile the three item-conv kernels to PTX for sm_90 without a GPU (no interpreter): catches
    GPU-only compile errors that the interpreter accepts."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
