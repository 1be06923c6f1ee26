"""pixel_contrast_loss: fast backends ("cpu" chunked PyTorch, "triton" fused kernels under the interpreter
on CPU) against the plain ContrastiveSeg formulation, gradients, edge cases, low precision, opcheck."""
import importlib

import pytest
import torch
import torch.nn.functional as F

# The module itself: ``semgan_fast.ops.pixel_contrast_loss`` as an attribute is the same-named function.
pcl_module = importlib.import_module("semgan_fast.ops.pixel_contrast_loss")
from semgan_fast.ops.pixel_contrast_loss import pixel_contrast_loss, pixel_contrast_loss_reference
from semgan_fast.ops.sample_anchors import sample_anchors

FAST = ["cpu", "triton"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _emb(n, dim, dtype=torch.float64, device="cpu"):
    return F.normalize(torch.randn(n, dim, dtype=torch.float64), dim=1).to(dtype=dtype, device=device)


def _loss_and_grads(backend, anchors, labels, contrast=None, contrast_labels=None, **kw):
    anchors = anchors.detach().clone().requires_grad_()
    inputs = [anchors]
    if contrast is not None:
        contrast = contrast.detach().clone().requires_grad_()
        inputs.append(contrast)
    loss = pixel_contrast_loss(anchors, labels, contrast, contrast_labels, backend=backend, **kw)
    grads = torch.autograd.grad(loss, inputs)
    return loss.detach(), grads


def _assert_close(fast, ref, rtol, atol):
    (lf, gf), (lr, gr) = fast, ref
    assert torch.isfinite(lf) and all(torch.isfinite(g).all() for g in gf)
    torch.testing.assert_close(lf, lr, rtol=rtol, atol=atol)
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_self_contrast_matches_reference(backend, dtype, tol):
    # A = 70 and D = 20: partial tiles in both directions; class 9 has one member (no positives),
    # label -1 is an unused slot.
    anchors = _emb(70, 20, dtype)
    labels = torch.randint(0, 4, (70,))
    labels[3], labels[5] = -1, 9
    ref = _loss_and_grads("reference", anchors, labels)
    _assert_close(_loss_and_grads(backend, anchors, labels), ref, tol, tol)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_external_contrast_matches_reference(backend, dtype, tol):
    # Memory-bank style: a separate contrast set with unused (-1) slots, gradients to both inputs.
    anchors, contrast = _emb(33, 24, dtype), _emb(90, 24, dtype)
    labels = torch.randint(0, 5, (33,))
    contrast_labels = torch.randint(-1, 5, (90,))
    ref = _loss_and_grads("reference", anchors, labels, contrast, contrast_labels)
    _assert_close(_loss_and_grads(backend, anchors, labels, contrast, contrast_labels), ref, tol, tol)


@pytest.mark.parametrize("backend", FAST)
def test_temperatures_and_unnormalised_inputs(backend):
    # No fixed logit shift is assumed: embeddings of norm ~3 with tau = 0.05 give logits up to ~180.
    anchors = 3 * _emb(40, 16)
    labels = torch.randint(0, 3, (40,))
    ref = _loss_and_grads("reference", anchors, labels, temperature=0.05, base_temperature=0.1)
    fast = _loss_and_grads(backend, anchors, labels, temperature=0.05, base_temperature=0.1)
    _assert_close(fast, ref, 1e-10, 1e-10)


@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_fp64(backend):
    anchors = _emb(12, 8).requires_grad_()
    contrast = _emb(10, 8).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, -1, 3, 1, 2])
    contrast_labels = torch.tensor([0, 1, 2, 3, -1, 0, 1, 2, 2, 1])
    torch.autograd.gradcheck(lambda a: pixel_contrast_loss(a, labels, backend=backend), (anchors,), fast_mode=True)
    torch.autograd.gradcheck(lambda a, c: pixel_contrast_loss(a, labels, c, contrast_labels, backend=backend),
                             (anchors, contrast), fast_mode=True)


