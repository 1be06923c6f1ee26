"""``class_pool``: LGGAN's semantic-guided average pooling of the class-filtered features.

``pooled[b, k] = sum_p x[b, :, p] * [labels[b, p] == k] / divisor`` and the class-presence
indicator ``present[b, k] = any_p labels[b, p] == k`` (the void-class filter of LGGAN Eq. 5).
The public code pools each masked copy with a global average, i.e. divides by H*W
(``divisor="image"``, the default); ``divisor="area"`` divides by the class's pixel count instead.

Fast backends compute the K pooled vectors as one segment sum over the labels (no masked copies, no
host sync; presence = per-sample pixel count > 0, so B > 1 works): "cpu" (``scatter_add_``; CPU
tensors) and "triton" (kernels/class_pool.py; CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``). Backward: ``grad_x[b, :, p] = grad_pooled[b, labels[b, p]] / divisor``.
Both run inside the ``semgan::class_pool`` custom op (torch.compile / torch.export / opcheck).
"""
from __future__ import annotations

import torch

from ._checks import check_finite, check_float, check_label_range, check_labels, check_same_device
from ._dispatch import Backend, BackendTable
from ._library import accumulator_dtype, cpu_available, triton_available

DIVISORS = ("image", "area")


def class_pool_reference(x: torch.Tensor, labels: torch.Tensor, num_classes: int, divisor: str = "image"):
    """Naive formulation: K masked copies of x, each globally averaged. See ``class_pool``."""
    pooled, present = [], []
    for k in range(num_classes):
        mask = (labels == k).unsqueeze(1).to(x.dtype)
        masked_sum = (x * mask).sum(dim=(2, 3))
        count = mask.sum(dim=(1, 2, 3))
        denom = count.clamp_min(1).unsqueeze(1) if divisor == "area" else x.shape[2] * x.shape[3]
        pooled.append(masked_sum / denom)
        present.append(count > 0)
    return torch.stack(pooled, dim=1), torch.stack(present, dim=1)


# --- CPU backend: scatter_add_ segment sums, gather backward -------------------------------------

