"""sample_anchors: ContrastiveSeg sampling semantics (eligibility, n_view, hard/easy split with top-up),
vectorised vs loop sampler, determinism, uniformity, gradients, and the absence of host-synchronising ops."""
import pytest
import torch
from sync_probe import SYNC_OPS, OpRecorder

from semgan_fast.ops.sample_anchors import sample_anchors

BACKENDS = ["reference", "vectorized"]


def _crafted():
    """One image, 1 x 200 pixels, 5 classes. Per class (hard, easy) counts:
    0: (30, 30); 1: (2, 40); 2: (40, 3); 3: (4, 6) = 10 = max_views -> not eligible; 4: (0, 20); 15 ignored."""
    spec = {0: (30, 30), 1: (2, 40), 2: (40, 3), 3: (4, 6), 4: (0, 20)}
    labels, preds = [], []
    for c, (n_hard, n_easy) in spec.items():
        labels += [c] * (n_hard + n_easy)
        preds += [(c + 1) % 5] * n_hard + [c] * n_easy
    labels += [-1] * 15
    preds += [0] * 15
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))
    y = torch.tensor(labels)[perm].view(1, 1, -1)
    p = torch.tensor(preds)[perm].view(1, 1, -1)
    emb = torch.randn(1, 6, 1, y.shape[-1])
    return emb, y, p


def _check_consistency(out, emb, labels, preds):
    """Every valid slot is a distinct pixel of its label with the right embedding and hard flag."""
    batch, dim, height, width = emb.shape
    v = out.valid
    assert torch.equal(out.labels[~v], torch.full_like(out.labels[~v], -1))
    assert torch.equal(out.embeddings[~v], torch.zeros_like(out.embeddings[~v]))
    idx = out.index[v]
    assert idx.unique().numel() == idx.numel()
    b, p = idx // (height * width), idx % (height * width)
    assert torch.equal(out.embeddings[v], emb.reshape(batch, dim, -1)[b, :, p])
    assert torch.equal(labels.reshape(batch, -1)[b, p], out.labels[v])
    assert torch.equal(preds.reshape(batch, -1)[b, p] != out.labels[v], out.hard[v])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_samples,n_view,expected_hard", [
    (1000, 10, {0: 5, 1: 2, 2: 7, 4: 0}),   # n_view = max_views = 10
    (29, 7, {0: 3, 1: 2, 2: 4, 4: 0}),      # n_view = 29 // 4 = 7 (odd): 3 hard + 4 easy when both suffice
])
def test_hard_easy_split_on_crafted_input(backend, max_samples, n_view, expected_hard):
    emb, y, p = _crafted()
    out = sample_anchors(emb, y, p, 5, max_samples=max_samples, max_views=10, backend=backend,
                         generator=torch.Generator().manual_seed(0))
    assert out.num_groups.item() == 4 and out.n_view.item() == n_view
    assert out.valid.sum().item() == 4 * n_view
    _check_consistency(out, emb, y, p)
    for c, n_hard in expected_hard.items():
        sel = out.valid & (out.labels == c)
        assert sel.sum().item() == n_view
        assert out.hard[sel].sum().item() == n_hard
    assert not (out.labels == 3).any()  # exactly max_views pixels: not eligible ("more than")
    # Order: by class, hard views first within a class.
    assert torch.equal(out.labels[out.valid], torch.tensor([0, 1, 2, 4]).repeat_interleave(n_view))
    first = out.hard[out.valid].view(4, n_view)
    assert torch.equal(first, torch.arange(n_view).unsqueeze(0) < torch.tensor(list(expected_hard.values()))[:, None])


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend):
    emb = torch.randn(2, 4, 6, 6)
    labels = torch.randint(0, 3, (2, 6, 6))
    # All pixels ignored: no anchors.
    out = sample_anchors(emb, torch.full((2, 6, 6), 255), labels, 3, max_samples=16, max_views=2,
                         ignore_label=255, backend=backend)
    assert not out.valid.any() and out.n_view.item() == 0 and out.num_groups.item() == 0
    # More eligible (image, class) pairs than slots: n_view = 0, no anchors (as ContrastiveSeg).
    out = sample_anchors(emb, torch.arange(36).view(1, 6, 6).repeat(2, 1, 1) % 3, None, 3, max_samples=5,
                         max_views=2, backend=backend)
    assert out.num_groups.item() == 6 and out.n_view.item() == 0 and not out.valid.any()
    # Labels outside [0, K) are ignored; predictions=None: every pixel easy.
    weird = torch.where(labels == 2, 7, labels)
    out = sample_anchors(emb, weird, None, 3, max_samples=64, max_views=3, backend=backend)
    assert not (out.labels == 7).any() and not out.hard.any() and out.valid.any()
    _check_consistency(out, emb, weird, weird)


