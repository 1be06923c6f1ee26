"""pair_similarity_loss (ECGAN Eq. 3): "cpu" (chunked) and "triton" (interpreter on CPU) against the dense
BCELoss formulation; gradients, ignore label, clamps, stride estimate, low precision, opcheck."""
import importlib

import pytest
import torch

# The module itself: ``semgan_fast.ops.pair_similarity_loss`` as an attribute is the same-named function.
psl_module = importlib.import_module("semgan_fast.ops.pair_similarity_loss")
from semgan_fast.ops.pair_similarity_loss import pair_similarity_loss, pair_similarity_loss_reference

FAST = ["cpu", "triton"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _inputs(batch, n_cls, height, width, dtype=torch.float64, used_classes=None, device="cpu"):
    logits = 3 * torch.randn(batch, n_cls, height, width, dtype=torch.float64)
    labels = torch.randint(0, used_classes or n_cls, (batch, height, width))
    return logits.to(dtype=dtype, device=device), labels.to(device)


def _run(backend, logits, labels, **kw):
    """Loss and gradient w.r.t. the logits (probs = softmax(logits): realistic probabilities)."""
    x = logits.detach().clone().requires_grad_()
    loss = pair_similarity_loss(torch.softmax(x, dim=1), labels, backend=backend, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def _assert_close(fast, ref, tol):
    assert torch.isfinite(fast[0]) and torch.isfinite(fast[1]).all()
    torch.testing.assert_close(fast[0], ref[0], rtol=tol, atol=tol)
    torch.testing.assert_close(fast[1], ref[1], rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("ignore_index", [None, 2])
def test_matches_reference(backend, dtype, tol, ignore_index):
    # B = 2, odd 9 x 17 grid (M = 153: three 64-pixel tiles, a partial last tile), 6 classes of which
    # labels use 5 (absent class).
    logits, labels = _inputs(2, 6, 9, 17, dtype, used_classes=5)
    ref = _run("reference", logits, labels, ignore_index=ignore_index)
    _assert_close(_run(backend, logits, labels, ignore_index=ignore_index), ref, tol)


@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_fp64(backend):
    probs = torch.softmax(torch.randn(2, 3, 5, 7, dtype=torch.float64), dim=1).requires_grad_()
    labels = torch.randint(0, 3, (2, 5, 7))
    torch.autograd.gradcheck(lambda p: pair_similarity_loss(p, labels, backend=backend), (probs,), fast_mode=True)
    torch.autograd.gradcheck(lambda p: pair_similarity_loss(p, labels, ignore_index=1, backend=backend), (probs,),
                             fast_mode=True)


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_edge_cases(backend):
    logits, _ = _inputs(2, 4, 6, 6)
    # One class only: A is all ones.
    ones = torch.zeros(2, 6, 6, dtype=torch.long)
    loss, grad = _run(backend, logits, ones)
    probs = torch.softmax(logits, 1).reshape(2, 4, 36)
    expected = -torch.log(torch.einsum("bki,bkj->bij", probs, probs)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    # Every pixel ignored: 0 and a zero gradient, no NaN.
    loss, grad = _run(backend, logits, torch.full((2, 6, 6), 7), ignore_index=7)
    assert loss == 0 and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("backend", FAST)
def test_log_clamp_and_probability_clamp(backend):
    # Exactly one-hot probabilities: a'' = 0 on different-class pairs with a = 1 would be log 0 -> -100
    # (BCELoss clamp), a'' = 1 with a = 0 likewise. Labels disagree with the argmax on purpose.
    labels = torch.randint(0, 3, (1, 4, 5))
    hard = torch.nn.functional.one_hot(torch.randint(0, 3, (1, 4, 5)), 3).permute(0, 3, 1, 2).double()
    ref = pair_similarity_loss_reference(hard, labels)
    assert ref > 10  # clamped (-100) terms dominate
    probs = hard.clone().requires_grad_()
    got = pair_similarity_loss(probs, labels, backend=backend)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    (g_fast,) = torch.autograd.grad(got, probs)
    probs_ref = hard.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(pair_similarity_loss_reference(probs_ref, labels), probs_ref)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-12, atol=1e-6)  # entries ~1e10 (BCELoss's 1/eps cap)
    # Sums slightly above 1 (x > 1 after rounding): clamped to 1, no NaN, gradient masked like torch.clamp.
    over = (hard * (1 + 1e-9)).requires_grad_()
    got = pair_similarity_loss(over, labels, backend=backend)
    over_ref = over.detach().clone().requires_grad_()
    ref = pair_similarity_loss_reference(over_ref, labels)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, over)[0], torch.autograd.grad(ref, over_ref)[0])


@pytest.mark.parametrize("backend", FAST)
def test_stride_estimate_is_the_subgrid_loss(backend):
    logits, labels = _inputs(1, 4, 12, 16)
    probs = torch.softmax(logits, 1)
    est = pair_similarity_loss(probs, labels, stride=4, backend=backend)
    sub = pair_similarity_loss_reference(probs[:, :, ::4, ::4].contiguous(), labels[:, ::4, ::4].contiguous())
    torch.testing.assert_close(est, sub, rtol=1e-12, atol=1e-12)
    exact = pair_similarity_loss_reference(probs, labels)
    assert abs(est - exact) < 0.5 * exact  # an estimate, not the exact value


def _low_precision_check(backend, dtype, device="cpu"):
    logits, labels = _inputs(2, 5, 8, 12, dtype, device=device)
    probs = torch.softmax(logits.float(), 1).to(dtype)
    def run(be, p):
        p = p.detach().clone().requires_grad_()
        loss = pair_similarity_loss(p, labels, backend=be)
        return [loss.detach(), torch.autograd.grad(loss, p)[0]]
    ref64, ref_low, fast = run("reference", probs.double()), run("reference", probs), run(backend, probs)
    for got, want_low, want in zip(fast, ref_low, ref64):
        err_fast = (got.double() - want).abs().max().item()
        err_ref = (want_low.double() - want).abs().max().item()
        assert err_fast <= 2 * err_ref + 1e-5 * want.abs().max().item(), (err_fast, err_ref)


@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float16), ("cpu", torch.bfloat16), ("triton", torch.float16)])
def test_low_precision_tolerance_rule(backend, dtype):
    _low_precision_check(backend, dtype)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_matches_reference(dtype):
    _low_precision_check("triton", dtype, "cuda")
    if dtype == torch.float32:
        # 48 x 64 (M = 3072, several tiles per row), 35 classes, with and without an ignore label.
        logits, labels = _inputs(2, 35, 48, 64, torch.float32, device="cuda")
        for ignore_index in (None, 3):
            ref = _run("reference", logits, labels, ignore_index=ignore_index)
            _assert_close(_run("triton", logits, labels, ignore_index=ignore_index), ref, 2e-5)


