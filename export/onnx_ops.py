"""ONNX side of the class ops: custom-domain schemas, exporter translations and NumPy reference kernels.

Deploy-graph nodes (domain ``semgan``, opset version 1), bound by TensorRT's ONNX parser to the
IPluginV3 creators of ``csrc/trt`` by name = op_type, ``plugin_version`` and ``plugin_namespace``:

``ClassConv(x, labels, weight[, bias]) -> y``
    x [B,C,H,W] T, labels [B,H,W] int32, weight [K,O,C,k,k] T, bias [K,O] T (present iff has_bias=1)
    -> y [B,K,O,H,W] T; y[:, i] = act(conv(pad(x * (labels == i)), weight[i]) + bias[i]), pad = k // 2.
    Attributes: padding_mode ("reflect" | "zeros"), activation ("tanh" | "none"), has_bias (0/1),
    plugin_namespace, plugin_version.
``OneHotConv(labels[, extra], weight[, bias]) -> y``
    labels [B,H,W] int32, extra [B,E,H,W] T (present iff has_extra=1), weight [O,K+E,k,k] T,
    bias [O] T (present iff has_bias=1) -> y [B,O,Ho,Wo] T, Ho = (H + 2 padding - k) // stride + 1;
    y = conv2d(pad(cat([one_hot(labels, K), extra])), weight, stride) + bias.
    Attributes: stride, padding, padding_mode, has_extra, has_bias, plugin_namespace, plugin_version.
T is float or float16. Labels outside [0, K) select no class (zero contribution), as in the PyTorch ops.

``register_schemas()`` registers ``onnx.defs.OpSchema`` entries so ``onnx.checker`` (full_check, shape
inference) accepts the nodes; ``TRANSLATIONS`` maps the torch custom ops to these nodes for
``torch.onnx.export(custom_translation_table=...)``; ``ClassConvOp`` / ``OneHotConvOp`` are
``onnx.reference`` kernels (NumPy) for ``ReferenceEvaluator(model, new_ops=REFERENCE_OPS)``.
"""
from __future__ import annotations

import numpy as np

DOMAIN = "semgan"
OPSET_VERSION = 1
PLUGIN_NAMESPACE = "semgan"
PLUGIN_VERSION = "1"
ACTIVATIONS = ("none", "tanh")
PADDING_MODES = ("reflect", "zeros")


# ----------------------------------------------------------------------------------------------
# Schemas (onnx.checker)
# ----------------------------------------------------------------------------------------------

def _schemas():
    from onnx import defs

    param = defs.OpSchema.FormalParameter
    optional = defs.OpSchema.FormalParameterOption.Optional
    attr = defs.OpSchema.Attribute
    string, integer = defs.OpSchema.AttrType.STRING, defs.OpSchema.AttrType.INT
    types = [("T", ["tensor(float)", "tensor(float16)"], "floating-point tensors"),
             ("L", ["tensor(int32)"], "class labels")]
    common = [attr("plugin_namespace", string, "TensorRT plugin namespace", required=False),
              attr("plugin_version", string, "TensorRT plugin version", required=False),
              attr("padding_mode", string, "reflect or zeros", required=False),
              attr("has_bias", integer, "1 if the bias input is present", required=False)]
    class_conv = defs.OpSchema(
        "ClassConv", DOMAIN, OPSET_VERSION,
        doc="Per-class masked convolution (LGGAN Eq. 1 + class generators); see semgan_fast.export.onnx_ops.",
        inputs=[param("x", "T", "features [B,C,H,W]"), param("labels", "L", "class map [B,H,W]"),
                param("weight", "T", "per-class weights [K,O,C,k,k]"),
                param("bias", "T", "per-class bias [K,O]", param_option=optional)],
        outputs=[param("y", "T", "per-class outputs [B,K,O,H,W]")],
        type_constraints=types,
        attributes=common + [attr("activation", string, "none or tanh", required=False)])
    onehot_conv = defs.OpSchema(
        "OneHotConv", DOMAIN, OPSET_VERSION,
        doc="Convolution of cat([one_hot(labels), extra]) without building the one-hot map.",
        # One heterogeneous variadic input (labels int32, then float tensors): optional inputs in
        # the middle (extra) are left out rather than passed as empty names, which keeps the plugin's
        # input list dense; has_extra / has_bias say which are present.
        inputs=[param("inputs", "V", "labels [B,H,W] int32, extra [B,E,H,W] (if has_extra), weight [O,K+E,k,k], "
                      "bias [O] (if has_bias)", param_option=defs.OpSchema.FormalParameterOption.Variadic,
                      is_homogeneous=False, min_arity=2)],
        outputs=[param("y", "T", "[B,O,Ho,Wo]")],
        type_constraints=types + [("V", ["tensor(float)", "tensor(float16)", "tensor(int32)"], "inputs")],
        attributes=common + [attr("stride", integer, "1 or 2", required=False),
                             attr("padding", integer, "padding on every side", required=False),
                             attr("has_extra", integer, "1 if the extra input is present", required=False)])
    class_conv.set_type_and_shape_inference_function(_infer_class_conv)
    onehot_conv.set_type_and_shape_inference_function(_infer_onehot_conv)
    return [class_conv, onehot_conv]


