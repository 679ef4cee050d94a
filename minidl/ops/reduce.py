"""Reductions: sum, mean, max, min, var, and the non-differentiable arg-reductions.

Each takes NumPy's ``axis``/``keepdims`` and PyTorch's ``dim``/``keepdim`` as
aliases. ``max``/``min`` return values only (NumPy's and ``torch.amax``'s
semantics); their gradient is shared equally among tied maxima, as amax's.
"""
from __future__ import annotations

import builtins
import operator

from .. import backend
from ..tensor import Function, Tensor


def reduction_axis(op, ndim, axis=None, keepdims=False, dim=None, keepdim=None):
    """Resolve the NumPy/PyTorch spellings to (axes tuple or None, keepdims)."""
    if dim is not None:
        if axis is not None and axis != dim:
            raise TypeError(f"{op}: got both axis={axis} and dim={dim}")
        axis = dim
    if keepdim is not None:
        keepdims = keepdim
    if axis is None:
        return None, bool(keepdims)
    # operator.index accepts NumPy integers too (e.g. an axis from np.argmax).
    axes = (operator.index(axis),) if not isinstance(axis, (tuple, list)) else tuple(axis)
    normalized = []
    for a in axes:
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a tensor of {ndim} dimensions")
        normalized.append(a % ndim if ndim else 0)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"{op}: repeated axis in {axis}")
    return tuple(sorted(normalized)), bool(keepdims)


def _unreduce(gy, in_shape, axes, keepdims):
    """Broadcast a reduced gradient back to the input's shape (a view)."""
    xp = backend.get_array_module(gy)
    if not keepdims:
        if axes is None:
            gy = gy.reshape((1,) * len(in_shape))
        else:
            shape = list(in_shape)
            for a in axes:
                shape[a] = 1
            gy = gy.reshape(shape)
    return xp.broadcast_to(gy, in_shape)


def _count(shape, axes):
    n = 1
    for a in (range(len(shape)) if axes is None else axes):
        n *= shape[a]
    return n


class Sum(Function):
    def __init__(self, axes, keepdims):
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        self.in_shape = x.shape
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        return _unreduce(gy, self.in_shape, self.axes, self.keepdims)


class Mean(Function):
    def __init__(self, axes, keepdims):
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        self.in_shape = x.shape
        return x.mean(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        scale = gy.dtype.type(1.0 / builtins.max(_count(self.in_shape, self.axes), 1))
        return _unreduce(gy * scale, self.in_shape, self.axes, self.keepdims)


class MaxMin(Function):
    def __init__(self, axes, keepdims, is_max):
        self.axes, self.keepdims, self.is_max = axes, keepdims, is_max

    def forward(self, x):
        if x.size == 0:
            raise ValueError(f"{'max' if self.is_max else 'min'}: reduction of an empty tensor "
                             f"of shape {x.shape}")
        y = (x.max if self.is_max else x.min)(axis=self.axes, keepdims=True)
        self.x, self.y_keep = x, y
        return y if self.keepdims else y.reshape(_reduced_shape(x.shape, self.axes))

    def backward(self, gy):
        mask = self.x == self.y_keep
        ties = mask.sum(axis=self.axes, keepdims=True).astype(gy.dtype)
        g = _unreduce(gy, self.x.shape, self.axes, self.keepdims)
        return g * mask / ties


def _reduced_shape(shape, axes):
    if axes is None:
        return ()
    return tuple(s for i, s in enumerate(shape) if i not in axes)


class Var(Function):
    """Variance with ``ddof`` (0: NumPy's default; 1: PyTorch's unbiased)."""

    def __init__(self, axes, keepdims, ddof):
        self.axes, self.keepdims, self.ddof = axes, keepdims, ddof

    def forward(self, x):
        self.centered = x - x.mean(axis=self.axes, keepdims=True)
        self.n = _count(x.shape, self.axes)
        denom = x.dtype.type(builtins.max(self.n - self.ddof, 0))
        sq = self.centered * self.centered
        return sq.sum(axis=self.axes, keepdims=self.keepdims) / denom

    def backward(self, gy):
        c = self.centered
        scale = c.dtype.type(2.0 / builtins.max(self.n - self.ddof, 1))
        return _unreduce(gy, c.shape, self.axes, self.keepdims) * (c * scale)


# ---------------------------------------------------------------- wrappers

def sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001
    axes, keep = reduction_axis("sum", x.ndim, axis, keepdims, dim, keepdim)
    return Sum(axes, keep)(x)


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axes, keep = reduction_axis("mean", x.ndim, axis, keepdims, dim, keepdim)
    if x.data.dtype.kind not in "fc":
        raise TypeError(f"mean: expected a floating-point tensor, got dtype {x.dtype}")
    return Mean(axes, keep)(x)


def max(x, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001
    axes, keep = reduction_axis("max", x.ndim, axis, keepdims, dim, keepdim)
    return MaxMin(axes, keep, True)(x)


def min(x, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001
    axes, keep = reduction_axis("min", x.ndim, axis, keepdims, dim, keepdim)
    return MaxMin(axes, keep, False)(x)


def var(x, axis=None, keepdims=False, ddof=0, *, dim=None, keepdim=None,
        correction=None, unbiased=None):
    """Variance. ``ddof=0`` by default (NumPy); ``correction=1`` or
    ``unbiased=True`` give PyTorch's default (Bessel's correction)."""
    if correction is not None:
        ddof = correction
    elif unbiased is not None:
        ddof = 1 if unbiased else 0
    axes, keep = reduction_axis("var", x.ndim, axis, keepdims, dim, keepdim)
    return Var(axes, keep, ddof)(x)


def std(x, axis=None, keepdims=False, ddof=0, **aliases):
    return var(x, axis, keepdims, ddof, **aliases) ** 0.5


def argmax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the first maximum (int64, no gradient)."""
    axes, keep = reduction_axis("argmax", x.ndim, axis, keepdims, dim, keepdim)
    if axes is not None and len(axes) != 1:
        raise ValueError("argmax: expected one axis")
    out = x.data.argmax(axis=None if axes is None else axes[0], keepdims=keep)
    return Tensor._wrap(out.astype("int64", copy=False))


def argmin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the first minimum (int64, no gradient)."""
    axes, keep = reduction_axis("argmin", x.ndim, axis, keepdims, dim, keepdim)
    if axes is not None and len(axes) != 1:
        raise ValueError("argmin: expected one axis")
    out = x.data.argmin(axis=None if axes is None else axes[0], keepdims=keep)
    return Tensor._wrap(out.astype("int64", copy=False))