def _low_precision_check(backend, dtype, device="cpu"):
    """FlashAttention rule: |fast - ref64| <= 2 |ref_lowp - ref64| + atol, for the loss and the gradient."""
    anchors = _emb(64, 32, dtype, device)
    labels = torch.randint(0, 4, (64,), device=device)
    ref64 = _loss_and_grads("reference", anchors.double(), labels)
    ref_low = _loss_and_grads("reference", anchors, labels)
    fast = _loss_and_grads(backend, anchors, labels)
    for got, want_low, want in zip([fast[0], *fast[1]], [ref_low[0], *ref_low[1]], [ref64[0], *ref64[1]]):
        err_fast = (got.double() - want).abs().max().item()
        err_ref = (want_low.double() - want).abs().max().item()
        assert err_fast <= 2 * err_ref + 1e-4 * want.abs().max().item() + 1e-6, (err_fast, err_ref)


@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float16), ("cpu", torch.bfloat16), ("triton", torch.float16)])
def test_low_precision_tolerance_rule(backend, dtype):
    _low_precision_check(backend, dtype)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_low_precision_and_large(dtype):
    _low_precision_check("triton", dtype, "cuda")
    anchors = _emb(3000, 256, torch.float32, "cuda").to(dtype)
    labels = torch.randint(-1, 19, (3000,), device="cuda")
    ref = _loss_and_grads("reference", anchors.float(), labels)
    fast = _loss_and_grads("triton", anchors, labels)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(fast[0], ref[0], rtol=tol, atol=tol)
    torch.testing.assert_close(fast[1][0].float(), ref[1][0], rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_edge_cases(backend):
    zero = torch.zeros((), dtype=torch.float64)
    # One class only: no negatives, every term is -log(1) = 0.
    anchors = _emb(10, 8)
    loss, (grad,) = _loss_and_grads(backend, anchors, torch.zeros(10, dtype=torch.long))
    torch.testing.assert_close(loss, zero, atol=1e-12, rtol=0)
    assert grad.abs().max() < 1e-12
    # All slots unused: 0, zero gradient, no NaN.
    loss, (grad,) = _loss_and_grads(backend, anchors, torch.full((10,), -1))
    assert loss == 0 and torch.equal(grad, torch.zeros_like(grad))
    # A single anchor has no positive.
    loss, (grad,) = _loss_and_grads(backend, anchors[:1], torch.tensor([3]))
    assert loss == 0 and torch.equal(grad, torch.zeros_like(grad))
    # Every class a singleton: nobody counts.
    loss, _ = _loss_and_grads(backend, anchors, torch.arange(10))
    assert loss == 0


@pytest.mark.parametrize("backend", FAST)
def test_duplicates_and_singletons_match_reference(backend):
    # Duplicate embeddings (logit ties) and classes with one member (excluded anchors, still negatives).
    base = _emb(6, 12)
    anchors = torch.cat([base, base, base[:3]])
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 6, 7, 0, 1, 8])
    ref = _loss_and_grads("reference", anchors, labels)
    _assert_close(_loss_and_grads(backend, anchors, labels), ref, 1e-12, 1e-12)


