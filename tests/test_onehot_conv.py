"""onehot_conv: every fast backend against the literal one_hot + cat + conv2d reference.

Triton runs under the interpreter on CPU (tests/conftest.py), so shapes stay tiny.
"""
import pytest
import torch
import torch.nn.functional as F

from semgan_fast.ops.onehot_conv import ONEHOT_CONV_BACKENDS, onehot_conv, onehot_conv_reference

FAST = ["cpu", "triton"]
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_labels(batch, height, width, num_classes, mode, device="cpu"):
    """random: uniform labels; absent: only classes {0, K-1} and one in the middle (others absent);
    all: every class present (row-major arange, shuffled per sample); blocks: 2x3 constant patches."""
    if mode == "random":
        return torch.randint(0, num_classes, (batch, height, width), device=device)
    if mode == "absent":
        pool = torch.tensor(sorted({0, num_classes // 2, num_classes - 1}), device=device)
        return pool[torch.randint(0, len(pool), (batch, height, width), device=device)]
    if mode == "all":
        assert height * width >= num_classes
        base = torch.arange(height * width, device=device) % num_classes
        return torch.stack([base[torch.randperm(height * width, device=device)] for _ in range(batch)]).view(
            batch, height, width)
    if mode == "blocks":
        coarse = torch.randint(0, num_classes, (batch, (height + 1) // 2, (width + 2) // 3), device=device)
        return coarse.repeat_interleave(2, 1).repeat_interleave(3, 2)[:, :height, :width].contiguous()
    raise AssertionError(mode)


def make_inputs(batch, height, width, num_classes, n_extra, out_ch, kernel, dtype, mode="random", bias=True,
                device="cpu"):
    labels = make_labels(batch, height, width, num_classes, mode, device)
    extra = torch.randn(batch, n_extra, height, width, dtype=dtype, device=device) if n_extra else None
    weight = torch.randn(out_ch, num_classes + n_extra, kernel, kernel, dtype=dtype, device=device) / kernel
    b = torch.randn(out_ch, dtype=dtype, device=device) if bias else None
    return labels, extra, weight, b


def forward_backward(fn, labels, extra, weight, bias, grad_seed=1):
    """Output and grads (dextra, dweight, dbias) for a fixed upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (extra, weight, bias)]
    out = fn(labels, leaves[0], leaves[1], leaves[2])
    gen = torch.Generator(device="cpu").manual_seed(grad_seed)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)
    out.backward(grad)
    return [out.detach()] + [None if t is None else t.grad for t in leaves]


def call(backend, padding, padding_mode, stride):
    def fn(labels, extra, weight, bias):
        if backend == "reference":
            return onehot_conv_reference(labels, extra, weight, bias, padding, padding_mode, stride)
        return onehot_conv(labels, extra, weight, bias, padding, padding_mode, stride, backend=backend)
    return fn


# (batch, H, W, K, E, O, kernel, stride, padding, padding_mode, label mode, bias)
CASES = [
    (2, 7, 9, 5, 0, 6, 3, 1, 1, "zeros", "random", True),        # SPADE shared conv, no instance edge
    (2, 7, 9, 35, 1, 8, 3, 1, 1, "zeros", "blocks", True),       # SPADE shared conv + instance edge
    (1, 6, 7, 35, 1, 4, 7, 1, 3, "reflect", "all", True),        # LGGAN encoder conv1, every class present
    (2, 6, 7, 151, 0, 5, 3, 1, 1, "reflect", "random", False),   # ADE20K K, most classes absent
    (2, 9, 7, 6, 3, 5, 4, 2, 2, "zeros", "absent", True),        # SPADE D layer 1: 4x4 s2 p2 + RGB
    (1, 8, 5, 1, 0, 3, 3, 2, 1, "reflect", "random", True),      # K = 1, stride 2, reflect
    (2, 5, 5, 4, 1, 3, 1, 1, 0, "zeros", "all", True),           # 1x1 kernel, no padding
    (1, 6, 6, 3, 2, 4, 3, 1, 0, "reflect", "blocks", False),     # padding 0 (valid conv)
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"K{c[3]}E{c[4]}k{c[6]}s{c[7]}p{c[8]}{c[9]}-{c[10]}")
def test_matches_reference_fp64(backend, case):
    batch, height, width, k_cls, n_extra, out_ch, kernel, stride, padding, mode, lab_mode, bias = case
    inputs = make_inputs(batch, height, width, k_cls, n_extra, out_ch, kernel, torch.float64, lab_mode, bias)
    ref = forward_backward(call("reference", padding, mode, stride), *inputs)
    got = forward_backward(call(backend, padding, mode, stride), *inputs)
    for name, r, g in zip(("out", "dextra", "dweight", "dbias"), ref, got):
        assert (r is None) == (g is None), name
        if r is not None:
            assert g.shape == r.shape and g.dtype == r.dtype, name
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("backend", FAST)
def test_absent_classes_get_zero_weight_grad(backend):
    labels, extra, weight, bias = make_inputs(2, 6, 7, 9, 1, 4, 3, torch.float64, "absent")
    _, _, dweight, _ = forward_backward(call(backend, 1, "zeros", 1), labels, extra, weight, bias)
    present = torch.zeros(9, dtype=torch.bool)
    present[labels.unique()] = True
    assert torch.all(dweight[:, :9][:, ~present] == 0)
    assert torch.all(dweight[:, :9][:, present].abs().sum(dim=(0, 2, 3)) > 0)


def _fa_rule(fast, ref_low, ref64, atol):
    """FlashAttention tolerance rule: fast path's error vs fp64 <= 2x the low-precision reference's + atol."""
    err_fast = (fast.double() - ref64.double()).abs().max().item()
    err_ref = (ref_low.double() - ref64.double()).abs().max().item()
    assert err_fast <= 2 * err_ref + atol, (err_fast, err_ref)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_precision(backend, dtype):
    inputs64 = make_inputs(2, 7, 9, 35, 1, 8, 3, torch.float64, "blocks")
    inputs = [inputs64[0]] + [t.to(dtype) for t in inputs64[1:]]
    ref64 = forward_backward(call("reference", 1, "reflect", 1), inputs[0], *[t.double() for t in inputs[1:]])
    ref_low = forward_backward(call("reference", 1, "reflect", 1), *inputs)
    got = forward_backward(call(backend, 1, "reflect", 1), *inputs)
    atol = 1e-5 if dtype == torch.float32 else 1e-3
    for r64, rl, g in zip(ref64, ref_low, got):
        assert g.dtype == dtype
        _fa_rule(g, rl, r64, atol * max(1.0, r64.abs().max().item()))


@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_fp64(backend):
    labels, extra, weight, bias = make_inputs(1, 4, 5, 3, 1, 2, 3, torch.float64, "random")
    for stride, padding, mode in ((1, 1, "reflect"), (2, 1, "zeros")):
        fn = lambda e, w, b: onehot_conv(labels, e, w, b, padding, mode, stride, backend=backend)  # noqa: E731
        args = [t.clone().requires_grad_() for t in (extra, weight, bias)]
        assert torch.autograd.gradcheck(fn, args, fast_mode=True)


@pytest.mark.parametrize("backend", FAST)
def test_opcheck(backend):
    labels, extra, weight, bias = make_inputs(2, 5, 6, 4, 1, 3, 3, torch.float32, "random")
    for args in ((labels, extra.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), 1, 1, "reflect"),
                 (labels.int(), None, weight[:, :4].detach().requires_grad_(), None, 2, 2, "zeros")):
        torch.library.opcheck(torch.ops.semgan.onehot_conv.default, (*args, backend))


@pytest.mark.parametrize("backend", FAST)
def test_label_dtypes_and_empty_extra(backend):
    labels, extra, weight, bias = make_inputs(1, 5, 6, 7, 0, 3, 3, torch.float32, "random")
    want = onehot_conv_reference(labels, None, weight, bias, 1)
    for lab in (labels.to(torch.uint8), labels.int(), labels):
        torch.testing.assert_close(onehot_conv(lab, None, weight, bias, 1, backend=backend), want)
    empty = torch.zeros(1, 0, 5, 6)
    torch.testing.assert_close(onehot_conv(labels, empty, weight, bias, 1, backend=backend), want)


@pytest.mark.parametrize("backend", FAST)
def test_out_of_range_labels_contribute_nothing(backend):
    """Unchecked labels outside [0, K) hit no one-hot channel on the fast backends (documented)."""
    labels, extra, weight, bias = make_inputs(1, 5, 6, 4, 1, 3, 3, torch.float64, "random")
    bad = labels.clone()
    bad[0, 1, 2], bad[0, 3, 4] = 4, -1
    valid = ((bad >= 0) & (bad < 4)).unsqueeze(1)
    onehot = F.one_hot(bad.clamp(0, 3), 4).permute(0, 3, 1, 2).double() * valid
    want = F.conv2d(F.pad(torch.cat([onehot, extra], 1), (1,) * 4), weight, bias)
    torch.testing.assert_close(onehot_conv(bad, extra, weight, bias, 1, backend=backend), want)


def test_auto_picks_cpu_backend_for_cpu_tensors():
    assert ONEHOT_CONV_BACKENDS.resolve("auto", torch.device("cpu")).__name__ == "onehot_conv_cpu"


def test_torch_compile_cpu():
    labels, extra, weight, bias = make_inputs(1, 6, 7, 5, 1, 4, 3, torch.float32, "random")
    fn = torch.compile(lambda l, e, w, b: onehot_conv(l, e, w, b, 1, "reflect"), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(fn(labels, extra, weight, bias), onehot_conv_reference(labels, extra, weight, bias, 1,
                                                                                       "reflect"))


def _bad(**over):
    labels, extra, weight, bias = make_inputs(1, 5, 6, 4, 1, 3, 3, torch.float32, "random")
    kw = dict(labels=labels, extra=extra, weight=weight, bias=bias, padding=1, padding_mode="zeros", stride=1)
    kw.update(over)
    return lambda: onehot_conv(**kw)


@pytest.mark.parametrize("call_, match", [
    (_bad(labels=torch.zeros(1, 5, 6)), "labels must have dtype"),
    (_bad(labels=torch.zeros(5, 6, dtype=torch.long)), "labels must have 3 dimensions"),
    (_bad(extra=torch.randn(1, 1, 5, 7)), "extra must have shape"),
    (_bad(extra=torch.randn(1, 1, 5, 6).double()), "extra has dtype"),
    (_bad(weight=torch.randn(3, 5, 3)), "weight must have 4 dimensions"),
    (_bad(weight=torch.randn(3, 5, 3, 2)), "weight must have a square kernel"),
    (_bad(weight=torch.randn(3, 1, 3, 3)), r"weight.shape\[1\]"),
    (_bad(bias=torch.randn(4)), "bias must have shape"),
    (_bad(stride=3), "stride"),
    (_bad(padding=-1), "padding"),
    (_bad(padding_mode="circular"), "padding_mode"),
    (_bad(padding=5, padding_mode="reflect"), "padding=5 with padding_mode='reflect'"),
    (_bad(padding=0, weight=torch.randn(3, 5, 7, 7)), "smaller than the 7x7 kernel"),
    (_bad(labels=torch.full((1, 5, 6), 4), check_values=True), "labels values"),
    (_bad(extra=torch.full((1, 1, 5, 6), float("nan")), check_values=True), "extra contains NaN"),
    (_bad(backend="nope"), "backend='nope'"),
])
def test_bad_inputs_name_the_argument(call_, match):
    with pytest.raises(ValueError, match=match):
        call_()


@GPU
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [(2, 64, 96, 36, 1, 128, 3, 1, 1, "zeros"), (2, 40, 56, 35, 1, 64, 7, 1, 3, "reflect"),
                                  (2, 33, 47, 151, 3, 64, 4, 2, 2, "zeros")], ids=str)
def test_gpu_matches_reference(backend, dtype, case):
    if backend not in [n for n, b in ONEHOT_CONV_BACKENDS.backends.items() if b.available(torch.device("cuda"))]:
        pytest.skip(f"{backend} backend not available")
    batch, height, width, k_cls, n_extra, out_ch, kernel, stride, padding, mode = case
    inputs64 = make_inputs(batch, height, width, k_cls, n_extra, out_ch, kernel, torch.float64, "blocks",
                           device="cuda")
    inputs = [inputs64[0]] + [t.to(dtype) for t in inputs64[1:]]
    ref64 = forward_backward(call("reference", padding, mode, stride), inputs[0], *[t.double() for t in inputs[1:]])
    ref_low = forward_backward(call("reference", padding, mode, stride), *inputs)
    got = forward_backward(call(backend, padding, mode, stride), *inputs)
    atol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    for r64, rl, g in zip(ref64, ref_low, got):
        _fa_rule(g, rl, r64, atol * max(1.0, r64.abs().max().item()))