def test_auto_backend_and_validation():
    probs = torch.softmax(torch.randn(1, 3, 4, 4), 1)
    labels = torch.randint(0, 3, (1, 4, 4))
    impl = psl_module.PAIR_SIMILARITY_LOSS_BACKENDS.resolve("auto", probs.device)
    assert impl.__name__ == "pair_similarity_loss_cpu"
    with pytest.raises(ValueError, match="labels"):
        pair_similarity_loss(probs, labels[:, :3])
    with pytest.raises(ValueError, match="stride"):
        pair_similarity_loss(probs, labels, stride=0)
    with pytest.raises(ValueError, match="labels"):
        pair_similarity_loss(probs, labels + 3, check_values=True)
    with pytest.raises(ValueError, match="probs"):
        pair_similarity_loss(probs[0], labels)


@pytest.mark.parametrize("backend", FAST)
def test_opcheck(backend):
    probs = torch.softmax(torch.randn(2, 3, 20), 1).requires_grad_()
    labels = torch.randint(0, 3, (2, 20))
    torch.library.opcheck(torch.ops.semgan.pair_similarity_loss.default, (probs, labels, 1, True, "ieee", backend))


def test_cpu_backend_over_many_chunks(monkeypatch):
    # 20-row chunks of a 153-pixel image: exercises the triangle bookkeeping across chunk boundaries.
    monkeypatch.setattr(psl_module, "_CPU_CHUNK_ELEMENTS", 153 * 20)
    logits, labels = _inputs(2, 6, 9, 17, used_classes=5)
    for ignore_index in (None, 1):
        ref = _run("reference", logits, labels, ignore_index=ignore_index)
        _assert_close(_run("cpu", logits, labels, ignore_index=ignore_index), ref, 1e-12)


def test_cpu_backend_has_no_host_syncs():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    # The custom ops are opaque to a dispatch mode: record inside their Python bodies.
    probs = torch.softmax(torch.randn(2, 3, 30), 1)
    labels = torch.randint(0, 3, (2, 30))
    with Recorder() as rec:
        psl_module._pair_similarity_loss_op._init_fn(probs, labels, 2, True, "ieee", "cpu")
        psl_module._pair_similarity_loss_backward_op._init_fn(torch.ones(()), probs, labels, 2, True, "ieee", "cpu")
    assert "mm" in rec.ops
    assert not rec.ops & {"_local_scalar_dense", "nonzero", "_unique2", "masked_select", "repeat_interleave"}


@pytest.mark.parametrize("backend", FAST)
def test_every_class_present_and_matmul_precision_setting(backend):
    # All 6 classes present, B = 3; "high" selects tf32x3 products in the Triton kernels (exact here).
    logits, labels = _inputs(3, 6, 7, 9)
    labels.view(3, -1)[:, :6] = torch.arange(6)
    ref = _run("reference", logits.float(), labels)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        fast = _run(backend, logits.float(), labels)
    finally:
        torch.set_float32_matmul_precision(previous)
    _assert_close(fast, ref, 2e-6)
