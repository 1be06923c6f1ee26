"""``class_stack``: grouped class sub-generator stacks (ECGAN Eq. 6-7; deeper LGGAN local generators).

For every class c (naive formulation, ``class_stack_reference``)::

    h = x * (labels == c)
    for l in 1..L:  h = act_l(conv(pad(h), weights[l][c]) + biases[l][c])
    out[:, c] = h                     # act = leaky_relu(negative_slope) between layers, final_activation last

Exact sparse evaluation (every fast backend). Let r_l = k_l // 2 and R = sum_l r_l. With reflect or
zero padding, output pixel p of the stack depends only on the input pixels within Chebyshev
distance R of p (reflection never moves a tap farther than r_l from the pixel it serves). So if
class c has no pixel within R of p, ``out[:, c](p)`` is the stack's response to an all-zero input:
the class's *background response*, which depends only on the weights and on p's distances to the
image borders (clipped at R; with reflect padding it is even constant). Hence:

1. Output tiles of ``tile x tile`` pixels; a class is *present* in a tile when it occurs in the tile
   plus an R-pixel halo. Work items are the present (image, tile, class) triples, sorted by class.
2. Each item runs the class's stack on its own window, layer by layer: layer l computes a window
   that is the tile grown by the radii of the layers after it (clamped into the image), reading its
   padded input through index maps that apply the image-border padding exactly (reflect at the
   image border, never at the window border). One launch per layer covers every item of every
   class (``item_conv``: a valid conv whose weights are selected by the item's class).
3. The output starts as the background response of every class (computed once per call by the same
   engine on an all-zero image of min(n, 2R+1) pixels per axis) and the items' owned pixels are
   written over it.

Multiply-adds are proportional to the number of present (tile, class) pairs, not to K x tiles; only
writing the [B, K, O, H, W] output depends on K. Memory: every item's gathered layer windows are
materialised (items x C x (tile + 2R)^2 for layer 1), so the engine pays off when a tile's halo holds a few
classes, as in semantic maps (measured: 394 MB vs the naive 875 MB peak at K = 35, 128x256, C = 64); in the
worst case, every class near every tile (random labels), it needs more than the naive loop (1.5 GB vs 0.9 GB). The backward recomputes the forward (only x,
labels and the weights are saved) and runs the layers in reverse: per-item conv backward
(input, weight and bias gradients; weight gradients reduced per class), transposed gathers
(``index_add``: deterministic on CPU, atomic on CUDA), and the background response's own backward with the gradient of the pixels it
fills. Accumulation is fp32 (fp64 for fp64 inputs). fp16/bf16: the Triton backend keeps the items'
windows, weights and activations in the input dtype (tensor-core dots, fp32 accumulation) and does every
reduction (overlapping-window gradient sums, weight gradients, the background and its gradient) in
fp32; the CPU backend computes in fp32 throughout.

Backends (``CLASS_STACK_BACKENDS``; ``auto``: triton on CUDA tensors, cpu on CPU tensors):

* ``reference``: the naive loop above (plain PyTorch autograd).
* ``cpu``: the engine with ``item_conv`` = one ``F.conv2d`` per present class (items are sorted by
  class) and ``aten.convolution_backward`` for its gradients.
* ``triton``: the engine with ``item_conv`` in ``semgan_fast.kernels.class_stack`` (one launch per
  layer and direction for all classes; deterministic per-class weight reductions, no atomics).

Both run inside the custom ops ``semgan::class_stack`` / ``semgan::class_stack_backward``
(``torch.library``: fake tensors, autograd, torch.compile / export, ``opcheck``). The planner
synchronises once with the device (the number of present items sizes the work).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ._checks import (check_dim, check_finite, check_float, check_label_range, check_labels,
                      check_same_device, check_same_dtype)
from ._dispatch import Backend, BackendTable
from ._library import NAMESPACE, FastImpl, accumulator_dtype, cpu_available, triton_available

PADDING_MODES = ("reflect", "zeros")
FINAL_ACTIVATIONS = (None, "tanh")
DEFAULT_TILE = 16


def class_stack_reference(x: torch.Tensor, labels: torch.Tensor, weights: Sequence[torch.Tensor],
                          biases: Sequence[torch.Tensor], padding_mode: str = "reflect", negative_slope: float = 0.2,
                          final_activation: str | None = "tanh") -> torch.Tensor:
    """Naive per-class loop: K masked copies of ``x``, each through its own L-layer stack. See ``class_stack``."""
    outputs = []
    last = len(weights) - 1
    for c in range(weights[0].shape[0]):
        h = x * (labels == c).unsqueeze(1).to(x.dtype)
        for index, (weight, bias) in enumerate(zip(weights, biases)):
            pad = weight.shape[-1] // 2
            h = F.pad(h, (pad, pad, pad, pad), mode="reflect" if padding_mode == "reflect" else "constant")
            h = F.conv2d(h, weight[c], bias[c])
            if index < last:
                h = F.leaky_relu(h, negative_slope)
            elif final_activation == "tanh":
                h = torch.tanh(h)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


# ---------------------------------------------------------------------------------------------
# Planner: tiles, windows, index maps and the present (image, tile, class) items.
# ---------------------------------------------------------------------------------------------


@dataclass
class _Axis:
    """Geometry of one image axis of n pixels cut into tiles (all tensors int64, one row per tile).

    ``sizes[l]``/``begins[l]`` (l = 0..L): the window of layer l's output (l = 0: the input window
    holding every pixel the tile depends on); ``maps[l-1]`` [tiles, sizes[l] + 2 r_l]: for layer l,
    where each padded input coordinate is read from, as an index into layer l-1's window (layer 1:
    into the image) with ``sizes[l-1]`` (image: n) as the sentinel of a zero-padded read;
    ``out_pos`` [tiles, sizes[L]]: image coordinate of each final-window pixel, ``owned``: whether
    this tile writes it (the last tile's window is shifted into the image and overlaps its
    neighbour, whose pixels it must not write).
    """
    n: int
    tiles: int
    sizes: list[int]
    begins: list[torch.Tensor]
    maps: list[torch.Tensor]
    out_pos: torch.Tensor
    owned: torch.Tensor


def _pad_index(u: torch.Tensor, n: int, padding_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Image coordinate read by padded coordinate u, and whether it is inside (zero padding)."""
    if padding_mode == "reflect":
        q = torch.where(u < 0, -u, u)
        return torch.where(q >= n, 2 * (n - 1) - q, q), torch.ones_like(u, dtype=torch.bool)
    return u, (u >= 0) & (u < n)