@pytest.mark.parametrize("backend", FAST)
def test_sampled_anchors_pipeline(backend):
    # sample_anchors' fixed slots (unused ones labelled -1) feed the loss directly; the result equals the
    # reference on the compacted valid anchors (same anchor indices).
    emb = F.normalize(torch.randn(2, 16, 12, 12, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 3, (2, 12, 12))
    preds = torch.where(torch.rand(2, 12, 12) < 0.3, torch.randint(0, 3, (2, 12, 12)), labels)
    out = sample_anchors(emb, labels, preds, 3, max_samples=40, max_views=8, generator=torch.Generator().manual_seed(0))
    assert out.valid.sum() > 0 and not out.valid.all()
    loss = pixel_contrast_loss(out.embeddings, out.labels, backend=backend)
    compact = pixel_contrast_loss_reference(out.embeddings[out.valid], out.labels[out.valid])
    torch.testing.assert_close(loss, compact, rtol=1e-12, atol=1e-12)


def test_auto_backend_and_validation():
    anchors = _emb(8, 4, torch.float32)
    labels = torch.randint(0, 2, (8,))
    assert pcl_module.PIXEL_CONTRAST_LOSS_BACKENDS.resolve("auto", anchors.device).__name__ == "pixel_contrast_loss_cpu"
    with pytest.raises(ValueError, match="labels"):
        pixel_contrast_loss(anchors, labels[:7])
    with pytest.raises(ValueError, match="contrast"):
        pixel_contrast_loss(anchors, labels, contrast=anchors)
    with pytest.raises(ValueError, match="contrast"):
        pixel_contrast_loss(anchors, labels, anchors[:, :3], labels)
    with pytest.raises(ValueError, match="temperature"):
        pixel_contrast_loss(anchors, labels, temperature=0.0)
    with pytest.raises(ValueError, match="anchors"):
        pixel_contrast_loss(anchors.double(), labels, anchors, labels)
    with pytest.raises(ValueError, match="backend"):
        pixel_contrast_loss(anchors, labels, backend="nope")


def test_fp32_matmul_precision_setting_is_followed():
    # "high" maps to tf32x3 (exact in the interpreter); the result must still match.
    anchors = _emb(20, 16, torch.float32)
    labels = torch.randint(0, 3, (20,))
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        loss = pixel_contrast_loss(anchors, labels, backend="triton")
    finally:
        torch.set_float32_matmul_precision(previous)
    torch.testing.assert_close(loss, pixel_contrast_loss_reference(anchors, labels), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("backend", FAST)
def test_opcheck(backend):
    anchors = _emb(9, 8, torch.float32).requires_grad_()
    contrast = _emb(7, 8, torch.float32)
    labels = torch.tensor([0, 1, 1, 0, 2, 2, 0, -1, 1], dtype=torch.int64)
    contrast_labels = torch.tensor([0, 1, 2, -1, 1, 0, 2])
    args = (anchors, labels, contrast, contrast_labels, False, 0.1, 0.07, "ieee", backend)
    torch.library.opcheck(torch.ops.semgan.pixel_contrast_loss.default, args)


def test_cpu_backend_over_many_chunks(monkeypatch):
    # 7-row anchor chunks (self-exclusion offsets and the column-gradient accumulation across chunks).
    monkeypatch.setattr(pcl_module, "_CPU_CHUNK_ELEMENTS", 50 * 7)
    monkeypatch.setattr(pcl_module, "_CPU_MIN_ROWS", 1)
    anchors = _emb(50, 12)
    labels = torch.randint(-1, 4, (50,))
    _assert_close(_loss_and_grads("cpu", anchors, labels), _loss_and_grads("reference", anchors, labels), 1e-12, 1e-12)
    contrast, contrast_labels = _emb(50, 12), torch.randint(-1, 4, (50,))
    _assert_close(_loss_and_grads("cpu", anchors, labels, contrast, contrast_labels),
                  _loss_and_grads("reference", anchors, labels, contrast, contrast_labels), 1e-12, 1e-12)


def test_cpu_backend_has_no_host_syncs():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    # The custom ops are opaque to a dispatch mode: record inside their Python bodies.
    anchors = _emb(30, 8, torch.float32)
    labels = torch.randint(-1, 3, (30,))
    with Recorder() as rec:
        loss, ln, w, coef = pcl_module._pixel_contrast_loss_op._init_fn(
            anchors, labels, anchors, labels, True, 0.1, 0.07, "ieee", "cpu")
        pcl_module._pixel_contrast_loss_backward_op._init_fn(
            torch.ones(()), anchors, labels, anchors, labels, ln, w, coef, True, 0.1, True, True, "ieee", "cpu")
    assert "mm" in rec.ops
    assert not rec.ops & {"_local_scalar_dense", "nonzero", "_unique2", "masked_select", "repeat_interleave"}


def test_torch_compile_fullgraph():
    anchors = _emb(16, 8, torch.float32).requires_grad_()
    labels = torch.randint(0, 3, (16,))
    compiled = torch.compile(lambda a: pixel_contrast_loss(a, labels, backend="cpu"), backend="eager", fullgraph=True)
    loss = compiled(anchors)
    loss.backward()
    torch.testing.assert_close(loss, pixel_contrast_loss_reference(anchors, labels), rtol=2e-5, atol=2e-5)
    assert torch.isfinite(anchors.grad).all()
