"""class_pool: fast backends (segment sums) against the K-masked-copies reference.

Triton runs under the interpreter on CPU (tests/conftest.py), so shapes stay tiny.
"""
import pytest
import torch

from semgan_fast.ops.class_pool import CLASS_POOL_BACKENDS, class_pool, class_pool_reference

FAST = ["cpu", "triton"]
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_labels(batch, height, width, num_classes, mode, device="cpu"):
    """random; absent (only 3 classes used, the others absent; per-sample different); all (every class
    present in every sample); one (a single class everywhere)."""
    if mode == "random":
        return torch.randint(0, num_classes, (batch, height, width), device=device)
    if mode == "absent":
        pool = torch.tensor(sorted({0, num_classes // 2, num_classes - 1}), device=device)
        lab = pool[torch.randint(0, len(pool), (batch, height, width), device=device)]
        lab[0] = pool[0]  # sample 0 holds a single class: presence must be per sample
        return lab
    if mode == "all":
        base = torch.arange(height * width, device=device) % num_classes
        return torch.stack([base[torch.randperm(height * width, device=device)] for _ in range(batch)]).view(
            batch, height, width)
    if mode == "one":
        return torch.full((batch, height, width), num_classes - 1, device=device)
    raise AssertionError(mode)


def run(backend, x, labels, num_classes, divisor, grad_seed=1):
    x = x.detach().clone().requires_grad_()
    if backend == "reference":
        pooled, present = class_pool_reference(x, labels, num_classes, divisor)
    else:
        pooled, present = class_pool(x, labels, num_classes, divisor, backend=backend)
    gen = torch.Generator().manual_seed(grad_seed)
    pooled.backward(torch.randn(pooled.shape, generator=gen, dtype=torch.float64).to(pooled.device, pooled.dtype))
    return pooled.detach(), present, x.grad


# (batch, C, H, W, K, label mode)
CASES = [
    (2, 5, 7, 9, 1, "random"),     # K = 1
    (2, 6, 7, 9, 35, "random"),    # Cityscapes K, odd H, W
    (3, 4, 8, 6, 35, "all"),       # every class present
    (2, 3, 5, 7, 151, "random"),   # ADE20K K, tiny spatial: most classes absent
    (2, 70, 5, 3, 9, "absent"),    # C > one channel block; absent classes, single-class sample
    (1, 3, 4, 5, 6, "one"),        # one class everywhere
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("divisor", ["image", "area"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}C{c[1]}H{c[2]}W{c[3]}K{c[4]}-{c[5]}")
def test_matches_reference_fp64(backend, divisor, case):
    batch, channels, height, width, k_cls, mode = case
    x = torch.randn(batch, channels, height, width, dtype=torch.float64)
    labels = make_labels(batch, height, width, k_cls, mode)
    ref = run("reference", x, labels, k_cls, divisor)
    got = run(backend, x, labels, k_cls, divisor)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    assert got[1].dtype == torch.bool and torch.equal(got[1], ref[1])
    torch.testing.assert_close(got[2], ref[2], rtol=1e-12, atol=1e-12)


def _fa_rule(fast, ref_low, ref64, atol):
    """FlashAttention tolerance rule: fast path's error vs fp64 <= 2x the low-precision reference's + atol."""
    err_fast = (fast.double() - ref64.double()).abs().max().item()
    err_ref = (ref_low.double() - ref64.double()).abs().max().item()
    assert err_fast <= 2 * err_ref + atol, (err_fast, err_ref)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("divisor", ["image", "area"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_precision(backend, divisor, dtype):
    x = torch.randn(2, 8, 9, 11, dtype=dtype) * 3
    labels = make_labels(2, 9, 11, 35, "random")
    ref64 = run("reference", x.double(), labels, 35, divisor)
    ref_low = run("reference", x, labels, 35, divisor)
    got = run(backend, x, labels, 35, divisor)
    atol = 1e-6 if dtype == torch.float32 else 1e-3
    for i in (0, 2):
        assert got[i].dtype == dtype
        _fa_rule(got[i], ref_low[i], ref64[i], atol)
    assert torch.equal(got[1], ref64[1])


@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_fp64(backend):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    labels = make_labels(2, 4, 5, 4, "random")
    for divisor in ("image", "area"):
        assert torch.autograd.gradcheck(lambda t: class_pool(t, labels, 4, divisor, backend=backend)[0], (x,),
                                        fast_mode=True)


@pytest.mark.parametrize("backend", FAST)
def test_opcheck(backend):
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    labels = make_labels(2, 4, 5, 6, "absent")
    for divisor in ("image", "area"):
        torch.library.opcheck(torch.ops.semgan.class_pool.default, (x, labels, 6, divisor, backend))


@pytest.mark.parametrize("backend", FAST)
def test_label_dtypes(backend):
    x = torch.randn(2, 3, 5, 6)
    labels = make_labels(2, 5, 6, 7, "random")
    want = class_pool_reference(x, labels, 7, "area")
    for lab in (labels.to(torch.uint8), labels.int(), labels.short()):
        got = class_pool(x, lab, 7, "area", backend=backend)
        torch.testing.assert_close(got[0], want[0])
        assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("backend", FAST)
def test_out_of_range_labels_are_ignored(backend):
    """Unchecked labels outside [0, K) belong to no class on the fast backends (documented): same as the
    reference, which masks them out of every class."""
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    labels = make_labels(2, 5, 6, 4, "random")
    labels[0, 1, 2], labels[1, 3, 4] = 4, -3
    for divisor in ("image", "area"):
        ref = class_pool_reference(x, labels, 4, divisor)
        got = class_pool(x, labels, 4, divisor, backend=backend)
        torch.testing.assert_close(got[0], ref[0])
        assert torch.equal(got[1], ref[1])
        g_ref, = torch.autograd.grad(ref[0].sum(), x)
        g_got, = torch.autograd.grad(got[0].sum(), x)
        torch.testing.assert_close(g_got, g_ref)
        assert g_got[0, :, 1, 2].abs().sum() == 0


def test_auto_picks_cpu_backend_for_cpu_tensors():
    assert CLASS_POOL_BACKENDS.resolve("auto", torch.device("cpu")).__name__ == "class_pool_cpu"


@pytest.mark.parametrize("call_, match", [
    (lambda: class_pool(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), 2, backend="nope"),
     "backend='nope'"),
    (lambda: class_pool(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), 2, divisor="pixels"),
     "divisor"),
    (lambda: class_pool(torch.randn(1, 2, 3, 3), torch.full((1, 3, 3), -1), 2, check_values=True, backend="cpu"),
     "labels values"),
    (lambda: class_pool(torch.randn(2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), 2, backend="cpu"),
     "x must have 4 dimensions"),
])
def test_bad_inputs_name_the_argument(call_, match):
    with pytest.raises(ValueError, match=match):
        call_()


@GPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("divisor", ["image", "area"])
def test_gpu_triton_matches_reference(dtype, divisor):
    x = torch.randn(3, 64, 67, 131, device="cuda", dtype=dtype)
    labels = make_labels(3, 67, 131, 35, "random", device="cuda")
    labels[1] = labels[1] % 5  # sample 1: most classes absent
    ref64 = run("reference", x.double(), labels, 35, divisor)
    ref_low = run("reference", x, labels, 35, divisor)
    got = run("triton", x, labels, 35, divisor)
    atol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    for i in (0, 2):
        _fa_rule(got[i], ref_low[i], ref64[i], atol)
    assert torch.equal(got[1], ref64[1])