def _axis_plan(n: int, tile: int, radii: Sequence[int], padding_mode: str, device: torch.device) -> _Axis:
    layers = len(radii)
    tiles = -(-n // tile)
    starts = torch.arange(tiles, device=device, dtype=torch.int64) * tile
    # extent[l]: how far layer l's output window reaches beyond the tile (the radii of the layers after it).
    extent = [sum(radii[l:]) for l in range(layers + 1)]
    sizes = [min(tile + 2 * e, n) for e in extent]
    # Clamping keeps each window inside the image; it still covers what the next layer reads
    # because reflected taps land within r_l of the pixel they serve.
    begins = [(starts - e).clamp(0, n - s) for e, s in zip(extent, sizes)]
    maps = []
    for l in range(1, layers + 1):
        r = radii[l - 1]
        u = begins[l][:, None] - r + torch.arange(sizes[l] + 2 * r, device=device)[None, :]
        q, inside = _pad_index(u, n, padding_mode)
        if l == 1:
            maps.append(torch.where(inside, q, n))
        else:
            maps.append(torch.where(inside, q - begins[l - 1][:, None], sizes[l - 1]))
    out_pos = begins[layers][:, None] + torch.arange(sizes[layers], device=device)[None, :]
    return _Axis(n, tiles, sizes, begins, maps, out_pos, out_pos >= starts[:, None])


@dataclass
class _StackPlan:
    """Items (present (image, tile, class) triples, sorted by class) and the axes' geometry."""
    rows: _Axis
    cols: _Axis
    batch: int
    num_classes: int
    item_batch: torch.Tensor     # [P] int64
    item_row: torch.Tensor       # [P] int64 tile row
    item_col: torch.Tensor       # [P] int64 tile column
    item_class: torch.Tensor     # [P] int64, non-decreasing
    class_offsets: torch.Tensor  # [K + 1] int64: items of class c are class_offsets[c]:class_offsets[c+1]
    segments: list[tuple[int, int, int]]  # (class, first item, end) for the present classes (host)
    present_classes: torch.Tensor  # [len(segments)] int64: the segments' classes, on the device (no upload later)

    @property
    def num_items(self) -> int:
        return int(self.item_class.shape[0])


def _items_from_presence(rows: _Axis, cols: _Axis, present: torch.Tensor) -> _StackPlan:
    """present: bool [B, tiles_h, tiles_w, K]. Synchronises with the device once (the per-class counts)."""
    batch, num_classes = present.shape[0], present.shape[-1]
    by_class = present.permute(3, 0, 1, 2)                    # nonzero's row-major order is then sorted by class
    counts = by_class.sum(dim=(1, 2, 3))
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    bounds = offsets.tolist()                                 # the one host sync: P sizes the work
    segments = [(c, bounds[c], bounds[c + 1]) for c in range(num_classes) if bounds[c + 1] > bounds[c]]
    # nonzero_static with the known sizes: no further sync (nonzero, bincount and uploads each sync on CUDA)
    if segments:
        idx = torch.nonzero_static(by_class, size=bounds[-1])  # [P, 4] (class, image, tile row, tile column)
        classes = torch.nonzero_static(counts, size=len(segments)).view(-1)
    else:
        idx = torch.zeros(0, 4, dtype=torch.int64, device=present.device)
        classes = idx[:, 0]
    return _StackPlan(rows, cols, batch, num_classes, idx[:, 1].contiguous(), idx[:, 2].contiguous(),
                      idx[:, 3].contiguous(), idx[:, 0].contiguous(), offsets, segments, classes.contiguous())


def plan_class_stack(labels: torch.Tensor, num_classes: int, kernel_sizes: Sequence[int], padding_mode: str = "reflect",
                     tile: int = DEFAULT_TILE) -> _StackPlan:
    """Work plan for ``labels`` [B, H, W]: a class is present in a tile when it occurs within R = sum(k_l // 2)
    pixels of it (labels outside [0, K) belong to no class)."""
    batch, height, width = labels.shape
    radii = [k // 2 for k in kernel_sizes]
    rows = _axis_plan(height, tile, radii, padding_mode, labels.device)
    cols = _axis_plan(width, tile, radii, padding_mode, labels.device)
    lab = labels.long()
    lab = torch.where((lab >= 0) & (lab < num_classes), lab, num_classes)
    total = sum(radii)

    def halo_window(axis: _Axis) -> tuple[torch.Tensor, torch.Tensor]:
        # The input window (shifted into the image for the last tile) and which of its pixels lie within
        # R of the tile's own pixels: only those decide presence.
        pos = axis.begins[0][:, None] + torch.arange(axis.sizes[0], device=labels.device)
        first = torch.arange(axis.tiles, device=labels.device)[:, None] * tile
        near = (pos >= first - total) & (pos < (first + tile).clamp(max=axis.n) + total)
        return pos, near

    win_r, near_r = halo_window(rows)                                      # [th, Sr]
    win_c, near_c = halo_window(cols)                                      # [tw, Sc]
    b = torch.arange(batch, device=labels.device)
    flat = ((b.view(-1, 1, 1, 1, 1) * height + win_r.view(1, -1, 1, rows.sizes[0], 1)) * width
            + win_c.view(1, 1, -1, 1, cols.sizes[0]))
    near = near_r.view(1, -1, 1, rows.sizes[0], 1) & near_c.view(1, 1, -1, 1, cols.sizes[0])
    windows = torch.where(near, lab.reshape(-1)[flat], num_classes).reshape(
        batch, rows.tiles, cols.tiles, rows.sizes[0] * cols.sizes[0])          # explicit: B = 0 is valid
    present = torch.zeros(batch, rows.tiles, cols.tiles, num_classes + 1, dtype=torch.bool, device=labels.device)
    present.scatter_(3, windows, True)
    return _items_from_presence(rows, cols, present[..., :num_classes])


def _background_plan(num_classes: int, height: int, width: int, radii: Sequence[int], padding_mode: str,
                     device: torch.device) -> tuple[_StackPlan, torch.Tensor, torch.Tensor]:
    """Plan for the background responses: one image of min(n, 2R+1) pixels per axis, a single tile, every
    class; plus the maps from image rows/columns to that small image (same clipped border distances)."""
    total = sum(radii)

    def small(n: int) -> tuple[int, torch.Tensor]:
        m = min(n, 2 * total + 1)
        p = torch.arange(n, device=device)
        # distance to each border clipped at R is what the response depends on
        return m, torch.where(p < total, p, torch.where(p >= n - total, p - (n - m), torch.full_like(p, total)))

    sh, row_map = small(height)
    sw, col_map = small(width)
    tile = max(sh, sw)
    rows = _axis_plan(sh, tile, radii, padding_mode, device)
    cols = _axis_plan(sw, tile, radii, padding_mode, device)
    # every class, one item each: built directly (no device sync)
    zeros = torch.zeros(num_classes, dtype=torch.int64, device=device)
    classes = torch.arange(num_classes, device=device)
    plan = _StackPlan(rows, cols, 1, num_classes, zeros, zeros.clone(), zeros.clone(), classes,
                      torch.arange(num_classes + 1, device=device), [(c, c, c + 1) for c in range(num_classes)],
                      classes.clone())
    return plan, row_map, col_map


# ---------------------------------------------------------------------------------------------
# Engine: gathers, per-item convs, activations; explicit backward.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemConv:
    """A backend's per-item conv (valid, class-selected weights; items sorted by class).

    forward(inp [P, I, Hi, Wi], weight [K, O, I, k, k], bias [K, O], plan) -> [P, O, Hi-k+1, Wi-k+1] (inp's dtype)
    backward(grad [P, O, Ho, Wo] (any float dtype), inp, weight, plan, need_input)
        -> (d_inp in inp's dtype or None, dweight, dbias in the accumulation dtype)
    ``native``: input dtypes the items are computed in as they are (fp16/bf16 windows and weights with fp32
    accumulation); any other dtype is computed in its accumulation dtype (fp32, fp64).
    """
    forward: Callable
    backward: Callable
    native: tuple = ()


def _window_index(plan: _StackPlan, layer: int, src_rows: int, src_cols: int, lead: torch.Tensor) -> torch.Tensor:
    """Flat indices [P, Lr, Lc] of layer ``layer``'s padded input into a source laid out as
    [lead, src_rows + 1, src_cols + 1] (the extra row/column is the zero sentinel)."""
    rmap = plan.rows.maps[layer][plan.item_row]
    cmap = plan.cols.maps[layer][plan.item_col]
    return (lead[:, None, None] * (src_rows + 1) + rmap[:, :, None]) * (src_cols + 1) + cmap[:, None, :]


def _to_sentinel_rows(t: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] -> channels-last rows [N*(h+1)*(w+1), C] with a zero row/column appended."""
    return F.pad(t.permute(0, 2, 3, 1), (0, 0, 0, 1, 0, 1)).reshape(-1, t.shape[1])


def _from_sentinel_rows(rows: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``_to_sentinel_rows`` (drops the sentinel row/column): -> [n, C, h, w]."""
    return rows.view(n, h + 1, w + 1, -1)[:, :h, :w].permute(0, 3, 1, 2)


def _gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows [N, C], index [P, Lr, Lc] -> [P, C, Lr, Lc] (channels-last memory)."""
    p, lr, lc = index.shape
    return rows.index_select(0, index.reshape(-1)).view(p, lr, lc, -1).permute(0, 3, 1, 2)


def _scatter(grad: torch.Tensor, index: torch.Tensor, num_rows: int, dtype: torch.dtype) -> torch.Tensor:
    """Transpose of ``_gather``: grad [P, C, Lr, Lc] summed into [num_rows, C] of ``dtype`` (the accumulation
    dtype: half-precision windows overlap, their sums are not rounded to half)."""
    src = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1]).to(dtype)
    return src.new_zeros(num_rows, grad.shape[1]).index_add_(0, index.reshape(-1), src)


def _activate(z: torch.Tensor, last: bool, negative_slope: float, final_activation: str | None) -> torch.Tensor:
    if not last:
        return F.leaky_relu(z, negative_slope, inplace=True)
    return torch.tanh_(z) if final_activation == "tanh" else z


def _activation_grad(grad: torch.Tensor, h: torch.Tensor, last: bool, negative_slope: float,
                     final_activation: str | None) -> torch.Tensor:
    # From the output: leaky_relu with slope >= 0 keeps the sign, tanh' = 1 - tanh^2.
    if not last:
        return torch.ops.aten.leaky_relu_backward(grad, h, negative_slope, negative_slope > 0)
    return torch.ops.aten.tanh_backward(grad, h) if final_activation == "tanh" else grad


def _input_index(plan: _StackPlan, labels: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
    """Layer 1's gather index into the image rows (``_to_sentinel_rows(x)``), with pixels of other classes
    redirected to a zero sentinel row: the masking x * (labels == c) happens in the gather."""
    index = _window_index(plan, 0, height, width, plan.item_batch)
    if labels is None:
        return index
    lab = F.pad(labels.long(), (0, 1, 0, 1), value=-1).reshape(-1)
    sentinel = height * (width + 1) + width                   # image 0, row H, column W: zero
    return torch.where(lab[index] == plan.item_class[:, None, None], index, sentinel)


def _run_forward(plan: _StackPlan, x: torch.Tensor, labels: torch.Tensor | None, weights, biases, conv: ItemConv,
                 negative_slope: float, final_activation: str | None):
    """Items' layer inputs and outputs: lists inp[l] [P, I_l, ., .] and out[l] [P, O_l, ., .].

    x [B, C, H, W] in the compute dtype; labels [B, H, W] (None: x is all zero, no mask needed)."""
    batch, _, height, width = x.shape
    inp = _gather(_to_sentinel_rows(x), _input_index(plan, labels, height, width))
    inputs, outputs = [], []
    last = len(weights) - 1
    for layer, (weight, bias) in enumerate(zip(weights, biases)):
        if layer > 0:
            prev = outputs[-1]
            index = _window_index(plan, layer, prev.shape[2], prev.shape[3],
                                  torch.arange(plan.num_items, device=x.device))
            inp = _gather(_to_sentinel_rows(prev), index)
        inputs.append(inp)
        outputs.append(_activate(conv.forward(inp, weight, bias, plan), layer == last, negative_slope,
                                 final_activation))
    return inputs, outputs


def _run_backward(plan: _StackPlan, grad_last: torch.Tensor, x_shape, labels: torch.Tensor | None, inputs, outputs,
                  weights, conv: ItemConv, negative_slope: float, final_activation: str | None, need_input: bool):
    """grad_last [P, O_L, ., .] (accumulation dtype) -> (dx [B, C, H, W] or None, [dweight_l], [dbias_l]), all in
    grad_last's dtype but the weight gradients (the backend's accumulation dtype)."""
    dweights, dbiases = [None] * len(weights), [None] * len(weights)
    grad = grad_last
    last = len(weights) - 1
    dx = None
    for layer in range(last, -1, -1):
        gz = _activation_grad(grad, outputs[layer].to(grad.dtype), layer == last, negative_slope, final_activation)
        want_input = layer > 0 or need_input
        d_inp, dweights[layer], dbiases[layer] = conv.backward(gz, inputs[layer], weights[layer], plan, want_input)
        if layer > 0:
            prev = outputs[layer - 1]
            n, _, h, w = prev.shape
            index = _window_index(plan, layer, h, w, torch.arange(plan.num_items, device=gz.device))
            grad = _from_sentinel_rows(_scatter(d_inp, index, n * (h + 1) * (w + 1), grad.dtype), n, h, w)
        elif need_input:
            batch, _, height, width = x_shape
            index = _input_index(plan, labels, height, width)
            dx = _from_sentinel_rows(_scatter(d_inp, index, batch * (height + 1) * (width + 1), grad.dtype),
                                     batch, height, width)
    return dx, dweights, dbiases


def _output_index(plan: _StackPlan, height: int, width: int, trash: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Destination of each item's final-window pixel in an output viewed as [B*K + 1, O, H*W]:
    (row [P, 1, S], pixel [P, 1, S]) with S = window pixels; pixels the item does not own go to row ``trash``."""
    rows, cols = plan.rows, plan.cols
    owned = rows.owned[plan.item_row][:, :, None] & cols.owned[plan.item_col][:, None, :]
    pixel = rows.out_pos[plan.item_row][:, :, None] * width + cols.out_pos[plan.item_col][:, None, :]
    dest = (plan.item_batch * plan.num_classes + plan.item_class)[:, None, None].expand_as(owned)
    dest = torch.where(owned, dest, trash)
    return dest.reshape(plan.num_items, 1, -1), pixel.reshape(plan.num_items, 1, -1)


@dataclass
class _Problem:
    """Everything both directions need: x and the items' weights in the compute dtype (fp16/bf16 where the
    backend computes them natively, else the accumulation dtype), the background's weights in ``acc``."""
    x: torch.Tensor
    labels: torch.Tensor
    weights: list
    biases: list
    acc: torch.dtype
    weights_acc: list
    biases_acc: list
    plan: _StackPlan
    bg_plan: _StackPlan
    bg_row_map: torch.Tensor
    bg_col_map: torch.Tensor
    padding_mode: str
    negative_slope: float
    final_activation: Optional[str]


def _problem(x, labels, weights, biases, padding_mode, negative_slope, final_activation, tile,
             native: tuple = ()) -> _Problem:
    acc = accumulator_dtype(x.dtype)
    compute = x.dtype if x.dtype in native else acc
    kernel_sizes = [w.shape[-1] for w in weights]
    num_classes = weights[0].shape[0]
    batch, channels, height, width = x.shape
    plan = plan_class_stack(labels, num_classes, kernel_sizes, padding_mode, tile)
    bg_plan, row_map, col_map = _background_plan(num_classes, height, width, [k // 2 for k in kernel_sizes],
                                                 padding_mode, x.device)
    return _Problem(x.to(compute), labels, [w.to(compute) for w in weights], [b.to(compute) for b in biases], acc,
                    [w.to(acc) for w in weights], [b.to(acc) for b in biases], plan, bg_plan, row_map, col_map,
                    padding_mode, negative_slope, final_activation)


def _background_forward(prob: _Problem, conv: ItemConv):
    bg = prob.bg_plan
    zeros = prob.x.new_zeros(1, prob.x.shape[1], bg.rows.n, bg.cols.n, dtype=prob.acc)
    return _run_forward(bg, zeros, None, prob.weights_acc, prob.biases_acc, conv, prob.negative_slope,
                        prob.final_activation)


def class_stack_forward_engine(prob: _Problem, conv: ItemConv) -> torch.Tensor:
    """The stacks' output [B, K, O_L, H, W] in the compute dtype."""
    batch, _, height, width = prob.x.shape
    num_classes = prob.plan.num_classes
    _, bg_out = _background_forward(prob, conv)
    small = bg_out[-1]                                       # [K, O, h', w'], items are the classes in order
    out_ch = small.shape[1]
    background = small[:, :, prob.bg_row_map][:, :, :, prob.bg_col_map]          # [K, O, H, W]
    out = prob.x.new_empty(batch * num_classes + 1, out_ch, height * width)
    out[:-1].view(batch, num_classes, out_ch, height * width).copy_(
        background.reshape(1, num_classes, out_ch, -1).expand(batch, -1, -1, -1))
    if prob.plan.num_items:
        _, item_out = _run_forward(prob.plan, prob.x, prob.labels, prob.weights, prob.biases, conv,
                                   prob.negative_slope, prob.final_activation)
        dest, pixel = _output_index(prob.plan, height, width, batch * num_classes)
        channel = torch.arange(out_ch, device=out.device).view(1, -1, 1)
        out.index_put_((dest, channel, pixel), item_out[-1].reshape(prob.plan.num_items, out_ch, -1))
    return out[:-1].view(batch, num_classes, out_ch, height, width)


def class_stack_backward_engine(prob: _Problem, grad_out: torch.Tensor, conv: ItemConv):
    """(dx [B, C, H, W], [dweight_l], [dbias_l]) in the accumulation dtype, for grad_out [B, K, O_L, H, W]."""
    batch, channels, height, width = prob.x.shape
    num_classes = prob.plan.num_classes
    out_ch = grad_out.shape[2]
    grad = grad_out.to(prob.acc).reshape(batch * num_classes, out_ch, height * width)
    channel = torch.arange(out_ch, device=grad.device).view(1, -1, 1)
    # Pixels not overwritten by an item keep the background: their gradient goes to it.
    grad_bg = grad.view(batch, num_classes, out_ch, height * width).sum(0)
    dweights = [torch.zeros_like(w) for w in prob.weights_acc]
    dbiases = [torch.zeros_like(b) for b in prob.biases_acc]
    dx = prob.x.new_zeros(prob.x.shape, dtype=prob.acc)
    if prob.plan.num_items:
        inputs, outputs = _run_forward(prob.plan, prob.x, prob.labels, prob.weights, prob.biases, conv,
                                       prob.negative_slope, prob.final_activation)
        dest, pixel = _output_index(prob.plan, height, width, batch * num_classes)
        grad_ext = torch.cat([grad, grad.new_zeros(1, out_ch, height * width)])
        grad_items = grad_ext[dest, channel, pixel]                                # [P, O, S], 0 where not owned
        item_class = torch.where(dest < batch * num_classes, dest % num_classes, num_classes)
        grad_bg = torch.cat([grad_bg, grad_bg.new_zeros(1, out_ch, height * width)])
        grad_bg.index_put_((item_class, channel, pixel), -grad_items, accumulate=True)
        grad_bg = grad_bg[:-1]
        dx, dws, dbs = _run_backward(prob.plan, grad_items.view_as(outputs[-1]), prob.x.shape, prob.labels, inputs,
                                     outputs, prob.weights, conv, prob.negative_slope, prob.final_activation, True)
        for acc_list, part in ((dweights, dws), (dbiases, dbs)):
            for total, value in zip(acc_list, part):
                total += value
    # Fold the background's per-pixel gradient onto the small image it was read from.
    bg = prob.bg_plan
    grad_bg = grad_bg.view(num_classes, out_ch, height, width)
    grad_small = grad_bg.new_zeros(num_classes, out_ch, bg.rows.n, width).index_add_(2, prob.bg_row_map, grad_bg)
    grad_small = grad_small.new_zeros(num_classes, out_ch, bg.rows.n, bg.cols.n).index_add_(
        3, prob.bg_col_map, grad_small)
    bg_inputs, bg_outputs = _background_forward(prob, conv)
    _, dws, dbs = _run_backward(bg, grad_small, None, None, bg_inputs, bg_outputs, prob.weights_acc, conv,
                                prob.negative_slope, prob.final_activation, False)
    for acc_list, part in ((dweights, dws), (dbiases, dbs)):
        for total, value in zip(acc_list, part):
            total += value
    return dx, dweights, dbiases


# ---------------------------------------------------------------------------------------------
# CPU item conv: one conv per present class over its (contiguous) items.
# ---------------------------------------------------------------------------------------------


def _item_conv_forward_cpu(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, plan: _StackPlan) -> torch.Tensor:
    k = weight.shape[-1]
    # channels-last like the gathered input, so the conv results are stored without a layout change
    out = torch.empty(inp.shape[0], weight.shape[1], inp.shape[2] - k + 1, inp.shape[3] - k + 1, dtype=inp.dtype,
                      device=inp.device, memory_format=torch.channels_last)
    for c, lo, hi in plan.segments:
        out[lo:hi] = F.conv2d(inp[lo:hi], weight[c], bias[c])
    return out


def _item_conv_backward_cpu(grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, plan: _StackPlan,
                            need_input: bool):
    d_inp = torch.empty_like(inp) if need_input else None
    dweight = torch.zeros_like(weight)
    dbias = weight.new_zeros(weight.shape[:2])
    for c, lo, hi in plan.segments:
        gi, gw, gb = torch.ops.aten.convolution_backward(
            grad[lo:hi], inp[lo:hi], weight[c], [weight.shape[1]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [need_input, True, True])
        if need_input:
            d_inp[lo:hi] = gi
        dweight[c], dbias[c] = gw, gb
    return d_inp, dweight, dbias


CPU_ITEM_CONV = ItemConv(_item_conv_forward_cpu, _item_conv_backward_cpu)


def _engine_forward(conv_of: Callable[[], ItemConv], x, labels, weights, biases, padding_mode, negative_slope,
                    final_activation, tile):
    conv = conv_of()
    prob = _problem(x, labels, weights, biases, padding_mode, negative_slope, final_activation, tile, conv.native)
    return class_stack_forward_engine(prob, conv).to(x.dtype)


def _engine_backward(conv_of: Callable[[], ItemConv], grad_out, x, labels, weights, biases, padding_mode,
                     negative_slope, final_activation, tile):
    conv = conv_of()
    prob = _problem(x, labels, weights, biases, padding_mode, negative_slope, final_activation, tile, conv.native)
    dx, dws, dbs = class_stack_backward_engine(prob, grad_out, conv)
    return (dx.to(x.dtype), [d.to(w.dtype) for d, w in zip(dws, weights)],
            [d.to(b.dtype) for d, b in zip(dbs, biases)])


def _triton_item_conv() -> ItemConv:
    from semgan_fast.kernels import class_stack as kernels
    from ._library import triton_interpreting
    # bf16 math is wrong in the Triton interpreter: there bf16 runs in fp32.
    native = (torch.float16,) if triton_interpreting() else (torch.float16, torch.bfloat16)
    return ItemConv(kernels.item_conv_forward_triton, kernels.item_conv_backward_triton, native)


class_stack_forward_cpu = partial(_engine_forward, lambda: CPU_ITEM_CONV)
class_stack_backward_cpu = partial(_engine_backward, lambda: CPU_ITEM_CONV)
class_stack_forward_triton = partial(_engine_forward, _triton_item_conv)
class_stack_backward_triton = partial(_engine_backward, _triton_item_conv)


# ---------------------------------------------------------------------------------------------
# torch.library registration.
# ---------------------------------------------------------------------------------------------

_FAST_IMPLS = {
    "cpu": FastImpl(__name__, "class_stack_forward_cpu", "class_stack_backward_cpu"),
    "triton": FastImpl(__name__, "class_stack_forward_triton", "class_stack_backward_triton"),
}


def _fast_impl(backend: str) -> FastImpl:
    if backend not in _FAST_IMPLS:
        raise ValueError(f"backend must be one of {sorted(_FAST_IMPLS)} inside {NAMESPACE}::class_stack, got {backend!r}")
    return _FAST_IMPLS[backend]


def _contiguous(tensors) -> list[torch.Tensor]:
    return [t.contiguous() for t in tensors]


@torch.library.custom_op(f"{NAMESPACE}::class_stack", mutates_args=())
def _class_stack_op(x: torch.Tensor, labels: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                    padding_mode: str, negative_slope: float, final_activation: Optional[str], tile: int,
                    backend: str) -> torch.Tensor:
    forward, _ = _fast_impl(backend).load()
    return forward(x.contiguous(), labels.contiguous(), _contiguous(weights), _contiguous(biases), padding_mode,
                   negative_slope, final_activation, tile).contiguous()


@_class_stack_op.register_fake
def _class_stack_fake(x, labels, weights, biases, padding_mode, negative_slope, final_activation, tile, backend):
    batch, _, height, width = x.shape
    return x.new_empty((batch, weights[0].shape[0], weights[-1].shape[1], height, width))


@torch.library.custom_op(f"{NAMESPACE}::class_stack_backward", mutates_args=())
def _class_stack_backward_op(grad_out: torch.Tensor, x: torch.Tensor, labels: torch.Tensor,
                             weights: list[torch.Tensor], biases: list[torch.Tensor], padding_mode: str,
                             negative_slope: float, final_activation: Optional[str], tile: int,
                             backend: str) -> list[torch.Tensor]:
    _, backward = _fast_impl(backend).load()
    dx, dws, dbs = backward(grad_out.contiguous(), x.contiguous(), labels.contiguous(), _contiguous(weights),
                            _contiguous(biases), padding_mode, negative_slope, final_activation, tile)
    # contiguous, as the fake kernel says (dx is a strided view into the sentinel-padded gradient rows; Inductor
    # asserts the fake strides on a custom op's outputs)
    return [t.contiguous() for t in (dx, *dws, *dbs)]  # flat: the schema has no nested lists


@_class_stack_backward_op.register_fake
def _class_stack_backward_fake(grad_out, x, labels, weights, biases, padding_mode, negative_slope, final_activation,
                               tile, backend):
    return [x.new_empty(x.shape), *[w.new_empty(w.shape) for w in weights], *[b.new_empty(b.shape) for b in biases]]


def _class_stack_setup_context(ctx, inputs, output):
    x, labels, weights, biases, padding_mode, negative_slope, final_activation, tile, backend = inputs
    ctx.save_for_backward(x, labels, *weights, *biases)
    ctx.num_layers = len(weights)
    ctx.args = (padding_mode, negative_slope, final_activation, tile, backend)


def _class_stack_autograd(ctx, grad_out):
    x, labels, *params = ctx.saved_tensors
    layers = ctx.num_layers
    grads = torch.ops.semgan.class_stack_backward(grad_out, x, labels, params[:layers], params[layers:], *ctx.args)
    return grads[0], None, list(grads[1:1 + layers]), list(grads[1 + layers:]), None, None, None, None, None


_class_stack_op.register_autograd(_class_stack_autograd, setup_context=_class_stack_setup_context)


def _class_stack_via_op(x, labels, weights, biases, padding_mode, negative_slope, final_activation, tile, *,
                        backend: str) -> torch.Tensor:
    return torch.ops.semgan.class_stack(x, labels, list(weights), list(biases), padding_mode, float(negative_slope),
                                        final_activation, int(tile), backend)


def _reference_entry(x, labels, weights, biases, padding_mode, negative_slope, final_activation, tile):
    return class_stack_reference(x, labels, weights, biases, padding_mode, negative_slope, final_activation)


CLASS_STACK_BACKENDS = BackendTable("class_stack")
CLASS_STACK_BACKENDS.register(Backend("reference", _reference_entry))
# cpu only takes CPU tensors: on CUDA tensors auto means triton, on CPU it never picks the interpreter.
CLASS_STACK_BACKENDS.register(Backend("cpu", partial(_class_stack_via_op, backend="cpu"), cpu_available), auto_rank=0)
CLASS_STACK_BACKENDS.register(Backend("triton", partial(_class_stack_via_op, backend="triton"), triton_available),
                              auto_rank=1)


def validate_class_stack(x, labels, weights, biases, padding_mode, negative_slope, final_activation, tile,
                         check_values=False) -> None:
    check_float("x", x, 4)
    check_labels("labels", labels, 3)
    if not isinstance(weights, (list, tuple)) or not weights:
        raise ValueError("weights must be a non-empty list of per-layer tensors [K, O_l, I_l, k_l, k_l]")
    if not isinstance(biases, (list, tuple)) or len(biases) != len(weights):
        raise ValueError(f"biases must be a list of {len(weights)} tensors [K, O_l] (one per layer), "
                         f"got {type(biases).__name__} of length {len(biases) if isinstance(biases, (list, tuple)) else '-'}")
    batch, channels, height, width = x.shape
    if height < 1 or width < 1:
        raise ValueError(f"x must have H, W >= 1 (B may be 0), got shape {tuple(x.shape)}")
    if labels.shape != (batch, height, width):
        raise ValueError(f"labels must have shape [B, H, W] = {[batch, height, width]} matching x, "
                         f"got {list(labels.shape)}")
    check_same_device("x", x, labels=labels)
    in_ch, num_classes = channels, None
    for layer, (weight, bias) in enumerate(zip(weights, biases)):
        name, bname = f"weights[{layer}]", f"biases[{layer}]"
        check_float(name, weight, 5)
        check_float(bname, bias, 2)
        check_same_device("x", x, **{name: weight, bname: bias})
        check_same_dtype("x", x, **{name: weight, bname: bias})
        num_classes = weight.shape[0] if num_classes is None else num_classes
        check_dim(name, weight, 0, num_classes, "weights[0].shape[0] (number of classes K)")
        check_dim(name, weight, 2, in_ch, "the previous layer's output channels" if layer else "x.shape[1]")
        kh, kw = weight.shape[-2:]
        if kh != kw or kh % 2 == 0:
            raise ValueError(f"{name} must have a square, odd kernel [K, O, I, k, k], got shape {tuple(weight.shape)}")
        if padding_mode == "reflect" and (kh // 2 >= height or kh // 2 >= width):
            raise ValueError(f"padding_mode='reflect' needs H and W > k//2 = {kh // 2} ({name}), "
                             f"got x of shape {tuple(x.shape)}")
        if tuple(bias.shape) != tuple(weight.shape[:2]):
            raise ValueError(f"{bname} must have shape [K, O] = {list(weight.shape[:2])}, got {list(bias.shape)}")
        in_ch = weight.shape[1]
    if num_classes < 1:
        raise ValueError("weights[0].shape[0] (number of classes K) must be >= 1")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if final_activation not in FINAL_ACTIVATIONS:
        raise ValueError(f"final_activation must be one of {FINAL_ACTIVATIONS}, got {final_activation!r}")
    if not negative_slope >= 0:
        raise ValueError(f"negative_slope must be >= 0 (the backward reads the activation's sign), got {negative_slope}")
    if not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive int, got {tile!r}")
    if check_values:
        check_label_range("labels", labels, num_classes)
        check_finite("x", x)


def class_stack(x: torch.Tensor, labels: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                padding_mode: str = "reflect", negative_slope: float = 0.2, final_activation: str | None = "tanh",
                tile: int = DEFAULT_TILE, backend: str = "auto", check_values: bool = False) -> torch.Tensor:
    """Per-class sub-generator stacks on the class-filtered features, all classes at once.

    Args:
        x: features [B, C, H, W], float16/bfloat16/float32/float64.
        labels: class map [B, H, W], any integer dtype; values outside [0, K) belong to no class.
        weights: L >= 1 per-layer weights [K, O_l, I_l, k_l, k_l] (I_1 = C, I_l = O_{l-1}, k_l odd), x's dtype.
        biases: L per-layer biases [K, O_l].
        padding_mode: "reflect" (ECGAN, LGGAN) or "zeros"; every layer pads k_l // 2, keeping H and W.
        negative_slope: LeakyReLU slope between layers (>= 0; 0 is ReLU).
        final_activation: "tanh" or None after the last layer.
        tile: output tile side of the sparse engine (work is per present (tile, class) pair).
        backend: "auto", "reference", "cpu" or "triton" (see ``CLASS_STACK_BACKENDS``).
        check_values: also verify the label range and finiteness of x (synchronises with the device).

    Returns:
        [B, K, O_L, H, W] in x's dtype: ``out[:, c]`` = class c's stack applied to ``x * (labels == c)``.
    """
    weights, biases = list(weights), list(biases)
    validate_class_stack(x, labels, weights, biases, padding_mode, negative_slope, final_activation, tile, check_values)
    impl = CLASS_STACK_BACKENDS.resolve(backend, x.device)
    return impl(x, labels, weights, biases, padding_mode, negative_slope, final_activation, tile)


def class_stack_work(labels: torch.Tensor, num_classes: int, kernel_sizes: Sequence[int], padding_mode: str = "reflect",
                     tile: int = DEFAULT_TILE) -> dict:
    """How much the sparse engine computes for ``labels``: present (tile, class) items vs K x tiles, and the
    output pixels its layer windows cover relative to a dense per-class evaluation (for benchmarks)."""
    plan = plan_class_stack(labels, num_classes, kernel_sizes, padding_mode, tile)
    batch, height, width = labels.shape
    tiles = batch * plan.rows.tiles * plan.cols.tiles
    layers = len(kernel_sizes)
    window_pixels = sum(plan.rows.sizes[l] * plan.cols.sizes[l] for l in range(1, layers + 1))
    return {"items": plan.num_items, "tiles": tiles, "dense_items": tiles * num_classes,
            "item_fraction": plan.num_items / max(tiles * num_classes, 1),
            "pixel_work_vs_dense": plan.num_items * window_pixels / max(batch * num_classes * height * width * layers, 1)}
