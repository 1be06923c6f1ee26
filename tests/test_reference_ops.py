"""Reference ops against hand-computed tiny cases, fp64 gradcheck, and input validation."""
import pytest
import torch

from semgan_fast.ops import class_l1, class_pool, weight_map_fusion
from semgan_fast.ops.class_l1 import class_l1_reference
from semgan_fast.ops.class_pool import class_pool_reference


def test_class_pool_hand_computed():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]])  # [1,2,2,2]
    labels = torch.tensor([[[0, 1], [1, 1]]])
    pooled, present = class_pool(x, labels, 3, backend="reference")
    # image divisor: class 0 holds pixel (0,0); class 1 the other three; class 2 none.
    expected = torch.tensor([[[1.0, 10.0], [9.0, 90.0], [0.0, 0.0]]]) / 4
    torch.testing.assert_close(pooled, expected)
    assert present.tolist() == [[True, True, False]]
    pooled_area, _ = class_pool(x, labels, 3, divisor="area", backend="reference")
    torch.testing.assert_close(pooled_area, torch.tensor([[[1.0, 10.0], [3.0, 30.0], [0.0, 0.0]]]))


def test_class_l1_hand_computed():
    image = torch.tensor([[[[1.0, -1.0]]]])             # [1,1,1,2]
    labels = torch.tensor([[[0, 1]]])
    per_class = torch.tensor([[[[[0.5, 0.0]]], [[[0.25, -0.5]]]]])  # [1,2,1,1,2]
    # class 0: |1-0.5| + |0-0| ; class 1: |0-0.25| + |-1+0.5|; each a mean over 2 pixels
    expected = (0.5 + 0.0) / 2 + (0.25 + 0.5) / 2
    assert float(class_l1(per_class, image, labels, backend="reference")) == pytest.approx(expected)


def test_weight_map_fusion_hand_computed():
    g = torch.full((1, 3, 1, 1), 2.0)
    loc = torch.full((1, 3, 1, 1), -2.0)
    logits = torch.tensor([[[[0.0]], [[torch.log(torch.tensor(3.0))]]]])  # softmax -> (0.25, 0.75)
    fused, weights = weight_map_fusion(g, loc, logits)
    torch.testing.assert_close(weights.flatten(), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(fused, torch.full((1, 3, 1, 1), 0.25 * -2.0 + 0.75 * 2.0))


def test_reference_gradcheck_fp64():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 5))
    assert torch.autograd.gradcheck(lambda t: class_pool_reference(t, labels, 3, "area")[0], (x,))
    out = torch.randn(2, 3, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    img = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: class_l1_reference(a, b, labels), (out, img))
    logits = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: weight_map_fusion(a, b, c)[0], (img, x.detach().requires_grad_(), logits))


@pytest.mark.parametrize("call, match", [
    (lambda: class_pool(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 3), 2), "labels must have dtype"),
    (lambda: class_pool(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 4, dtype=torch.long), 2), "labels must have shape"),
    (lambda: class_pool(torch.randn(1, 2, 3, 3), torch.full((1, 3, 3), 5), 2, check_values=True), "labels values"),
    (lambda: class_pool(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), 0), "num_classes"),
    (lambda: class_pool(torch.full((1, 2, 3, 3), float("nan")), torch.zeros(1, 3, 3, dtype=torch.long), 2,
                        check_values=True), "x contains NaN"),
    (lambda: class_l1(torch.randn(2, 3, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)),
     "image must have shape"),
    (lambda: class_l1(torch.randn(1, 3, 3, 4, 4), torch.randn(1, 3, 4, 4).double(),
                      torch.zeros(1, 4, 4, dtype=torch.long)), "image has dtype"),
    (lambda: weight_map_fusion(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)), "logits"),
    (lambda: class_pool(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), 2, backend="nope"),
     "backend='nope'"),
])
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_env_override_selects_reference(monkeypatch):
    from semgan_fast.ops.class_pool import CLASS_POOL_BACKENDS
    monkeypatch.setenv("SEMGAN_BACKEND", "reference")
    assert CLASS_POOL_BACKENDS.resolve("auto", torch.device("cpu")) is class_pool_reference