def _cpu_sums(x: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """sums [B, K, C] (fp32, fp64 for fp64 x) and counts [B, K] int32. Out-of-range labels are ignored."""
    batch, channels, height, width = x.shape
    lab = labels.reshape(batch, 1, height * width).long()
    lab = torch.where((lab >= 0) & (lab < num_classes), lab, num_classes)  # extra bucket K: dropped
    acc = accumulator_dtype(x.dtype)
    sums = torch.zeros(batch, channels, num_classes + 1, dtype=acc, device=x.device)
    sums.scatter_add_(2, lab.expand(batch, channels, -1), x.reshape(batch, channels, -1).to(acc))
    counts = torch.zeros(batch, num_classes + 1, dtype=torch.int32, device=x.device)
    counts.scatter_add_(1, lab[:, 0], torch.ones_like(lab[:, 0], dtype=torch.int32))
    return sums[:, :, :num_classes].transpose(1, 2), counts[:, :num_classes]


def _cpu_grad_x(gscaled: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    batch, num_classes, channels = gscaled.shape
    height, width = labels.shape[1:]
    lab = labels.reshape(batch, 1, height * width).long()
    lab = torch.where((lab >= 0) & (lab < num_classes), lab, num_classes)  # bucket K: zero gradient
    table = torch.cat([gscaled.transpose(1, 2), gscaled.new_zeros(batch, channels, 1)], dim=2)
    return table.gather(2, lab.expand(batch, channels, -1)).view(batch, channels, height, width).to(dtype)


# --- Triton backend ---------------------------------------------------------------------------

def _triton_sums(x, labels, num_classes):
    from semgan_fast.kernels.class_pool import class_pool_sums
    return class_pool_sums(x, labels.to(torch.int32).contiguous(), num_classes)


def _triton_grad_x(gscaled, labels, dtype):
    from semgan_fast.kernels.class_pool import class_pool_grad_x
    return class_pool_grad_x(gscaled, labels.to(torch.int32).contiguous(), dtype)


_SUMS = {"cpu": _cpu_sums, "triton": _triton_sums}
_GRAD_X = {"cpu": _cpu_grad_x, "triton": _triton_grad_x}


def _denominator(counts: torch.Tensor, hw: int, divisor: str, dtype: torch.dtype) -> torch.Tensor:
    """[B, K, 1] divisor in the accumulator dtype (H*W, or the class area clamped to >= 1)."""
    if divisor == "area":
        return counts.clamp_min(1).to(dtype).unsqueeze(2)
    return torch.full_like(counts, hw, dtype=dtype).unsqueeze(2)


# --- torch.library registration -------------------------------------------------------------

@torch.library.custom_op("semgan::class_pool", mutates_args=())
def _class_pool_op(x: torch.Tensor, labels: torch.Tensor, num_classes: int, divisor: str,
                   backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast-backend forward: (pooled [B, K, C] in x's dtype, counts [B, K] int32)."""
    x = x.contiguous()
    sums, counts = _SUMS[backend](x, labels.contiguous(), num_classes)
    pooled = sums / _denominator(counts, x.shape[2] * x.shape[3], divisor, sums.dtype)
    return pooled.to(x.dtype).contiguous(), counts.contiguous()


@_class_pool_op.register_fake
def _(x, labels, num_classes, divisor, backend):
    return (x.new_empty(x.shape[0], num_classes, x.shape[1]),
            x.new_empty(x.shape[0], num_classes, dtype=torch.int32))


@torch.library.custom_op("semgan::class_pool_backward", mutates_args=())
def _class_pool_backward_op(grad_pooled: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor,
                            divisor: str, backend: str) -> torch.Tensor:
    """grad_x [B, C, H, W] in grad_pooled's dtype (= x's dtype)."""
    acc = accumulator_dtype(grad_pooled.dtype)
    hw = labels.shape[1] * labels.shape[2]
    gscaled = (grad_pooled.to(acc) / _denominator(counts, hw, divisor, acc)).contiguous()
    return _GRAD_X[backend](gscaled, labels.contiguous(), grad_pooled.dtype)


@_class_pool_backward_op.register_fake
def _(grad_pooled, labels, counts, divisor, backend):
    return grad_pooled.new_empty(grad_pooled.shape[0], grad_pooled.shape[2], labels.shape[1], labels.shape[2])


def _setup_context(ctx, inputs, output):
    _, labels, _, divisor, backend = inputs
    ctx.save_for_backward(labels, output[1])
    ctx.conf = (divisor, backend)


def _backward(ctx, grad_pooled, grad_counts):
    labels, counts = ctx.saved_tensors
    divisor, backend = ctx.conf
    grad_x = torch.ops.semgan.class_pool_backward(grad_pooled, labels, counts, divisor, backend)
    return grad_x, None, None, None, None


_class_pool_op.register_autograd(_backward, setup_context=_setup_context)


def _via_op(name: str):
    def run(x, labels, num_classes, divisor):
        pooled, counts = torch.ops.semgan.class_pool(x, labels, num_classes, divisor, name)
        return pooled, counts > 0
    run.__name__ = f"class_pool_{name}"
    return run




CLASS_POOL_BACKENDS = BackendTable("class_pool")
CLASS_POOL_BACKENDS.register(Backend("reference", class_pool_reference))
# auto: triton for CUDA tensors, cpu for CPU tensors ("cpu" serves CPU tensors only; "triton" CPU tensors
# only under the interpreter and when named, hence cpu ranks first).
CLASS_POOL_BACKENDS.register(Backend("cpu", _via_op("cpu"), cpu_available), auto_rank=0)
CLASS_POOL_BACKENDS.register(Backend("triton", _via_op("triton"), triton_available), auto_rank=1)


def class_pool(x: torch.Tensor, labels: torch.Tensor, num_classes: int, divisor: str = "image",
               backend: str = "auto", check_values: bool = False):
    """Semantic-guided average pooling.

    Args:
        x: features [B, C, H, W], floating point.
        labels: class map [B, H, W], integer, values in [0, num_classes).
        num_classes: K.
        divisor: "image" (divide by H*W, as the public LGGAN code) or "area" (by the class's pixel count;
            absent classes give 0).
        backend: "auto", "reference", "cpu" or "triton" (see ``CLASS_POOL_BACKENDS``).
        check_values: also verify label range and finiteness of x (synchronises with the device).

    Returns:
        pooled [B, K, C] in x's dtype, present [B, K] bool. Computed on x's device, no host sync.
        Labels outside [0, K) (unchecked) are ignored by the fast backends.
    """
    check_float("x", x, 4)
    check_labels("labels", labels, 3)
    check_same_device("x", x, labels=labels)
    if labels.shape != (x.shape[0], x.shape[2], x.shape[3]):
        raise ValueError(f"labels must have shape [B, H, W] = {[x.shape[0], *x.shape[2:]]} matching x, "
                         f"got {list(labels.shape)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if divisor not in DIVISORS:
        raise ValueError(f"divisor must be one of {DIVISORS}, got {divisor!r}")
    if check_values:
        check_label_range("labels", labels, num_classes)
        check_finite("x", x)
    impl = CLASS_POOL_BACKENDS.resolve(backend, x.device)
    return impl(x, labels, num_classes, divisor)