def _dims(type_proto) -> list:
    shape = type_proto.tensor_type.shape
    return list(shape.dim) if type_proto.tensor_type.HasField("shape") else None


def _output_type(elem_type: int, dims: list | None):
    """TypeProto of a tensor; dims: list of onnx Dimension protos / ints / None (unknown), or None (rank unknown)."""
    from onnx import TypeProto

    out = TypeProto()
    out.tensor_type.elem_type = elem_type
    if dims is not None:
        shape = out.tensor_type.shape
        shape.SetInParent()
        for d in dims:
            new = shape.dim.add()
            if isinstance(d, int):
                new.dim_value = d
            elif d is not None:
                new.CopyFrom(d)
    return out


def _int_attr(ctx, name: str, default: int) -> int:
    attr = ctx.get_attribute(name)
    return default if attr is None else int(attr.i)


def _infer_class_conv(ctx) -> None:
    """y [B,K,O,H,W] (x's batch/spatial dims, weight's K and O), weight's element type."""
    x_dims, w_type = _dims(ctx.get_input_type(0)), ctx.get_input_type(2)
    w_dims = _dims(w_type)
    dims = None
    if x_dims is not None and w_dims is not None and len(x_dims) == 4 and len(w_dims) == 5:
        dims = [x_dims[0], w_dims[0], w_dims[1], x_dims[2], x_dims[3]]
    ctx.set_output_type(0, _output_type(w_type.tensor_type.elem_type, dims))


