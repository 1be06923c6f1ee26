"""ClassMemoryBank: ring-buffer arithmetic (wrap-around, pointer advance by the number written, overflow within
one push), class-correct pixel draws, segment means, contrast set with unfilled slots, no host syncs."""
import pytest
import torch
from sync_probe import SYNC_OPS, OpRecorder
import torch.nn.functional as F

from semgan_fast.ops.class_memory_bank import ClassMemoryBank, ring_write
from semgan_fast.ops.pixel_contrast_loss import pixel_contrast_loss, pixel_contrast_loss_reference


def _ring(num_classes=2, size=5):
    return (torch.zeros(num_classes * size + 1, 1), torch.zeros(num_classes, dtype=torch.long),
            torch.zeros(num_classes, dtype=torch.long))


def test_ring_write_wraps_and_advances_by_count():
    queue, ptr, filled = _ring()
    ptr[0], filled[0] = 3, 3
    values = torch.tensor([10., 11., 12., 13., 20., 21.]).unsqueeze(1)
    cls = torch.tensor([0, 0, 0, 0, 1, 1])
    offset = torch.tensor([0, 1, 2, 3, 0, 1])
    ring_write(queue, ptr, filled, values, cls, offset, torch.tensor([4, 2]), torch.ones(6, dtype=torch.bool))
    q = queue[:-1].view(2, 5)
    assert q[0].tolist() == [12., 13., 0., 10., 11.]  # slots 3, 4 then wrap to 0, 1; slot 2 untouched
    assert q[1].tolist() == [20., 21., 0., 0., 0.]
    assert ptr.tolist() == [2, 2] and filled.tolist() == [5, 2]


def test_ring_write_more_than_size_in_one_push_keeps_the_last_entries():
    queue, ptr, filled = _ring()
    ptr[0] = 1
    values = torch.arange(12.).unsqueeze(1)
    valid = torch.ones(12, dtype=torch.bool)
    valid_masked = valid.clone()
    ring_write(queue, ptr, filled, values, torch.zeros(12, dtype=torch.long), torch.arange(12),
               torch.tensor([12, 0]), valid)
    # Entries 7..11 survive at slots (1 + offset) % 5 = 3, 4, 0, 1, 2.
    assert queue[:5, 0].tolist() == [9., 10., 11., 7., 8.]
    assert ptr.tolist() == [3, 0] and filled.tolist() == [5, 0]
    # Masked entries write nothing (they go to the scratch row).
    before = queue[:-1].clone()
    valid_masked[:] = False
    ring_write(queue, ptr, filled, values + 100, torch.zeros(12, dtype=torch.long), torch.arange(12),
               torch.tensor([0, 0]), valid_masked)
    assert torch.equal(queue[:-1], before) and ptr.tolist() == [3, 0] and filled.tolist() == [5, 0]


def _coded_batch():
    """2 images, 2 x 3 pixels, channel 0 = 100 * label + 10 * image + pixel index (identifies the pixel)."""
    labels = torch.tensor([[[0, 0, 1], [1, 1, -1]], [[2, 2, 2], [0, -1, -1]]])
    code = 100 * labels.clamp_min(0) + 10 * torch.arange(2).view(2, 1, 1) + torch.arange(6).view(1, 2, 3)
    emb = torch.stack([code.float(), torch.ones(2, 2, 3)], dim=1)  # [2, 2, 2, 3]
    return emb, labels