def test_vectorized_matches_loop_structure():
    # Different random draws, identical structure (labels per slot, hard flags, counts).
    emb = torch.randn(3, 8, 10, 12)
    labels = torch.randint(0, 6, (3, 10, 12))
    labels[0, :4] = -1
    preds = torch.where(torch.rand(3, 10, 12) < 0.4, torch.randint(0, 6, (3, 10, 12)), labels)
    ref = sample_anchors(emb, labels, preds, 6, max_samples=100, max_views=12, backend="reference",
                         generator=torch.Generator().manual_seed(1))
    vec = sample_anchors(emb, labels, preds, 6, max_samples=100, max_views=12, backend="vectorized",
                         generator=torch.Generator().manual_seed(1))
    for field in ("labels", "valid", "hard", "n_view", "num_groups"):
        assert torch.equal(getattr(ref, field), getattr(vec, field)), field
    _check_consistency(ref, emb, labels, preds)
    _check_consistency(vec, emb, labels, preds)


def test_deterministic_under_generator_and_uniform():
    emb = torch.randn(1, 4, 5, 8)
    labels = torch.zeros(1, 5, 8, dtype=torch.long)
    preds = (torch.arange(40).view(1, 5, 8) % 2)  # 20 hard (pred 1), 20 easy
    draw = lambda seed: sample_anchors(emb, labels, preds, 2, max_samples=10, max_views=10,  # noqa: E731
                                       generator=torch.Generator().manual_seed(seed))
    a, b, c = draw(5), draw(5), draw(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.index, c.index)
    # 5 hard + 5 easy of 20 each per draw: every pixel has probability 1/4 per draw.
    counts = torch.zeros(40)
    for seed in range(400):
        counts += torch.bincount(draw(seed).index, minlength=40).float()
    assert counts.sum() == 4000 and counts.min() > 60 and counts.max() < 140  # mean 100, sd ~8.7


def test_gradient_reaches_selected_pixels():
    emb = torch.randn(2, 3, 4, 5, requires_grad=True)
    labels = torch.randint(0, 2, (2, 4, 5))
    out = sample_anchors(emb, labels, None, 2, max_samples=12, max_views=3, generator=torch.Generator().manual_seed(0))
    out.embeddings.sum().backward()
    picked = torch.zeros(2 * 20)
    picked[out.index[out.valid]] = 1
    assert torch.equal(emb.grad.permute(0, 2, 3, 1).reshape(40, 3), picked.unsqueeze(1).expand(40, 3))


def test_labels_at_higher_resolution_are_nearest_downsampled():
    emb = torch.randn(1, 4, 6, 8)
    labels = torch.randint(0, 3, (1, 24, 32))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = sample_anchors(emb, labels, None, 3, max_samples=20, max_views=4, generator=g())
    b = sample_anchors(emb, labels[:, ::4, ::4].contiguous(), None, 3, max_samples=20, max_views=4, generator=g())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="labels"):
        sample_anchors(emb, labels[:, :23], None, 3)


def test_vectorized_has_no_host_syncs():
    emb = torch.randn(2, 4, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    preds = torch.randint(0, 4, (2, 8, 8))
    with OpRecorder() as rec:
        sample_anchors(emb, labels, preds, 4, max_samples=32, max_views=5, backend="vectorized")
    assert "sort" in rec.ops and not (rec.ops & SYNC_OPS), rec.ops & SYNC_OPS
    with OpRecorder() as rec:  # the detector sees the loop sampler's syncs
        sample_anchors(emb, labels, preds, 4, max_samples=32, max_views=5, backend="reference")
    assert rec.ops & SYNC_OPS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_no_sync_and_matches_structure():
    emb = torch.randn(2, 16, 32, 64, device="cuda")
    labels = torch.randint(0, 19, (2, 256, 512), device="cuda")
    preds = torch.randint(0, 19, (2, 32, 64), device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sample_anchors(emb, labels, preds, 19, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = sample_anchors(emb, labels, preds, 19, backend="reference", generator=gen)
    for field in ("labels", "valid", "hard", "n_view", "num_groups"):
        assert torch.equal(getattr(ref, field), getattr(out, field)), field


def test_validation():
    emb = torch.randn(1, 4, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="max_views"):
        sample_anchors(emb, labels, None, 2, max_views=0)
    with pytest.raises(ValueError, match="embeddings"):
        sample_anchors(emb[0], labels, None, 2)
    with pytest.raises(ValueError, match="labels"):
        sample_anchors(emb, labels.float(), None, 2)
    with pytest.raises(ValueError, match="labels"):
        sample_anchors(emb, labels + 5, None, 2, check_values=True)
