"""class_l1: fast backends (one pass over per_class_out) against the per-class masked-L1 reference.

Triton runs under the interpreter on CPU (tests/conftest.py), so shapes stay tiny.
"""
import pytest
import torch

from semgan_fast.ops.class_l1 import CLASS_L1_BACKENDS, class_l1, class_l1_reference

FAST = ["cpu", "triton"]
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_labels(batch, height, width, num_classes, mode, device="cpu"):
    """random; absent (3 classes used, one sample with a single class); all (every class in every sample)."""
    if mode == "random":
        return torch.randint(0, num_classes, (batch, height, width), device=device)
    if mode == "absent":
        pool = torch.tensor(sorted({0, num_classes // 2, num_classes - 1}), device=device)
        lab = pool[torch.randint(0, len(pool), (batch, height, width), device=device)]
        lab[0] = pool[-1]
        return lab
    if mode == "all":
        base = torch.arange(height * width, device=device) % num_classes
        return torch.stack([base[torch.randperm(height * width, device=device)] for _ in range(batch)]).view(
            batch, height, width)
    raise AssertionError(mode)


def run(backend, per_class_out, image, labels, upstream=1.7):
    out = per_class_out.detach().clone().requires_grad_()
    img = image.detach().clone().requires_grad_()
    if backend == "reference":
        loss = class_l1_reference(out, img, labels)
    else:
        loss = class_l1(out, img, labels, backend=backend)
    (loss * upstream).backward()
    return loss.detach(), out.grad, img.grad


# (batch, K, C, H, W, label mode)
CASES = [
    (2, 1, 3, 5, 7, "random"),     # K = 1
    (2, 35, 3, 7, 9, "random"),    # Cityscapes K, odd H, W
    (3, 35, 2, 6, 6, "all"),       # every class present
    (2, 151, 3, 3, 5, "random"),   # ADE20K K, tiny spatial: most classes absent
    (2, 7, 4, 5, 3, "absent"),     # absent classes, single-class sample
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}K{c[1]}C{c[2]}H{c[3]}W{c[4]}-{c[5]}")
def test_matches_reference_fp64(backend, case):
    batch, k_cls, channels, height, width, mode = case
    per_class_out = torch.randn(batch, k_cls, channels, height, width, dtype=torch.float64)
    image = torch.randn(batch, channels, height, width, dtype=torch.float64)
    labels = make_labels(batch, height, width, k_cls, mode)
    ref = run("reference", per_class_out, image, labels)
    got = run(backend, per_class_out, image, labels)
    assert got[0].dtype == ref[0].dtype == torch.float64 and got[0].dim() == 0
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)
    torch.testing.assert_close(got[2], ref[2], rtol=0, atol=0)


@pytest.mark.parametrize("backend", FAST)
def test_exact_match_gives_zero_loss_and_zero_grad(backend):
    """out_i = image * M_i exactly: every |.| is at its kink; like autograd's abs, sign(0) = 0."""
    image = torch.randn(2, 3, 5, 6)
    labels = make_labels(2, 5, 6, 4, "random")
    masks = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).unsqueeze(2).float()
    per_class_out = image.unsqueeze(1) * masks
    ref = run("reference", per_class_out, image, labels)
    got = run(backend, per_class_out, image, labels)
    assert got[0].item() == 0.0
    for r, g in zip(ref[1:], got[1:]):
        assert torch.equal(g, r) and g.abs().sum() == 0


def _fa_rule(fast, ref_low, ref64, atol):
    """FlashAttention tolerance rule: fast path's error vs fp64 <= 2x the low-precision reference's + atol."""
    err_fast = (fast.double() - ref64.double()).abs().max().item()
    err_ref = (ref_low.double() - ref64.double()).abs().max().item()
    assert err_fast <= 2 * err_ref + atol, (err_fast, err_ref)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_precision(backend, dtype):
    per_class_out = torch.randn(2, 35, 3, 9, 11).to(dtype)
    image = torch.randn(2, 3, 9, 11).to(dtype)
    labels = make_labels(2, 9, 11, 35, "random")
    ref64 = run("reference", per_class_out.double(), image.double(), labels)
    ref_low = run("reference", per_class_out, image, labels)
    got = run(backend, per_class_out, image, labels)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == dtype
    _fa_rule(got[0], ref_low[0], ref64[0], 1e-5)
    for i in (1, 2):
        # Gradients are sign * (upstream / N), rounded once to dtype, exactly as autograd does.
        _fa_rule(got[i], ref_low[i], ref64[i], 0.0)


@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_fp64(backend):
    per_class_out = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    image = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    labels = make_labels(2, 3, 4, 3, "random")
    assert torch.autograd.gradcheck(lambda o, i: class_l1(o, i, labels, backend=backend), (per_class_out, image),
                                    fast_mode=True)


@pytest.mark.parametrize("backend", FAST)
def test_opcheck(backend):
    per_class_out = torch.randn(2, 4, 3, 4, 5, requires_grad=True)
    image = torch.randn(2, 3, 4, 5, requires_grad=True)
    labels = make_labels(2, 4, 5, 4, "random")
    torch.library.opcheck(torch.ops.semgan.class_l1.default, (per_class_out, image, labels, backend))


@pytest.mark.parametrize("backend", FAST)
def test_label_dtypes_and_out_of_range(backend):
    """Integer label dtypes agree; unchecked labels outside [0, K) mask the image out of every class,
    as in the reference."""
    per_class_out = torch.randn(2, 5, 3, 4, 6, dtype=torch.float64)
    image = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    labels = make_labels(2, 4, 6, 5, "random")
    labels[0, 1, 2], labels[1, 3, 4] = 5, -1
    ref = run("reference", per_class_out, image, labels)
    for lab in (labels, labels.int(), labels.to(torch.int8)):
        got = run(backend, per_class_out, image, lab)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_auto_picks_cpu_backend_for_cpu_tensors():
    assert CLASS_L1_BACKENDS.resolve("auto", torch.device("cpu")).__name__ == "class_l1_cpu"


@pytest.mark.parametrize("call_, match", [
    (lambda: class_l1(torch.randn(1, 3, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long),
                      backend="nope"), "backend='nope'"),
    (lambda: class_l1(torch.randn(1, 3, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long),
                      backend="cpu"), "labels must have shape"),
    (lambda: class_l1(torch.randn(1, 3, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), 3),
                      backend="cpu", check_values=True), "labels values"),
    (lambda: class_l1(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long),
                      backend="cpu"), "per_class_out must have 5 dimensions"),
])
def test_bad_inputs_name_the_argument(call_, match):
    with pytest.raises(ValueError, match=match):
        call_()


@GPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_triton_matches_reference(dtype):
    per_class_out = torch.randn(2, 35, 3, 67, 131, device="cuda").to(dtype)
    image = torch.randn(2, 3, 67, 131, device="cuda").to(dtype)
    labels = make_labels(2, 67, 131, 35, "random", device="cuda")
    ref64 = run("reference", per_class_out.double(), image.double(), labels)
    ref_low = run("reference", per_class_out, image, labels)
    got = run("triton", per_class_out, image, labels)
    _fa_rule(got[0], ref_low[0], ref64[0], 1e-5)
    for i in (1, 2):
        _fa_rule(got[i], ref_low[i], ref64[i], 0.0)
