"""``minidl.onnx.export(model, example_input, path)``: a model as an ONNX graph.

The graph comes from a traced forward: while ``model(example_input)`` runs
(in eval mode, under no_grad), every op (:class:`minidl.Function`) called
is recorded with its inputs and outputs, and each becomes one or a few
ONNX nodes, built with the ``onnx`` package's helpers. Parameters, buffers
and every other tensor that no recorded op produced become initializers.
Shapes are those of the example (``dynamic_batch=True`` leaves the first
dimension free).

Like any tracer, it sees the ops run for this input only: Python control
flow is frozen, and a value computed outside minidl's ops (a comparison
mask, ``argmax``, NumPy on ``.numpy()``) would be frozen as a constant.
So, when onnxruntime is installed, ``export`` checks the file: onnxruntime
and minidl must agree on the example and on a second, random input (and a
second batch size with ``dynamic_batch``); if not, it raises instead of
writing a model that computes something else. An op with no ONNX
translation raises :class:`ExportError` naming it.

Needs the ``onnx`` package (``pip install minidl[onnx]``).
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np

from . import backend
from .fileio import atomic_write_bytes
from .tensor import Function, Tensor, as_array, no_grad

OPSET = 17


class ExportError(RuntimeError):
    """The model cannot be written as ONNX (an op without a translation, a
    training-only op, or a graph that does not reproduce the model)."""


# ------------------------------------------------------------------ tracing

@contextlib.contextmanager
def _recording(calls):
    """Record ``(function, input tensors, output tensors)`` of every op called; the
    function as its constructor left it (forward may drop settings it no longer needs,
    such as batch_norm's running statistics)."""
    original = Function.__call__

    def call(self, *inputs):
        tensors = [x if isinstance(x, Tensor) else Tensor._wrap(as_array(x)) for x in inputs]
        settings = copy.copy(self)
        out = original(self, *tensors)
        calls.append((settings, tensors, list(out) if isinstance(out, tuple) else [out]))
        return out

    Function.__call__ = call
    try:
        yield calls
    finally:
        Function.__call__ = original


def _flatten_outputs(out):
    """``{name: tensor}`` of a model's result: a Tensor ('output'), a tuple of them
    ('output0', ...) or a dict of them (its keys; None values left out)."""
    if isinstance(out, Tensor):
        return {"output": out}
    if isinstance(out, (tuple, list)) and all(isinstance(o, Tensor) for o in out):
        return {f"output{i}": o for i, o in enumerate(out)}
    if isinstance(out, dict) and all(isinstance(o, Tensor) or o is None for o in out.values()):
        return {str(k): o for k, o in out.items() if o is not None}
    raise ExportError(f"export: the model must return a Tensor, or a tuple or dict of Tensors, "
                      f"got {type(out).__name__}")


# ------------------------------------------------------------------ graph building

class _Graph:
    """Names for traced tensors, initializers for constants, and the nodes."""

    def __init__(self, helper, numpy_helper, names):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []
        self.names = {}            # id(tensor) -> name
        self.arrays = {}           # id(tensor's array) -> name: a tensor re-wrapped by an op
        self.known = names         # id(parameter or buffer) -> its state-dict name
        self.keep = []             # tensors named here stay alive (ids stay unique)
        self.count = 0
        self.dynamic = False       # a free batch dimension
        self.batch = None          # the example's batch size

    def fresh(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, array, stem="const"):
        name = self.fresh(stem)
        array = backend.as_numpy(array)
        # (np.ascontiguousarray would turn a 0-d array into shape (1,))
        self.initializers.append(self.numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def name(self, tensor, name):
        self.names[id(tensor)] = self.arrays[id(tensor._data)] = name
        self.keep.append(tensor)

    def name_of(self, tensor):
        """The graph name of ``tensor``: traced, or a new initializer."""
        name = self.names.get(id(tensor)) or self.arrays.get(id(tensor._data))
        if name is None:
            stem = self.known.get(id(tensor), "const").replace(".", "_")
            name = self.names[id(tensor)] = self.const(tensor._data, stem)
            self.keep.append(tensor)
        return name

    def node(self, op, inputs, outputs=None, **attrs):
        outputs = outputs or [self.fresh(op.lower())]
        self.nodes.append(self.helper.make_node(op, list(inputs), list(outputs),
                                                name=self.fresh("n_" + op), **attrs))
        return outputs[0]

    def ints(self, values):
        return self.const(np.asarray(values, dtype=np.int64), "ints")


def _batched(g, x_tensor, x, build):
    """Run ``build(name) -> name`` on an (N, C, H, W) view of a (C, H, W) or (N, C, H, W) input."""
    if x_tensor.ndim == 3:
        out = build(g.node("Unsqueeze", [x, g.ints([0])]))
        return g.node("Squeeze", [out, g.ints([0])])
    return build(x)


def _conv(g, fn, xs, ys, tensors):
    (ph, pw), (kh, kw) = fn.padding, tensors[1].shape[2:]
    return [_batched(g, tensors[0], xs[0], lambda x: g.node(
        "Conv", [x] + xs[1:], kernel_shape=[kh, kw], strides=list(fn.stride),
        pads=[ph, pw, ph, pw], dilations=list(fn.dilation), group=fn.groups))]


def _conv_pool_relu(g, fn, xs, ys, tensors):
    kh, kw = tensors[1].shape[2:]
    conv = g.node("Conv", xs, kernel_shape=[kh, kw], pads=[1, 1, 1, 1])
    pool = g.node("MaxPool", [conv], kernel_shape=[2, 2], strides=[2, 2])
    return [g.node("Relu", [pool])]


def _ceil_mode(size, k, s, p, d, out):
    return int((size + 2 * p - d * (k - 1) - 1) // s + 1 != out)


def _max_pool(g, fn, xs, ys, tensors):
    if fn.return_indices:
        raise ExportError("export: max_pool2d with return_indices=True has no ONNX translation "
                          "here (the indices' layout differs)")
    H, W = tensors[0].shape[-2:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (fn.kernel_size, fn.stride, fn.padding,
                                              fn.dilation)
    ceil = _ceil_mode(H, kh, sh, ph, dh, fn.output_size[0]) or \
        _ceil_mode(W, kw, sw, pw, dw, fn.output_size[1])
    out = _batched(g, tensors[0], xs[0], lambda x: g.node(
        "MaxPool", [x], kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw],
        dilations=[dh, dw], ceil_mode=ceil))
    return [g.node("Relu", [out]) if fn.relu else out]


def _avg_pool(g, fn, xs, ys, tensors):
    if fn.divisor_override:
        raise ExportError("export: avg_pool2d with divisor_override has no ONNX translation")
    H, W = tensors[0].shape[-2:]
    (kh, kw), (sh, sw), (ph, pw) = fn.kernel_size, fn.stride, fn.padding
    ceil = _ceil_mode(H, kh, sh, ph, 1, fn.output_size[0]) or \
        _ceil_mode(W, kw, sw, pw, 1, fn.output_size[1])
    return [_batched(g, tensors[0], xs[0], lambda x: g.node(
        "AveragePool", [x], kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw],
        ceil_mode=ceil, count_include_pad=int(bool(fn.count_include_pad))))]


def _adaptive_avg_pool(g, fn, xs, ys, tensors):
    H, W = tensors[0].shape[-2:]
    OH, OW = fn.output_size
    if (OH, OW) == (1, 1):
        return [_batched(g, tensors[0], xs[0], lambda x: g.node("GlobalAveragePool", [x]))]
    if not (H % OH or W % OW):
        return [_batched(g, tensors[0], xs[0], lambda x: g.node(
            "AveragePool", [x], kernel_shape=[H // OH, W // OW], strides=[H // OH, W // OW]))]
    # unequal windows (PyTorch's floor(i * H / OH) .. ceil((i + 1) * H / OH)): one mean per
    # window along H, then along W
    x = xs[0]
    for axis, size, out in ((-2, H, OH), (-1, W, OW)):
        parts = [g.node("ReduceMean", [g.node("Slice", [
            x, g.ints([i * size // out]), g.ints([-(-(i + 1) * size // out)]), g.ints([axis])])],
            axes=[axis], keepdims=1) for i in range(out)]
        x = g.node("Concat", parts, axis=axis)
    return [x]


def _linear(g, fn, xs, ys, tensors):
    if tensors[0].ndim == 2:
        return [g.node("Gemm", xs, transB=1)]
    out = g.node("MatMul", [xs[0], g.node("Transpose", [xs[1]], perm=[1, 0])])
    return [g.node("Add", [out, xs[2]]) if len(xs) > 2 else out]


def _layer_norm(g, fn, xs, ys, tensors):
    shape = tensors[0].shape[tensors[0].ndim - fn.k:]
    dtype = tensors[0].dtype
    scale = xs[1] if len(xs) > 1 else g.const(np.ones(shape, dtype))
    bias = xs[2] if len(xs) > 2 else g.const(np.zeros(shape, dtype))
    return [g.node("LayerNormalization", [xs[0], scale, bias], axis=-fn.k, epsilon=fn.eps)]


def _batch_norm(g, fn, xs, ys, tensors):
    if fn.training:
        raise ExportError("export: batch_norm in training mode (batch statistics); call "
                          "model.eval() (export does) or keep running statistics")
    C, dtype = tensors[0].shape[1], tensors[0].dtype
    scale = xs[1] if len(xs) > 1 else g.const(np.ones(C, dtype))
    bias = xs[2] if len(xs) > 2 else g.const(np.zeros(C, dtype))
    mean, var = g.const(fn.rm.astype(dtype)), g.const(fn.rv.astype(dtype))
    return [g.node("BatchNormalization", [xs[0], scale, bias, mean, var], epsilon=fn.eps)]


def _axes(fn, tensor):
    return list(range(tensor.ndim)) if fn.axes is None else \
        [a % max(tensor.ndim, 1) for a in np.atleast_1d(fn.axes).tolist()]


def _reduce(op):
    def convert(g, fn, xs, ys, tensors):
        name = "ReduceMin" if op == "ReduceMax" and not fn.is_max else op
        keep = int(bool(fn.keepdims))
        if name == "ReduceSum":   # opset 13+: axes is an input
            return [g.node(name, [xs[0], g.ints(_axes(fn, tensors[0]))], keepdims=keep)]
        return [g.node(name, xs, axes=_axes(fn, tensors[0]), keepdims=keep)]
    return convert


def _gelu(g, fn, xs, ys, tensors):
    x, dtype = xs[0], tensors[0].dtype
    c = lambda v: g.const(np.asarray(v, dtype))   # noqa: E731
    if fn.approximate == "tanh":
        cube = g.node("Mul", [c(0.044715), g.node("Pow", [x, c(3.0)])])
        inner = g.node("Mul", [c(np.sqrt(2.0 / np.pi)), g.node("Add", [x, cube])])
        gate = g.node("Add", [c(1.0), g.node("Tanh", [inner])])
    else:
        gate = g.node("Add", [c(1.0), g.node("Erf", [g.node("Mul", [x, c(1 / np.sqrt(2.0))])])])
    return [g.node("Mul", [g.node("Mul", [x, c(0.5)]), gate])]


def _attention(g, fn, xs, ys, tensors):
    """The fused attention as softmax(q k^T * scale + M) v, M one additive constant
    (the op's mask and causal cut); rows with every key masked give zeros, as the op."""
    if fn.dropout_p:
        raise ExportError("export: scaled_dot_product_attention with dropout_p > 0 (training "
                          "only); call model.eval() (export does) or pass dropout_p=0")
    q, k = tensors[0], tensors[1]
    L, S, dtype = q.shape[-2], k.shape[-2], q.dtype
    perm = list(range(k.ndim - 2)) + [k.ndim - 1, k.ndim - 2]
    scores = g.node("Mul", [g.node("MatMul", [xs[0], g.node("Transpose", [xs[1]], perm=perm)]),
                            g.const(np.asarray(fn.scale, dtype))])
    bias = np.zeros((1, L, S), dtype)
    if fn.mask is not None:
        bias = bias + fn.mask
    if fn.causal:
        bias = np.where(np.tri(L, S, dtype=bool), bias, dtype.type(-np.inf))
    bias = bias.reshape((fn.lead if bias.shape[0] > 1 else ()) + (L, S))
    weights = g.node("Softmax", [g.node("Add", [scores, g.const(bias)])], axis=-1)
    dead = np.isneginf(bias).all(axis=-1, keepdims=True)
    if dead.any():   # ONNX's softmax of an all -inf row is NaN; the op gives zeros
        weights = g.node("Where", [g.const(dead), g.const(np.zeros((), dtype)), weights])
    out = g.node("MatMul", [weights, xs[2]])
    return [out, weights] if fn.want_weights else [out]


_BIG = 2 ** 62   # an "until the end" bound for ONNX Slice


def _basic_key(key, ndim):
    """``key`` as a list of ints, slices and None over ``ndim`` dims (Ellipsis
    expanded), or None when it holds arrays, lists or bools (advanced indexing)."""
    key = key if isinstance(key, tuple) else (key,)
    if not all(k is None or k is Ellipsis or isinstance(k, slice)
               or (isinstance(k, (int, np.integer)) and not isinstance(k, bool)) for k in key):
        return None
    used = sum(1 for k in key if k is not None and k is not Ellipsis)
    out = []
    for k in key:
        out.extend([slice(None)] * (ndim - used) if k is Ellipsis else [k])
    if Ellipsis not in key:
        out.extend([slice(None)] * (ndim - used))
    return out


def _getitem(g, fn, xs, ys, tensors):
    key = _basic_key(fn.key, tensors[0].ndim)
    if key is None:
        return _gather_static(g, fn, xs, tensors)
    # basic indexing: one Slice, a Gather per int (last axis first), one Unsqueeze, so
    # a free batch dimension stays free
    starts, ends, axes, steps, ints, new_axes = [], [], [], [], [], []
    axis = out = 0
    for k in key:
        if k is None:
            new_axes.append(out)
            out += 1
        elif isinstance(k, slice):
            if k != slice(None):
                step = 1 if k.step is None else k.step
                default = (0, _BIG) if step > 0 else (-1, -_BIG)
                starts.append(default[0] if k.start is None else k.start)
                ends.append(default[1] if k.stop is None else k.stop)
                axes.append(axis)
                steps.append(step)
            axis += 1
            out += 1
        else:
            ints.append((axis, int(k)))
            axis += 1
    x = xs[0]
    if axes:
        x = g.node("Slice", [x, g.ints(starts), g.ints(ends), g.ints(axes), g.ints(steps)])
    for axis, i in reversed(ints):
        x = g.node("Gather", [x, g.const(np.asarray(i, np.int64))], axis=axis)
    if new_axes:
        x = g.node("Unsqueeze", [x, g.ints(new_axes)])
    return [x if x != xs[0] else g.node("Identity", [x])]


def _gather_static(g, fn, xs, tensors):
    # any index of a fixed shape is one Gather of the flat tensor
    x = tensors[0]
    index = np.arange(x._data.size, dtype=np.int64).reshape(x.shape)[fn.key]
    flat = g.node("Reshape", [xs[0], g.ints([-1])])
    return [g.node("Gather", [flat, g.const(np.ascontiguousarray(index))], axis=0)]


def _reshape(g, fn, xs, ys, tensors):
    shape = list(ys[0].shape)
    if g.dynamic and tensors[0].ndim and shape:
        if shape[0] == tensors[0].shape[0]:
            shape[0] = 0    # ONNX: copy the (free) batch dimension from the input
        elif g.batch and shape[0] % g.batch == 0 and -1 not in shape[1:]:
            shape[0] = -1   # (batch * n, ...): inferred from the other, fixed, dims
    return [g.node("Reshape", [xs[0], g.ints(shape)])]


def _expand(g, fn, xs, ys, tensors):
    # 1 where the input already has the size: Expand keeps the input's own (free) dims
    shape, have = list(ys[0].shape), list(tensors[0].shape)
    have = [None] * (len(shape) - len(have)) + have
    return [g.node("Expand", [xs[0], g.ints([1 if h == n else n
                                             for h, n in zip(have, shape)])])]


def _pad(g, fn, xs, ys, tensors):
    before, after = zip(*fn.widths)
    value = g.const(np.asarray(fn.value, tensors[0].dtype))
    return [g.node("Pad", [xs[0], g.ints(list(before) + list(after)), value], mode="constant")]


def _repeat(g, fn, xs, ys, tensors):
    x, reps = xs[0], list(fn.reps)
    if len(reps) > tensors[0].ndim:
        lead = [1] * (len(reps) - tensors[0].ndim)
        x = g.node("Reshape", [x, g.ints(lead + list(tensors[0].shape))])
    return [g.node("Tile", [x, g.ints(reps)])]


def _stack(g, fn, xs, ys, tensors):
    axis = fn.axis % (tensors[0].ndim + 1)
    parts = [g.node("Unsqueeze", [x, g.ints([axis])]) for x in xs]
    return [g.node("Concat", parts, axis=axis)]


def _clip(g, fn, xs, ys, tensors):
    dtype = tensors[0].dtype
    bound = lambda v: "" if v is None else g.const(np.asarray(v, dtype))   # noqa: E731
    return [g.node("Clip", [xs[0], bound(fn.low), bound(fn.high)])]


def _cast(g, fn, xs, ys, tensors):
    to = g.helper.np_dtype_to_tensor_dtype(fn.dtype)
    return [g.node("Cast", xs, to=to)]


def _sincos(g, fn, xs, ys, tensors):
    return [g.node("Sin" if fn.is_sin else "Cos", xs)]


def _gather_locations(g, fn, xs, ys, tensors):
    # (B, C, H, W) -> (B, HW, C), then one GatherND per batch row at index[..., None]
    B, C, H, W = tensors[0].shape
    rows = g.node("Transpose", [g.node("Reshape", [xs[0], g.ints([B, C, H * W])])],
                  perm=[0, 2, 1])
    index = g.node("Unsqueeze", [g.node("Cast", [xs[1]], to=7), g.ints([-1])])   # 7: int64
    return [g.node("GatherND", [rows, index], batch_dims=1)]


def _converters():
    from .ops import (activation, arith, attention, conv, conv_block, detection, linear, norm,
                      reduce, shape, sorting)
    simple = {arith.Add: "Add", arith.Sub: "Sub", arith.Mul: "Mul", arith.Div: "Div",
              arith.Pow: "Pow", arith.MatMul: "MatMul", arith.Maximum: "Max",
              arith.Minimum: "Min", arith.Neg: "Neg", arith.Exp: "Exp", arith.Log: "Log",
              arith.Sqrt: "Sqrt", arith.Abs: "Abs", arith.Tanh: "Tanh",
              arith.Sigmoid: "Sigmoid", arith.ReLU: "Relu", arith.Clone: "Identity"}
    table = {cls: (lambda op: lambda g, fn, xs, ys, t: [g.node(op, xs)])(op)
             for cls, op in simple.items()}
    table.update({
        arith.PowScalar: lambda g, fn, xs, ys, t: [g.node("Pow", [xs[0], g.const(
            np.asarray(fn.exponent, t[0].dtype))])],
        arith.Where: lambda g, fn, xs, ys, t: [g.node("Where", [g.const(np.asarray(
            fn.condition, bool)), xs[0], xs[1]])],
        arith.Clip: _clip, arith.Cast: _cast, arith.SinCos: _sincos,
        shape.Reshape: _reshape,
        shape.Transpose: lambda g, fn, xs, ys, t: [g.node("Transpose", xs,
                                                          perm=list(fn.axes))],
        shape.GetItem: _getitem,
        shape.Concat: lambda g, fn, xs, ys, t: [g.node("Concat", xs,
                                                       axis=fn.axis % t[0].ndim)],
        shape.Stack: _stack,
        shape.BroadcastTo: _expand,
        shape.Pad: _pad, shape.Repeat: _repeat,
        reduce.Sum: _reduce("ReduceSum"), reduce.Mean: _reduce("ReduceMean"),
        reduce.MaxMin: _reduce("ReduceMax"), reduce.LogSumExp: _reduce("ReduceLogSumExp"),
        activation.Softmax: lambda g, fn, xs, ys, t: [g.node("Softmax", xs, axis=fn.axis)],
        activation.LogSoftmax: lambda g, fn, xs, ys, t: [g.node("LogSoftmax", xs,
                                                                axis=fn.axis)],
        activation.GELU: _gelu,
        activation.LeakyReLU: lambda g, fn, xs, ys, t: [g.node("LeakyRelu", xs,
                                                               alpha=float(fn.negative_slope))],
        activation.SiLU: lambda g, fn, xs, ys, t: [g.node("Mul", [xs[0], g.node(
            "Sigmoid", xs)])],
        conv.Conv2dFunction: _conv, conv_block.ConvPoolReLU: _conv_pool_relu,
        conv.MaxPool2dFunction: _max_pool, conv.AvgPool2dFunction: _avg_pool,
        conv.AdaptiveAvgPool2dFunction: _adaptive_avg_pool,
        linear.LinearFunction: _linear,
        norm.LayerNormFunction: _layer_norm, norm.BatchNormFunction: _batch_norm,
        detection.GatherLocations: _gather_locations,
        attention.ScaledDotProductAttention: _attention,
        sorting.Gather: lambda g, fn, xs, ys, t: [g.node("GatherElements", [xs[0], g.const(
            fn.index)], axis=fn.axis)],
    })
    return table


_TRAINING_ONLY = {"Dropout": "dropout in training mode; call model.eval() (export does) or "
                             "pass training=False to F.dropout"}


# ------------------------------------------------------------------ export

def _value_info(helper, name, array, dynamic):
    shape = list(array.shape)
    if dynamic and shape:
        shape[0] = "batch"
    elem = helper.np_dtype_to_tensor_dtype(array.dtype)
    return helper.make_tensor_value_info(name, elem, shape)


def _as_inputs(example_input):
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    return [x if isinstance(x, Tensor) else Tensor(x) for x in inputs]


def trace(model, example_input):
    """``(inputs, outputs, calls)``: ``model(*inputs)`` run once in eval mode with
    every op recorded."""
    inputs = _as_inputs(example_input)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with no_grad(), _recording([]) as calls:
            outputs = _flatten_outputs(model(*inputs))
    finally:
        if was_training:
            model.train()
    return inputs, outputs, calls


def to_onnx(model, example_input, *, input_names=None, output_names=None, dynamic_batch=False,
            opset=OPSET):
    """The ``onnx.ModelProto`` of ``model`` traced on ``example_input`` (see the module
    docstring); :func:`export` writes and checks it."""
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError("minidl.onnx needs the onnx package: pip install onnx") from None
    inputs, outputs, calls = trace(model, example_input)
    names = {}
    if hasattr(model, "state_dict"):
        named = list(model.named_parameters()) + list(model.named_buffers())
        names = {id(t): n for n, t in named}
    g = _Graph(helper, numpy_helper, names)
    g.dynamic = bool(dynamic_batch)
    g.batch = inputs[0].shape[0] if inputs and inputs[0].ndim else None
    input_names = list(input_names or [f"input{i}" if len(inputs) > 1 else "input"
                                       for i in range(len(inputs))])
    for t, n in zip(inputs, input_names):
        g.name(t, n)
    table = _converters()
    for fn, xs, ys in calls:
        convert = table.get(type(fn))
        if convert is None:
            why = _TRAINING_ONLY.get(type(fn).__name__, "no ONNX translation in minidl.onnx")
            raise ExportError(f"export: op {type(fn).__name__} ({type(fn).__module__}) cannot be "
                              f"exported: {why}")
        produced = convert(g, fn, [g.name_of(x) for x in xs], ys, xs)
        for y, name in zip(ys, produced):
            g.name(y, name)
        g.keep.extend(xs)
    output_names = list(output_names or outputs)
    outputs = list(outputs.values())
    for t, n in zip(outputs, output_names):
        g.node("Identity", [g.name_of(t)], [n])
    graph = helper.make_graph(
        g.nodes, type(model).__name__, [
            _value_info(helper, n, t._data, g.dynamic) for t, n in zip(inputs, input_names)],
        # with a free batch, each output dim is named, not fixed (the batch need not be
        # an output's first dimension)
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(t.dtype),
                                       [f"{n}_{i}" for i in range(t.ndim)])
         if g.dynamic else _value_info(helper, n, t._data, False)
         for t, n in zip(outputs, output_names)],
        g.initializers)
    proto = helper.make_model(graph, producer_name="minidl",
                              opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = min(proto.ir_version, 8)   # readable by older runtimes too
    onnx.checker.check_model(proto)
    return proto


def _run_both(model, session, inputs):
    with no_grad():
        expected = _flatten_outputs(model(*[Tensor(x) for x in inputs]))
    feed = {i.name: backend.as_numpy(x) for i, x in zip(session.get_inputs(), inputs)}
    return ({k: backend.as_numpy(e._data) for k, e in expected.items()},
            session.run(None, feed))


def check(model, proto, example_input, dynamic_batch=False, rtol=1e-4, atol=1e-5):
    """Raise :class:`ExportError` unless onnxruntime running ``proto`` gives
    ``model``'s outputs on the example, on a random input of its shape, and
    (``dynamic_batch``) on a batch of another size. Skipped (returns False)
    when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return False
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    examples = [backend.as_numpy(x._data) for x in _as_inputs(example_input)]
    rng = np.random.default_rng(0)
    # integer inputs (indices) are rotated by one place: values derived from them
    # outside the traced ops would otherwise stay right by luck
    trials = {"the example input": examples,
              "a random input": [rng.standard_normal(x.shape).astype(x.dtype)
                                 if x.dtype.kind == "f" else
                                 np.roll(x.reshape(-1), 1).reshape(x.shape)
                                 for x in examples]}
    if dynamic_batch:
        trials["a batch of another size"] = [np.concatenate([x, x[:1]]) for x in examples]
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        for what, inputs in trials.items():
            try:
                expected, got = _run_both(model, session, inputs)
            except Exception as exc:   # onnxruntime's own errors name the node
                raise ExportError(f"export: onnxruntime cannot run the exported graph on "
                                  f"{what}: {exc}") from None
            for (name, e), a in zip(expected.items(), got):
                if e.shape != a.shape or not np.allclose(a, e, rtol=rtol, atol=atol,
                                                         equal_nan=True):
                    worst = np.abs(a - e).max() if e.shape == a.shape else "shape"
                    raise ExportError(
                        f"export: the ONNX graph does not reproduce the model on {what} "
                        f"(output {name!r}: max difference {worst}); the forward probably "
                        "depends on values computed outside minidl's ops (frozen as "
                        "constants by the trace) or on the input's shape")
    finally:
        if was_training:
            model.train()
    return True


def export(model, example_input, path, *, input_names=None, output_names=None,
           dynamic_batch=False, opset=OPSET, verify=True):
    """Trace ``model`` on ``example_input`` (a Tensor, array or tuple of them) and
    write the ONNX model to ``path`` (atomically); returns the path. With
    ``verify`` (and onnxruntime installed) the graph is checked first: see
    :func:`check`. ``dynamic_batch=True`` leaves the first dimension free."""
    import os
    proto = to_onnx(model, example_input, input_names=input_names, output_names=output_names,
                    dynamic_batch=dynamic_batch, opset=opset)
    if verify:
        check(model, proto, example_input, dynamic_batch)
    path = os.fspath(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


__all__ = ["export", "to_onnx", "trace", "check", "ExportError"]