def test_push_draws_class_pixels_and_segment_means():
    emb, labels = _coded_batch()
    bank = ClassMemoryBank(3, 2, size=6, pixels_per_image=2, normalize=False)
    bank.push(emb, labels, generator=torch.Generator().manual_seed(0))
    # Per class: min(K, count) per image summed: class 0: 2 + 1, class 1: 2 (of 3), class 2: 2 (of 3).
    assert bank.pixel_filled.tolist() == [3, 2, 2] and bank.pixel_ptr.tolist() == [3, 2, 2]
    feats, lab = bank.contrast_set("pixel")
    for c in range(3):
        entries = feats[lab == c]
        assert entries.shape[0] == bank.pixel_filled[c]
        assert ((entries[:, 0] // 100) == c).all()           # drawn from the class's own pixels
        assert entries[:, 0].unique().numel() == entries.shape[0]  # without replacement
    # Entries of a class are ordered by image.
    assert bank.pixel_queue[0, :3, 0].sort().values.tolist() == [0., 1., 13.]
    assert (bank.pixel_queue[0, 2, 0] == 13.) and bank.pixel_queue[0, :2, 0].max() < 10
    # Segment means, one per (image, class) present.
    assert bank.segment_filled.tolist() == [2, 1, 1]
    assert bank.segment_queue[0, :2, 0].tolist() == [0.5, 13.]
    assert bank.segment_queue[1, 0, 0].item() == pytest.approx((102 + 103 + 104) / 3)
    assert bank.segment_queue[2, 0, 0].item() == pytest.approx((210 + 211 + 212) / 3)


def test_repeated_pushes_wrap_around():
    bank = ClassMemoryBank(2, 1, size=3, pixels_per_image=1, normalize=False)
    labels = torch.tensor([[[0, 1]]])
    for v in range(1, 6):  # one pixel per class per push: deterministic entries
        bank.push(torch.tensor([[[[float(v), -float(v)]]]]), labels)
    assert bank.pixel_queue[0, :, 0].tolist() == [4., 5., 3.]
    assert bank.pixel_queue[1, :, 0].tolist() == [-4., -5., -3.]
    assert bank.segment_queue[0, :, 0].tolist() == [4., 5., 3.]
    assert bank.pixel_ptr.tolist() == [2, 2] and bank.pixel_filled.tolist() == [3, 3]
    assert (bank.contrast_set("both")[1] >= 0).all()


def test_normalised_entries_and_contrast_set_with_unfilled_slots():
    torch.manual_seed(1)
    bank = ClassMemoryBank(4, 8, size=10, pixels_per_image=3, dtype=torch.float64)
    emb = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 5, 5))  # class 3 never pushed
    bank.push(emb, labels, generator=torch.Generator().manual_seed(0))
    feats, lab = bank.contrast_set("pixel")
    assert feats.shape == (40, 8) and lab.shape == (40,)
    assert (lab[30:] == -1).all() and (lab >= 0).sum() == bank.pixel_filled.sum()
    torch.testing.assert_close(feats[lab >= 0].norm(dim=1), torch.ones(int((lab >= 0).sum()), dtype=torch.float64))
    both_feats, both_lab = bank.contrast_set("both")
    assert both_feats.shape == (80, 8) and torch.equal(both_lab[:40], lab)
    # As the contrast set of the loss: unfilled slots are ignored.
    anchors = F.normalize(torch.randn(16, 8, dtype=torch.float64), dim=1)
    anchor_labels = torch.randint(0, 4, (16,))
    for backend in ("cpu", "triton"):
        loss = pixel_contrast_loss(anchors, anchor_labels, both_feats, both_lab, backend=backend)
        keep = both_lab >= 0
        ref = pixel_contrast_loss_reference(anchors, anchor_labels, both_feats[keep], both_lab[keep])
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)


def test_push_has_no_host_syncs_and_state_dict_roundtrip():
    bank = ClassMemoryBank(5, 4, size=7, pixels_per_image=2)
    emb = torch.randn(3, 4, 6, 6)
    labels = torch.randint(-1, 5, (3, 12, 12))  # labels at 2x resolution, nearest-downsampled
    with OpRecorder() as rec:
        bank.push(emb, labels, generator=torch.Generator().manual_seed(0))
        bank.contrast_set("both")
    assert "sort" in rec.ops and not (rec.ops & SYNC_OPS), rec.ops & SYNC_OPS
    other = ClassMemoryBank(5, 4, size=7, pixels_per_image=2)
    other.load_state_dict(bank.state_dict())
    for a, b in zip(bank.contrast_set("both"), other.contrast_set("both")):
        assert torch.equal(a, b)
    bank.reset()
    assert (bank.contrast_set("both")[1] == -1).all()


def test_validation():
    bank = ClassMemoryBank(3, 4, size=5)
    with pytest.raises(ValueError, match="dim"):
        bank.push(torch.randn(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        bank.push(torch.randn(1, 4, 2, 2), torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="kind"):
        bank.contrast_set("all")
    with pytest.raises(ValueError, match="size"):
        ClassMemoryBank(3, 4, size=0)
