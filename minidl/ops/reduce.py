"""Reductions: sum, mean, max, min, var, and the non-differentiable arg-reductions.

Each takes NumPy's ``axis``/``keepdims`` and PyTorch's ``dim``/``keepdim`` as
aliases. ``max``/``min`` return values only (NumPy's and ``torch.amax``'s
semantics); their gradient is shared equally among tied maxima, as amax's.
"""
from __future__ import annotations

import builtins

from .. import backend
from ..tensor import Function, Tensor
from .shape import normalize_dim


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
    axes = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    normalized = [normalize_dim(op, a, ndim) for a in axes]
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"{op}: repeated axis in {axis}")
    if ndim == 0:  # dim 0 or -1 of a 0-d tensor, as PyTorch: there is nothing to reduce
        return (), bool(keepdims)
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
        # Reducing over a non-empty dim of an empty tensor is fine (shape (0, 3)
        # over dim 1 gives (0,)); over an empty dim there is no maximum.
        for a in range(x.ndim) if self.axes is None else self.axes:
            if x.shape[a] == 0:
                raise ValueError(f"{'max' if self.is_max else 'min'}: cannot reduce over dim {a} "
                                 f"of size 0 of a tensor of shape {x.shape} (it has no "
                                 "elements there); pass a dim whose size is not 0")
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


class Std(Var):
    """sqrt(var). Where std is 0 (a constant input) the gradient is 0, as PyTorch's,
    not the 0 * inf = NaN of differentiating ``var ** 0.5``."""

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.y = xp.sqrt(super().forward(x))
        return self.y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        y = self.y
        constant = y == 0
        # d std = d var / (2 std); divide by 1 where std is 0 (no warning), then zero it.
        safe = xp.where(constant, y.dtype.type(1), y)
        gvar = gy / (safe + safe)
        gvar = xp.where(constant, gvar.dtype.type(0), gvar)
        return super().backward(gvar)


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
    return _variance(Var, "var", x, axis, keepdims, ddof, dim, keepdim, correction, unbiased)


def std(x, axis=None, keepdims=False, ddof=0, *, dim=None, keepdim=None,
        correction=None, unbiased=None):
    """Standard deviation, the square root of :func:`var` (same arguments); its
    gradient is 0 where std is 0, as PyTorch's."""
    return _variance(Std, "std", x, axis, keepdims, ddof, dim, keepdim, correction, unbiased)


def _variance(op_class, op, x, axis, keepdims, ddof, dim, keepdim, correction, unbiased):
    if correction is not None:
        ddof = correction
    elif unbiased is not None:
        ddof = 1 if unbiased else 0
    axes, keep = reduction_axis(op, x.ndim, axis, keepdims, dim, keepdim)
    if x.data.dtype.kind not in "fc":
        raise TypeError(f"{op}: expected a floating-point tensor, got dtype {x.dtype}")
    return op_class(axes, keep, ddof)(x)


def argmax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the first maximum (int64, no gradient)."""
    axes, keep = reduction_axis("argmax", x.ndim, axis, keepdims, dim, keepdim)
    if axes is not None and len(axes) != 1 and x.ndim:   # a 0-d x gives () for dim 0 or -1
        raise ValueError(f"argmax: expected one axis, got {axis if dim is None else dim!r}")
    out = x.data.argmax(axis=axes[0] if axes else None, keepdims=keep)
    return Tensor._wrap(out.astype("int64", copy=False))


def argmin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the first minimum (int64, no gradient)."""
    axes, keep = reduction_axis("argmin", x.ndim, axis, keepdims, dim, keepdim)
    if axes is not None and len(axes) != 1 and x.ndim:   # a 0-d x gives () for dim 0 or -1
        raise ValueError(f"argmin: expected one axis, got {axis if dim is None else dim!r}")
    out = x.data.argmin(axis=axes[0] if axes else None, keepdims=keep)
    return Tensor._wrap(out.astype("int64", copy=False))
