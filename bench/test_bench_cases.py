"""pytest-benchmark cases: each op's small case, naive reference vs ours, fwd and fwd+bwd, plus one
training step of the synthetic preset (naive reference configuration vs ours).

Collected only when pytest is pointed at this directory (``pytest.ini`` limits the default run to
``tests/``)::

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest bench/ --benchmark-group-by=group
    .venv/bin/python -m pytest bench/ --benchmark-json=bench/results/pytest_benchmark.json

Shapes are the first ``--small`` shape of each ``bench/bench_<op>.py`` (the CPU paths on the CPU; on
a CUDA device the same shapes on the GPU backends, each call followed by a synchronisation). The
groups pair naive and ours so that pytest-benchmark's table shows them side by side. These time; the
correctness tests are in ``tests/``. The full method (L2 flush, quantiles, peak memory, issue shapes)
is ``bench/suite.py``.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ROUNDS = 3


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _blocks(batch, height, width, num_classes, block, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_classes, (batch, -(-height // block), -(-width // block)), generator=g)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :height, :width].contiguous().to(DEVICE)


def _leaf(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE)


# Each case: name -> builder() returning (inputs needing grad, {provider: fn(*inputs) -> Tensor}, backward-able).
def _class_conv():
    from semgan_fast.ops.class_conv import class_conv, class_conv_reference
    x, w, b = _leaf(1, 64, 128, 256), _leaf(35, 3, 64, 7, 7, scale=1 / 448), _leaf(35, 3, scale=0.1)
    labels = _blocks(1, 128, 256, 35, 16)
    return [x, w, b], {
        "naive": lambda x, w, b: class_conv_reference(x, labels, w, b, "reflect", "tanh"),
        "ours": lambda x, w, b: class_conv(x, labels, w, b, "reflect", "tanh"),
    }


def _onehot_conv():
    from semgan_fast.ops.onehot_conv import onehot_conv, onehot_conv_reference
    labels = _blocks(1, 32, 64, 35, 8)
    extra = (torch.rand(1, 1, 32, 64, generator=torch.Generator().manual_seed(1)) > 0.9).float().to(DEVICE)
    w, b = _leaf(128, 36, 3, 3, scale=0.05), _leaf(128)
    return [extra, w, b], {
        "naive": lambda e, w, b: onehot_conv_reference(labels, e, w, b, 1, "zeros"),
        "ours": lambda e, w, b: onehot_conv(labels, e, w, b, 1, "zeros"),
    }


def _class_pool():
    from semgan_fast.ops.class_pool import class_pool, class_pool_reference
    x, labels = _leaf(1, 64, 64, 128), _blocks(1, 64, 128, 35, 16)
    return [x], {
        "naive": lambda x: class_pool_reference(x, labels, 35, "image")[0],
        "ours": lambda x: class_pool(x, labels, 35, "image")[0],
    }


def _class_l1():
    from semgan_fast.ops.class_l1 import class_l1, class_l1_reference
    out, image = torch.tanh(_leaf(1, 35, 3, 64, 128)), torch.tanh(_leaf(1, 3, 64, 128, seed=1))
    labels = _blocks(1, 64, 128, 35, 16)
    return [out, image], {
        "naive": lambda o, i: class_l1_reference(o, i, labels),
        "ours": lambda o, i: class_l1(o, i, labels),
    }


def _pixel_contrast_loss():
    from semgan_fast.ops.pixel_contrast_loss import pixel_contrast_loss, pixel_contrast_loss_reference
    anchors = F.normalize(_leaf(256, 256), dim=1)
    labels = torch.randint(0, 35, (256,), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    return [anchors], {
        "naive": lambda a: pixel_contrast_loss_reference(a, labels, None, None),
        "ours": lambda a: pixel_contrast_loss(a, labels),
    }


def _pair_similarity_loss():
    from semgan_fast.ops.pair_similarity_loss import pair_similarity_loss, pair_similarity_loss_reference
    probs = torch.softmax(2 * _leaf(1, 35, 16, 32), dim=1)
    labels = _blocks(1, 16, 32, 35, 2)
    return [probs], {
        "naive": lambda p: pair_similarity_loss_reference(p, labels),
        "ours": lambda p: pair_similarity_loss(p, labels),
    }


def _sample_anchors():
    from semgan_fast.ops.sample_anchors import sample_anchors, sample_anchors_reference
    labels = _blocks(2, 64, 128, 35, 8)
    wrong = torch.rand(2, 64, 128, generator=torch.Generator().manual_seed(3)).to(DEVICE) < 0.2
    preds = torch.where(wrong, (labels + 1) % 35, labels)
    emb = _leaf(2, 64, 8, 16)
    kw = dict(max_samples=1024, max_views=20)
    return [], {
        "naive": lambda: sample_anchors_reference(emb, labels[:, ::8, ::8], preds[:, ::8, ::8], 35,
                                                  generator=torch.Generator(device=DEVICE).manual_seed(0), **kw).valid,
        "ours": lambda: sample_anchors(emb, labels, preds, 35, generator=torch.Generator(device=DEVICE).manual_seed(0),
                                       **kw).valid,
    }


def _class_stack():
    from semgan_fast.ops.class_stack import class_stack, class_stack_reference
    labels = _blocks(1, 64, 128, 35, 16)
    x = _leaf(1, 16, 64, 128)
    weights = [_leaf(35, 8, 16, 3, 3, scale=0.1, seed=1), _leaf(35, 3, 8, 3, 3, scale=0.1, seed=2)]
    biases = [_leaf(35, 8, scale=0.1, seed=3), _leaf(35, 3, scale=0.1, seed=4)]
    return [x, *weights, *biases], {
        "naive": lambda x_, w0, w1, b0, b1: class_stack_reference(x_, labels, [w0, w1], [b0, b1]),
        "ours": lambda x_, w0, w1, b0, b1: class_stack(x_, labels, [w0, w1], [b0, b1]),
    }


CASES = {"class_conv": _class_conv, "class_stack": _class_stack, "onehot_conv": _onehot_conv, "class_pool": _class_pool, "class_l1": _class_l1,
         "pixel_contrast_loss": _pixel_contrast_loss, "pair_similarity_loss": _pair_similarity_loss,
         "sample_anchors": _sample_anchors}
PARAMS = [(op, mode, prov) for op in CASES for mode in (("fwd",) if op == "sample_anchors" else ("fwd", "fwd+bwd"))
          for prov in ("naive", "ours")]


@pytest.mark.parametrize("op,mode,provider", PARAMS, ids=[f"{o}-{m}-{p}" for o, m, p in PARAMS])
def test_op(benchmark, op, mode, provider):
    inputs, providers = CASES[op]()
    fn = providers[provider]
    benchmark.group = f"{op} {mode} ({DEVICE.type})"
    if mode == "fwd":
        def call():
            with torch.no_grad():
                out = fn(*inputs)
            _sync()
            return out
    else:
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]

        def call():
            for t in leaves:
                t.grad = None
            out = fn(*leaves)
            out.backward(torch.ones_like(out))
            _sync()
            return out
    out = benchmark.pedantic(call, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert out is not None


@pytest.mark.parametrize("config", ["naive", "ours"])
def test_train_step(benchmark, config, tmp_path):
    """One synthetic-preset training step (G step + D step), reference backends fp32 vs ours."""
    import bench_e2e
    from semgan_fast.train import Trainer

    cfg, override, _ = bench_e2e.config_for("synthetic", config, DEVICE, 4, str(tmp_path))
    with bench_e2e.backend_override(override):
        trainer = Trainer(cfg, DEVICE)
        batch = bench_e2e.make_batch(trainer, 4)
        benchmark.group = f"train step synthetic ({DEVICE.type})"

        def step():
            result = trainer.train_step(batch)
            _sync()
            return result

        result = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert result.images == 4
