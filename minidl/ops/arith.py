"""Elementwise arithmetic, matmul and pointwise activations.

Every binary op broadcasts as NumPy does; the engine sums each gradient back
to its input's shape, so the backward methods here ignore broadcasting.
A Python scalar or a NumPy constant meeting a float tensor takes the
tensor's dtype, so ``x * 0.5`` keeps a float32 graph float32. Ops whose
result is a float (true division, exp, log, sqrt, tanh, sigmoid, a fractional
power, a float clip bound) give float32 for integer and bool inputs, as
PyTorch: see :func:`float_result_dtype`.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..tensor import Function, Tensor, as_array, as_tensor


def float_result_dtype(dtype) -> np.dtype:
    """The dtype of a float-valued op on an input of ``dtype``: a float (or complex)
    dtype is kept; integers and bools give float32, PyTorch's default float dtype
    (NumPy would give float64, which then silently promotes float32 graphs)."""
    dtype = np.dtype(dtype)
    return dtype if dtype.kind in "fc" else np.dtype(np.float32)


def as_float(array):
    """``array`` itself when it is floating, else cast to :func:`float_result_dtype`."""
    if array.dtype.kind in "fc":
        return array
    return array.astype(float_result_dtype(array.dtype))


def constant_like(value, ref: Tensor) -> Tensor:
    """Wrap a non-tensor operand on ``ref``'s device, in ``ref``'s float dtype.

    On the GPU a number becomes a cached 0-d device array (made once per value
    and dtype), not a host array copied over for every op."""
    if ref.device == "cuda" and isinstance(value, (int, float, bool, np.generic)):
        host = constant_like(np.asarray(value), Tensor._wrap(np.empty(0, ref._data.dtype)))
        xp = backend.get_array_module(ref._data)
        return Tensor._wrap(backend.device_constant(
            xp, ("scalar", host._data.dtype.str, host._data.item()), lambda: host._data))
    array = value if isinstance(value, (np.ndarray,)) or backend.device_of(value) == "cuda" \
        else np.asarray(value)
    ref_dtype = ref._data.dtype
    if ref_dtype.kind == "f":
        if array.dtype != ref_dtype:
            array = array.astype(ref_dtype)
    elif array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    elif array.dtype.kind in "iu" and array.dtype != ref_dtype and ref_dtype.kind in "iu":
        array = array.astype(ref_dtype)
    if backend.device_of(ref._data) != backend.device_of(array):
        array = backend.to_device(array, ref.device)
    return Tensor._wrap(array)


def operands(a, b):
    """Both operands as tensors; a non-tensor takes the other's dtype and device."""
    if isinstance(a, Tensor):
        b = b if isinstance(b, Tensor) else constant_like(b, a)
    elif isinstance(b, Tensor):
        a = constant_like(a, b)
    else:
        a = Tensor._wrap(as_array(a))
        b = constant_like(b, a)
    # An integer operand meeting a float one takes the float's dtype, as in
    # PyTorch: NumPy would turn int64 (op) float32 into float64.
    ka, kb = a._data.dtype.kind, b._data.dtype.kind
    if ka in "iu" and kb == "f":
        a = Tensor._wrap(a._data.astype(b._data.dtype))
    elif kb in "iu" and ka == "f":
        b = Tensor._wrap(b._data.astype(a._data.dtype))
    return a, b


# ------------------------------------------------------------------ binary

class Add(Function):
    def forward(self, a, b):
        return a + b

    def backward(self, gy):
        return gy, gy


class Sub(Function):
    def forward(self, a, b):
        return a - b

    def backward(self, gy):
        return gy, (-gy if self.needs_input_grad[1] else None)


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        ga = gy * self.b if self.needs_input_grad[0] else None
        gb = gy * self.a if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        # Both are floats of one dtype unless both are integers (see operands).
        a, b = as_float(a), as_float(b)
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        ga = gy / self.b
        gb = -ga * self.a / self.b if self.needs_input_grad[1] else None
        return (ga if self.needs_input_grad[0] else None), gb