def _infer_onehot_conv(ctx) -> None:
    """y [B,O,Ho,Wo]: Ho = (H + 2p - k) // s + 1 when H is known; H itself when the conv keeps the
    size (s = 1, 2p = k - 1); unknown otherwise."""
    w_index = 2 if _int_attr(ctx, "has_extra", 0) else 1
    w_type = ctx.get_input_type(w_index)
    lab_dims, w_dims = _dims(ctx.get_input_type(0)), _dims(w_type)
    dims = None
    if lab_dims is not None and w_dims is not None and len(lab_dims) == 3 and len(w_dims) == 4:
        stride, pad = _int_attr(ctx, "stride", 1), _int_attr(ctx, "padding", 0)
        kernel = w_dims[2].dim_value if w_dims[2].HasField("dim_value") else None
        spatial = []
        for d in lab_dims[1:]:
            if kernel is not None and d.HasField("dim_value"):
                spatial.append((d.dim_value + 2 * pad - kernel) // stride + 1)
            elif kernel is not None and stride == 1 and 2 * pad == kernel - 1:
                spatial.append(d)
            else:
                spatial.append(None)
        dims = [lab_dims[0], w_dims[0]] + spatial
    ctx.set_output_type(0, _output_type(w_type.tensor_type.elem_type, dims))


def register_schemas() -> None:
    """Registers the ClassConv / OneHotConv schemas with onnx (idempotent)."""
    from onnx import defs

    for schema in _schemas():
        if not defs.has(schema.name, schema.domain):
            defs.register_schema(schema)


# ----------------------------------------------------------------------------------------------
# torch.onnx translations (deploy graph)
# ----------------------------------------------------------------------------------------------

def _opset():
    import onnxscript

    return onnxscript.values.Opset(DOMAIN, OPSET_VERSION)


def _int32(op_labels):
    import onnxscript

    # Labels reach the plugin as int32 (TensorRT's native index type); no-op when already int32.
    return onnxscript.opset18.Cast(op_labels, to=6)


def translate_class_conv(x, labels, weight, bias, padding_mode, activation, backend):
    """torch.ops.semgan.class_conv -> semgan::ClassConv (the backend argument is PyTorch-only)."""
    inputs = [x, _int32(labels), weight] + ([bias] if bias is not None else [])
    return _opset().ClassConv(*inputs, padding_mode=padding_mode, activation=activation or "none",
                              has_bias=int(bias is not None), plugin_namespace=PLUGIN_NAMESPACE,
                              plugin_version=PLUGIN_VERSION)


def translate_onehot_conv(labels, extra, weight, bias, stride, padding, padding_mode, backend):
    """torch.ops.semgan.onehot_conv -> semgan::OneHotConv."""
    inputs = [_int32(labels)] + ([extra] if extra is not None else []) + [weight] + \
        ([bias] if bias is not None else [])
    return _opset().OneHotConv(*inputs, stride=int(stride), padding=int(padding), padding_mode=padding_mode,
                               has_extra=int(extra is not None), has_bias=int(bias is not None),
                               plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)


def translate_class_stack(x, labels, weights, biases, padding_mode, negative_slope, final_activation, tile, backend):
    """torch.ops.semgan.class_stack -> semgan::ClassConv (layer 1, no activation) + per layer l >= 2:
    LeakyRelu, [B,K,I,H,W] -> [B,K*I,H,W], Pad (reflect / constant, k_l // 2), Conv with group=K over
    weights [K*O,I,k,k], -> [B,K,O,H,W]; Tanh last when final_activation="tanh".

    Exact: class c's stack reads only its own layer-1 output x * M_c conv'd (dense, as the ClassConv
    node gives it), so layers 2..L are independent per-class convolutions, i.e. one grouped conv.
    (``tile`` and ``backend`` steer the PyTorch engine only.) Weight reshapes read the initializers'
    shapes and are constant-folded by the exporter's optimiser."""
    import onnxscript

    op = onnxscript.opset18
    weights, biases = list(weights), list(biases)
    last = len(weights) - 1
    h = translate_class_conv(x, labels, weights[0], biases[0], padding_mode,
                             (final_activation if last == 0 else None), backend)
    mode = "reflect" if padding_mode == "reflect" else "constant"
    for layer in range(1, last + 1):
        weight, bias = weights[layer], biases[layer]
        h = op.LeakyRelu(h, alpha=float(negative_slope))
        # h [B, K, I, H, W]; weight [K, O, I, k, k]
        batch, classes, spatial = op.Shape(h, start=0, end=1), op.Shape(h, start=1, end=2), op.Shape(h, start=3)
        flat = op.Reshape(h, op.Concat(batch, op.Constant(value_ints=[-1]), spatial, axis=0))
        w_flat = op.Reshape(weight, op.Concat(op.Constant(value_ints=[-1]), op.Shape(weight, start=2), axis=0))
        pad = op.Div(op.Shape(weight, start=3, end=4), op.Constant(value_ints=[2]))   # k // 2 (odd k)
        zeros = op.Constant(value_ints=[0, 0])
        pads = op.Concat(zeros, pad, pad, zeros, pad, pad, axis=0)           # [0,0,p,p] begins, [0,0,p,p] ends
        padded = op.Pad(flat, pads, mode=mode)
        out = op.Conv(padded, w_flat, op.Reshape(bias, op.Constant(value_ints=[-1])), group=_static_dim(weight, 0))
        h = op.Reshape(out, op.Concat(batch, classes, op.Constant(value_ints=[-1]), spatial, axis=0))
    if last > 0 and final_activation == "tanh":
        h = op.Tanh(h)
    return h


def _static_dim(value, axis: int) -> int:
    """A static dimension of a graph value (the exporter's ir.Value carries the traced shape)."""
    dim = value.shape[axis]
    if not isinstance(dim, int):
        raise ValueError(f"class_stack export needs a static number of classes, got {dim!r}")
    return dim


def translation_table() -> dict:
    """custom_translation_table for torch.onnx.export (registers the schemas first)."""
    import torch

    import semgan_fast.ops  # noqa: F401  (registers torch.ops.semgan.*)

    register_schemas()
    return {torch.ops.semgan.class_conv.default: translate_class_conv,
            torch.ops.semgan.onehot_conv.default: translate_onehot_conv,
            torch.ops.semgan.class_stack.default: translate_class_stack}


# ----------------------------------------------------------------------------------------------
# NumPy reference implementations (for checking the deploy graph without TensorRT)
# ----------------------------------------------------------------------------------------------

def _pad_np(a: np.ndarray, pad: int, mode: str, value=0) -> np.ndarray:
    if pad == 0:
        return a
    width = [(0, 0)] * (a.ndim - 2) + [(pad, pad), (pad, pad)]
    if mode == "reflect":
        return np.pad(a, width, mode="reflect")
    return np.pad(a, width, mode="constant", constant_values=value)


def _conv_np(inp: np.ndarray, weight: np.ndarray, stride: int, acc) -> np.ndarray:
    """Valid cross-correlation: inp [B,C,Hp,Wp], weight [O,C,k,k] -> [B,O,Ho,Wo] in acc."""
    kernel = weight.shape[-1]
    win = np.lib.stride_tricks.sliding_window_view(inp, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("bchwij,ocij->bohw", win.astype(acc), weight.astype(acc), optimize=True)


def class_conv_numpy(x, labels, weight, bias=None, padding_mode="reflect", activation="none") -> np.ndarray:
    """ClassConv semantics (module docstring) in NumPy, accumulating in fp32 (fp64 for fp64 inputs)."""
    acc = np.float64 if x.dtype == np.float64 else np.float32
    num_classes, out_ch, _, kernel, _ = weight.shape
    pad = kernel // 2
    outs = []
    for c in range(num_classes):
        masked = x.astype(acc) * (labels == c)[:, None].astype(acc)
        y = _conv_np(_pad_np(masked, pad, padding_mode), weight[c], 1, acc)
        if bias is not None:
            y = y + bias[c].astype(acc)[None, :, None, None]
        outs.append(y)
    out = np.stack(outs, axis=1)
    if activation == "tanh":
        out = np.tanh(out)
    return out.astype(x.dtype)


def onehot_conv_numpy(labels, extra, weight, bias=None, stride=1, padding=0, padding_mode="zeros") -> np.ndarray:
    """OneHotConv semantics in NumPy by the gather formulation: tap (i, j) of output pixel p adds the
    weight column of the class under it (none for zero padding or out-of-range labels)."""
    acc = np.float64 if weight.dtype == np.float64 else np.float32
    out_ch, in_ch, kernel, _ = weight.shape
    n_extra = 0 if extra is None else extra.shape[1]
    num_classes = in_ch - n_extra
    lab = labels.astype(np.int64)
    lab = np.where((lab >= 0) & (lab < num_classes), lab, num_classes)      # K = "no class" column
    lab = _pad_np(lab, padding, padding_mode, value=num_classes)
    batch = labels.shape[0]
    ho = (labels.shape[1] + 2 * padding - kernel) // stride + 1
    wo = (labels.shape[2] + 2 * padding - kernel) // stride + 1
    table = np.zeros((kernel, kernel, num_classes + 1, out_ch), dtype=acc)
    table[:, :, :num_classes] = weight[:, :num_classes].astype(acc).transpose(2, 3, 1, 0)
    out = np.zeros((batch, ho, wo, out_ch), dtype=acc)
    for i in range(kernel):
        for j in range(kernel):
            cls = lab[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            out += table[i, j][cls]
    out = out.transpose(0, 3, 1, 2)
    if n_extra:
        out = out + _conv_np(_pad_np(extra.astype(acc), padding, padding_mode), weight[:, num_classes:], stride, acc)
    if bias is not None:
        out = out + bias.astype(acc)[None, :, None, None]
    return np.ascontiguousarray(out).astype(weight.dtype)


def _string(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def _reference_ops():
    from onnx.reference.op_run import OpRun

    class ClassConvOp(OpRun):
        op_domain = DOMAIN
        op_schema = None

        def _run(self, x, labels, weight, bias=None, padding_mode=None, activation=None, has_bias=None,
                 plugin_namespace=None, plugin_version=None):
            return (class_conv_numpy(x, labels, weight, bias, _string(padding_mode, "reflect"),
                                     _string(activation, "none")),)

    class OneHotConvOp(OpRun):
        op_domain = DOMAIN
        op_schema = None

        def _run(self, labels, *tensors, stride=None, padding=None, padding_mode=None, has_extra=None,
                 has_bias=None, plugin_namespace=None, plugin_version=None):
            tensors = list(tensors)
            extra = tensors.pop(0) if has_extra else None
            weight = tensors.pop(0)
            bias = tensors.pop(0) if has_bias else None
            return (onehot_conv_numpy(labels, extra, weight, bias, int(stride or 1), int(padding or 0),
                                      _string(padding_mode, "zeros")),)

    ClassConvOp.__name__, OneHotConvOp.__name__ = "ClassConv", "OneHotConv"
    return [ClassConvOp, OneHotConvOp]


def reference_evaluator(model):
    """``onnx.reference.ReferenceEvaluator`` that runs semgan::ClassConv / OneHotConv with NumPy."""
    from onnx.reference import ReferenceEvaluator

    register_schemas()
    return ReferenceEvaluator(model, new_ops=_reference_ops())