class Pow(Function):
    """``a ** b``; d/db needs log(a), so it is only computed when b needs it."""

    def forward(self, a, b):
        self.a, self.b = a, b
        self.y = a ** b
        return self.y

    def backward(self, gy):
        a, b = self.a, self.b
        xp = backend.get_array_module(a)
        ga = None
        if self.needs_input_grad[0]:
            # b * a**(b-1) is 0 * inf at a = b = 0, where the derivative is 0 (a**0 = 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                ga = gy * xp.where(b == 0, 0, b * a ** (b - 1))
        gb = None
        if self.needs_input_grad[1]:
            safe_log = xp.log(xp.where(a > 0, a, 1))
            gb = gy * self.y * safe_log
        return ga, gb


class PowScalar(Function):
    """``a ** c`` for a Python number c (the common case: squares, roots)."""

    def __init__(self, exponent):
        self.c = exponent

    def forward(self, a):
        if isinstance(self.c, float):  # an integer tensor to a fractional power: a float
            a = as_float(a)
        self.a = a
        return a ** a.dtype.type(self.c) if a.dtype.kind == "f" else a ** self.c

    def backward(self, gy):
        a, c = self.a, self.c
        if c == 0:  # a ** -1 would warn (and give nan) at a == 0; torch gives 0
            return gy * a.dtype.type(0)
        if c == 2:
            return gy * (a + a)
        return gy * (a.dtype.type(c) * a ** a.dtype.type(c - 1))


def _matmul(a, b):
    """``a @ b`` by the backend's kernels (a 2-D product on the CPU is split
    over Numba's threads, a batched one is one GEMM per product on those
    threads; see :mod:`minidl.kernels.cpu_blas`; CuPy's matmul is cuBLAS's)."""
    xp = backend.get_array_module(a)
    if xp is np and (a.ndim > 2 or b.ndim > 2) and backend.numba_enabled():
        from ..kernels import cpu_blas
        return cpu_blas.batched_matmul(a, b)
    return backend.kernels_for(xp).matmul(a, b)


class MatMul(Function):
    """Batched ``a @ b`` with NumPy's rules (1-D operands are vectors).

    Shapes: a (..., n, k), b (..., k, m) -> (..., n, m); batch dims broadcast.
    """

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: operands must have at least one dimension, got shapes "
                             f"{a.shape} and {b.shape}")
        ka = a.shape[-1]
        kb = b.shape[-2] if b.ndim > 1 else b.shape[0]
        if ka != kb:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match: "
                             f"{ka} (last dim of the first) != {kb} (second-to-last of the second)")
        self.a, self.b = a, b
        return _matmul(a, b)

    def backward(self, gy):
        a, b = self.a, self.b
        # Restore the unit dims that 1-D operands dropped, then use the 2-D rule.
        if b.ndim == 1:
            gy = gy[..., None]
        if a.ndim == 1:
            gy = gy[..., None, :]
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = _matmul(gy, b2.swapaxes(-1, -2))
            if a.ndim == 1:
                ga = ga[..., 0, :]
        if self.needs_input_grad[1]:
            if b2.ndim == 2 and a2.ndim > 2 and a2.shape[:-1] == gy.shape[:-1]:
                # A shared weight under a batch: one GEMM over all rows, not a
                # batched product summed afterwards.
                # rows counted, not -1: NumPy cannot infer it when k or m is 0
                rows = math.prod(a2.shape[:-1])
                gb = _matmul(a2.reshape(rows, a2.shape[-1]).T, gy.reshape(rows, gy.shape[-1]))
            else:
                gb = _matmul(a2.swapaxes(-1, -2), gy)
            if b.ndim == 1:
                gb = gb[..., 0]
        return ga, gb


class Maximum(Function):
    """Elementwise max; on ties the gradient is split in half, as PyTorch."""

    def forward(self, a, b):
        self.a, self.b = a, b
        xp = backend.get_array_module(a)
        return xp.maximum(a, b)

    def backward(self, gy):
        return _split_ties(gy, self.a > self.b, self.a == self.b, self.needs_input_grad)


class Minimum(Function):
    """Elementwise min; on ties the gradient is split in half, as PyTorch."""

    def forward(self, a, b):
        self.a, self.b = a, b
        xp = backend.get_array_module(a)
        return xp.minimum(a, b)

    def backward(self, gy):
        return _split_ties(gy, self.a < self.b, self.a == self.b, self.needs_input_grad)


def _split_ties(gy, a_wins, tie, needs):
    share = a_wins + gy.dtype.type(0.5) * tie
    ga = gy * share if needs[0] else None
    gb = gy * (1 - share) if needs[1] else None
    return ga, gb


class Where(Function):
    """``where(condition, a, b)``; the condition is a constant boolean array."""

    def __init__(self, condition):
        self.condition = condition

    def forward(self, a, b):
        xp = backend.get_array_module(a)
        return xp.where(self.condition, a, b)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        zero = gy.dtype.type(0)
        ga = xp.where(self.condition, gy, zero) if self.needs_input_grad[0] else None
        gb = xp.where(self.condition, zero, gy) if self.needs_input_grad[1] else None
        return ga, gb


# ------------------------------------------------------------------- unary

class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Exp(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        self.y = xp.exp(as_float(x))
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        self.x = x = as_float(x)
        return xp.log(x)

    def backward(self, gy):
        return gy / self.x


class Sqrt(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        self.y = xp.sqrt(as_float(x))
        return self.y

    def backward(self, gy):
        return gy / (self.y + self.y)


class Abs(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        self.x = x
        return xp.abs(x)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        return gy * xp.sign(self.x)


class Tanh(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        self.y = xp.tanh(as_float(x))
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


class SinCos(Function):
    """sin(x) or cos(x) (``is_sin``); d sin = cos, d cos = -sin."""

    def __init__(self, is_sin):
        self.is_sin = is_sin

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.x = as_float(x)
        return (xp.sin if self.is_sin else xp.cos)(self.x)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        return gy * xp.cos(self.x) if self.is_sin else -gy * xp.sin(self.x)


def stable_sigmoid(x, xp):
    """1 / (1 + exp(-x)) of a float array, accurate in both tails: from e = exp(-|x|)
    (never overflows), 1 / (1 + e) for x >= 0 and e / (1 + e) below, so
    sigmoid(-20) is 2.06e-9 in float32, not 0 (0.5 * tanh(x / 2) + 0.5 cancels
    there)."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, x.dtype.type(1), e) / (e + 1)


class Sigmoid(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        x = as_float(x)  # an integer dtype's 0.5 would be 0
        self.y = stable_sigmoid(x, xp)
        return self.y

    def backward(self, gy):
        y = self.y
        return gy * y * (1 - y)


class ReLU(Function):
    """y = max(x, 0); backward is PyTorch's threshold_backward: exactly 0 where
    y <= 0 (an inf or NaN gy there too, where a product would give NaN), and
    a NaN y passes gy. Each one pass in the kernels (parallel on the CPU)."""

    def forward(self, x):
        y = backend.kernels_for(backend.get_array_module(x)).relu(x)
        self.y = y
        return y

    def backward(self, gy):
        return backend.kernels_for(backend.get_array_module(gy)).threshold_backward(gy, self.y)


class Clip(Function):
    """Clamp to [low, high] (either may be None); gradient passes inside the range."""

    def __init__(self, low, high):
        self.low, self.high = low, high

    def forward(self, x):
        xp = backend.get_array_module(x)
        if any(isinstance(b, (float, np.floating)) for b in (self.low, self.high)):
            # A float bound on an integer tensor: a float result, as PyTorch
            # (casting the bound to the integer dtype would truncate it).
            x = as_float(x)
        self.x = x
        low = None if self.low is None else x.dtype.type(self.low)
        high = None if self.high is None else x.dtype.type(self.high)
        return xp.clip(x, low, high)

    def backward(self, gy):
        x = self.x
        mask = True
        if self.low is not None:
            mask = x >= self.low
        if self.high is not None:
            mask = mask & (x <= self.high)
        return gy * mask


class Cast(Function):
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def forward(self, x):
        self.in_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy):
        return gy.astype(self.in_dtype)


class Clone(Function):
    """A C-contiguous copy; the gradient passes through unchanged."""

    def forward(self, x):
        return backend.get_array_module(x).array(x, order="C", copy=True)

    def backward(self, gy):
        return gy


# ---------------------------------------------------------------- wrappers

def add(a, b):
    return Add()(*operands(a, b))


def sub(a, b):
    return Sub()(*operands(a, b))


def mul(a, b):
    return Mul()(*operands(a, b))


def div(a, b):
    return Div()(*operands(a, b))


def pow(a, b):  # noqa: A001 - the PyTorch name
    if isinstance(a, Tensor) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return PowScalar(b)(a)
    return Pow()(*operands(a, b))


def neg(x):
    return Neg()(x)


def matmul(a, b):
    return MatMul()(*operands(a, b))


def maximum(a, b):
    return Maximum()(*operands(a, b))


def minimum(a, b):
    return Minimum()(*operands(a, b))


def where(condition, a, b):
    """Elements of ``a`` where ``condition`` is true, else of ``b`` (broadcasting)."""
    cond = as_array(condition)
    a, b = operands(a, b)
    _check_mask_device("where", cond, a)
    return Where(cond.astype(bool, copy=False))(a, b)


def _check_mask_device(op, mask, x):
    """A condition or mask must live where the tensors do (CuPy would refuse a
    NumPy mask with a message naming neither the op nor the devices)."""
    if backend.device_of(mask) != x.device:
        raise backend.DeviceError(f"{op}: the mask is on '{backend.device_of(mask)}' but the "
                                  f"tensor is on '{x.device}'; move it with .to({x.device!r})")


def masked_fill(input, mask, value):
    """``input`` with ``value`` wherever the boolean ``mask`` (broadcast to input's
    shape) is true, as ``torch.Tensor.masked_fill``. ``value`` is a number or a
    0-d tensor (which then gets the masked elements' gradient); the result keeps
    input's dtype and shape."""
    x = as_tensor(input)
    m = as_array(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"masked_fill: the mask must be a boolean tensor, got dtype {m.dtype}")
    try:
        fits = np.broadcast_shapes(m.shape, x.shape) == tuple(x.shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"masked_fill: the mask's shape {tuple(m.shape)} does not broadcast "
                         f"to the input's {tuple(x.shape)}")
    _check_mask_device("masked_fill", m, x)
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise ValueError(f"masked_fill: value must be a number or a 0-d tensor, got a "
                             f"tensor of shape {tuple(value.shape)}")
        value = cast(value, x.dtype)
    else:
        value = x._data.dtype.type(value)   # an int tensor takes int(value), as PyTorch
    return where(m, value, x)


def exp(x):
    return Exp()(x)


def log(x):
    return Log()(x)


def sqrt(x):
    return Sqrt()(x)


def abs(x):  # noqa: A001 - the PyTorch name
    return Abs()(x)


def tanh(x):
    return Tanh()(x)


def sin(x):
    return SinCos(True)(x)


def cos(x):
    return SinCos(False)(x)


def _triangle(op, x, diagonal, lower):
    x = as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"{op}: expects a tensor of at least 2 dims (matrices in the last "
                         f"two), got shape {tuple(x.shape)}")
    xp = backend.get_array_module(x._data)
    rows, cols = x.shape[-2:]
    keep = xp.tri(rows, cols, diagonal, dtype=bool) if lower else \
        ~xp.tri(rows, cols, diagonal - 1, dtype=bool)
    return where(keep, x, x._data.dtype.type(0))


def tril(input, diagonal=0):
    """The lower triangle of the last two dims (on and below ``diagonal``), the rest
    0, as ``torch.tril`` (causal masks: ``tril(ones(T, T))``)."""
    return _triangle("tril", input, diagonal, True)


def triu(input, diagonal=0):
    """The upper triangle of the last two dims (on and above ``diagonal``), as
    ``torch.triu``."""
    return _triangle("triu", input, diagonal, False)


def sigmoid(x):
    return Sigmoid()(x)


def relu(x):
    return ReLU()(x)


def clip(x, min=None, max=None):  # noqa: A002 - PyTorch's keyword names
    if min is None and max is None:
        raise ValueError("clip: at least one of min and max must be given")
    return Clip(min, max)(x)


clamp = clip


def cast(x, dtype):
    dtype = np.dtype(dtype)
    if x._data.dtype == dtype:
        return x
    if x.requires_grad and dtype.kind in "fc":
        return Cast(dtype)(x)
    return Tensor._wrap(x._data.astype(dtype))
