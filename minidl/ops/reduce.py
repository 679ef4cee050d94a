"""Reductions: sum, mean, max, min, var, and the non-differentiable arg-reductions.

Each takes NumPy's ``axis``/``keepdims`` and PyTorch's ``dim``/``keepdim`` as
aliases. ``amax``/``amin`` return values only, their gradient shared equally
among tied maxima (``torch.amax``'s semantics). ``max``/``min`` are
PyTorch's: over everything, the value; over one ``dim``, the named tuple
``(values, indices)``, the gradient going to the returned index; with a
second tensor, the elementwise maximum. Given NumPy's ``axis=`` they behave
as ``amax``/``amin``, as NumPy's ``max``.
"""
from __future__ import annotations

import builtins
import collections

import numpy as np

from .. import backend
from ..tensor import Function, Tensor, as_tensor
from .arith import as_float, maximum, minimum
from .shape import getitem, normalize_dim, unsqueeze


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
        gy = gy.reshape(_kept_shape(in_shape, axes))
    return xp.broadcast_to(gy, in_shape)


def sum_dtype(x, axes):
    """The dtype to sum ``x`` over ``axes`` in: float64 for a long float32 reduction.
    NumPy sums pairwise only along the contiguous axis, and along any other adds
    one row after another, so a float32 mean over dim 0 of a (4e6, 2) tensor was
    2.5 % off (PyTorch: 6e-8); None (x's own dtype) otherwise."""
    if x.dtype == np.float32 and _count(x.shape, axes) > 4096:
        return np.float64
    return None


def sum_of(x, axes, keepdims):
    """x.sum over ``axes``, accumulated in :func:`sum_dtype`, in x's dtype."""
    acc = sum_dtype(x, axes)
    y = x.sum(axis=axes, keepdims=keepdims, dtype=acc)
    return y if acc is None else y.astype(x.dtype)


def finite_max(x, axes, xp):
    """x.max over ``axes`` (keepdims) with non-finite maxima (+-inf, NaN rows) made 0,
    and 0 over no elements: the shift that keeps exp(x - m) from overflowing
    (softmax, cross-entropy, logsumexp) without an inf - inf."""
    if _count(x.shape, axes) == 0:
        return xp.zeros(_kept_shape(x.shape, axes), dtype=x.dtype)
    m = x.max(axis=axes, keepdims=True)
    return xp.where(xp.isfinite(m), m, x.dtype.type(0))


def mean_of(x, axes, keepdims):
    """x.mean over ``axes`` (float64 accumulation as :func:`sum_dtype` says); NaN
    without a warning over no elements, as PyTorch (NumPy warns "Mean of empty
    slice", which the tests, and users' logs, would see on every masked loss)."""
    if _count(x.shape, axes) == 0:
        shape = _kept_shape(x.shape, axes) if keepdims else _reduced_shape(x.shape, axes)
        return backend.get_array_module(x).full(shape, np.nan, dtype=x.dtype)
    acc = sum_dtype(x, axes)
    y = x.mean(axis=axes, keepdims=keepdims, dtype=acc)
    return y if acc is None else y.astype(x.dtype)



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
        return sum_of(x, self.axes, self.keepdims)

    def backward(self, gy):
        return _unreduce(gy, self.in_shape, self.axes, self.keepdims)


class Mean(Function):
    def __init__(self, axes, keepdims):
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        self.in_shape = x.shape
        return mean_of(x, self.axes, self.keepdims)

    def backward(self, gy):
        scale = gy.dtype.type(1.0 / builtins.max(_count(self.in_shape, self.axes), 1))
        return _unreduce(gy * scale, self.in_shape, self.axes, self.keepdims)


class MaxMin(Function):
    """amax/amin: the gradient shared equally by the elements equal to the result
    (NaN over a slice whose result is NaN, as torch.amax). ``nan_to_nans``: a NaN
    result sends its gradient to the NaN elements instead, as PyTorch's
    ``x.max()``/``x.min()`` over everything."""

    def __init__(self, axes, keepdims, is_max, nan_to_nans=False):
        self.axes, self.keepdims, self.is_max = axes, keepdims, is_max
        self.nan_to_nans = nan_to_nans

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
        xp = backend.get_array_module(gy)
        mask = self.x == self.y_keep
        if self.nan_to_nans:   # NaN == NaN is False
            mask |= xp.isnan(self.x) & xp.isnan(self.y_keep)
        ties = mask.sum(axis=self.axes, keepdims=True).astype(gy.dtype)
        g = _unreduce(gy, self.x.shape, self.axes, self.keepdims)
        with np.errstate(divide="ignore", invalid="ignore"):   # a NaN slice: 0/0, quietly
            return g * mask / ties


def _kept_shape(shape, axes):
    """The shape of a reduction over ``axes`` with keepdims (1 there)."""
    return tuple(1 if axes is None or i in axes else s for i, s in enumerate(shape))


def _reduced_shape(shape, axes):
    if axes is None:
        return ()
    return tuple(s for i, s in enumerate(shape) if i not in axes)


class Var(Function):
    """Variance with ``ddof`` (0: NumPy's default; 1: PyTorch's unbiased)."""

    def __init__(self, axes, keepdims, ddof):
        self.axes, self.keepdims, self.ddof = axes, keepdims, ddof

    def forward(self, x):
        self.n = n = _count(x.shape, self.axes)
        acc = np.dtype(sum_dtype(x, self.axes) or x.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):   # NaN or inf when ddof >= n
            c = x - mean_of(x, self.axes, True)
            # The corrected two-pass formula: the rounding error e of a float mean
            # puts n e^2 into sum(c^2) (a 1e4 + N(0, 0.01) float32 variance was 0.3 %
            # off); sum(c) = -n e measures it and takes it out.
            s1 = c.sum(axis=self.axes, keepdims=True, dtype=acc)
            sq = (c * c).sum(axis=self.axes, keepdims=True, dtype=acc)
            var = (sq - s1 * s1 / acc.type(n)) / acc.type(builtins.max(n - self.ddof, 0))
            var = var.astype(x.dtype, copy=False)
            c -= (s1 / acc.type(n)).astype(x.dtype, copy=False)   # the centred x, for backward
        # sq >= s1^2 / n exactly; rounding may leave a tiny negative (NaN under std)
        var = backend.get_array_module(var).maximum(var, var.dtype.type(0))
        self.centered = c
        var = var if self.keepdims else var.reshape(_reduced_shape(x.shape, self.axes))
        return var

    def backward(self, gy):
        c = self.centered
        # 2 / (n - ddof) as PyTorch's: inf when ddof >= n, where the variance is NaN or
        # inf, so the gradient is not silently finite there
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = c.dtype.type(np.float64(2.0) / np.float64(self.n - self.ddof))
            return _unreduce(gy, c.shape, self.axes, self.keepdims) * (c * scale)


class LogSumExp(Function):
    """y = log(sum(exp(x))) over ``axes``, shifted by the maximum so that no exp
    overflows; gx = gy * exp(x - y) (the softmax), as PyTorch's (NaN where y is
    infinite, as there)."""

    def __init__(self, axes, keepdims):
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        xp = backend.get_array_module(x)
        x = as_float(x)
        m = finite_max(x, self.axes, xp)   # over nothing: 0, and log(0) = -inf
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            y = xp.log(xp.exp(x - m).sum(axis=self.axes, keepdims=True)) + m
        self.x, self.y_keep = x, y
        return y if self.keepdims else y.reshape(_reduced_shape(x.shape, self.axes))

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        with np.errstate(invalid="ignore", over="ignore"):
            p = xp.exp(self.x - self.y_keep)
        return _unreduce(gy, self.x.shape, self.axes, self.keepdims) * p


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
    x = as_tensor(x)
    axes, keep = reduction_axis("sum", x.ndim, axis, keepdims, dim, keepdim)
    return Sum(axes, keep)(x)


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    x = as_tensor(x)
    axes, keep = reduction_axis("mean", x.ndim, axis, keepdims, dim, keepdim)
    if x._data.dtype.kind not in "fc":
        raise TypeError(f"mean: expected a floating-point tensor, got dtype {x.dtype}")
    return Mean(axes, keep)(x)


def logsumexp(x, dim, keepdim=False):
    """log(sum(exp(x))) over ``dim`` (one or several), computed stably, as
    ``torch.logsumexp``; integer input gives float32."""
    x = as_tensor(x)
    axes, keep = reduction_axis("logsumexp", x.ndim, dim, keepdim)
    return LogSumExp(axes, keep)(x)


def amax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """The maximum over ``dim`` (one or several, default all): values only,
    the gradient shared equally among tied maxima (``torch.amax``)."""
    x = as_tensor(x)
    axes, keep = reduction_axis("amax", x.ndim, axis, keepdims, dim, keepdim)
    return MaxMin(axes, keep, True)(x)


def amin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """The minimum over ``dim``: values only (``torch.amin``)."""
    x = as_tensor(x)
    axes, keep = reduction_axis("amin", x.ndim, axis, keepdims, dim, keepdim)
    return MaxMin(axes, keep, False)(x)


# torch.return_types.max / min: unpacks as (values, indices)
MaxResult = collections.namedtuple("max", ["values", "indices"])
MinResult = collections.namedtuple("min", ["values", "indices"])


def max(x, dim=None, keepdim=False, *, axis=None, keepdims=None):  # noqa: A001
    """PyTorch's ``max``: ``x.max()`` the largest value; ``x.max(dim)`` the
    named tuple ``(values, indices)``, as ``torch.max`` (the gradient goes to
    the returned index, the first maximum); ``max(x, other)`` the elementwise
    maximum. With NumPy's ``axis=``, values only, as :func:`amax`."""
    return _max_min(x, dim, keepdim, axis, keepdims, True)


def min(x, dim=None, keepdim=False, *, axis=None, keepdims=None):  # noqa: A001
    """PyTorch's ``min``: see :func:`max`."""
    return _max_min(x, dim, keepdim, axis, keepdims, False)


def _max_min(x, dim, keepdim, axis, keepdims, is_max):
    x = as_tensor(x)
    op = "max" if is_max else "min"
    if isinstance(dim, Tensor) or getattr(dim, "ndim", 0):   # torch.max(a, b): an array
        return (maximum if is_max else minimum)(x, dim)
    keep = bool(keepdim if keepdims is None else keepdims)   # either spelling
    if axis is not None:   # NumPy's spelling: values
        return (amax if is_max else amin)(x, axis, keep)
    if dim is None:        # everything: the value
        return MaxMin(None, keep, is_max, nan_to_nans=True)(x)
    if isinstance(dim, (tuple, list)):
        raise TypeError(f"{op}: dim must be one int (the values and indices along it); "
                        f"use {'amax' if is_max else 'amin'} to reduce over {tuple(dim)}")
    return _values_and_indices(op, x, dim, keep, is_max)


def _values_and_indices(op, x, dim, keepdim, is_max):
    d = normalize_dim(op, dim, x.ndim)
    data = x._data
    xp = backend.get_array_module(data)
    if x.ndim == 0:   # dim 0 or -1 of a 0-d tensor: (a copy of) the value, index 0
        values, index = x.clone(), xp.zeros((), dtype="int64")
    else:
        if data.shape[d] == 0:
            raise ValueError(f"{op}: cannot reduce over dim {d} of size 0 of a tensor of "
                             f"shape {data.shape}")
        index = (data.argmax if is_max else data.argmin)(axis=d).astype("int64", copy=False)
        # gather x at the index: an index array per other dim, broadcast against it
        grids = [xp.arange(n).reshape([n if k == i else 1 for k in range(index.ndim)])
                 for i, n in enumerate(index.shape)]
        values = getitem(x, tuple(grids[:d]) + (index,) + tuple(grids[d:]))
    if keepdim and x.ndim:
        values, index = unsqueeze(values, d), xp.expand_dims(index, d)
    return (MaxResult if is_max else MinResult)(values, Tensor._wrap(index))


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None,
        keepdims=None, ddof=None):
    """Variance with PyTorch's default, Bessel's correction (divides by N - 1);
    ``correction=0``, ``unbiased=False`` or NumPy's ``ddof=0`` divide by N.
    Positional arguments as PyTorch's ``var(dim, unbiased, keepdim)``."""
    return _variance(Var, "var", x, axis, keepdims, ddof, dim, keepdim, correction, unbiased)


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None,
        keepdims=None, ddof=None):
    """Standard deviation, the square root of :func:`var` (same arguments); its
    gradient is 0 where std is 0, as PyTorch's."""
    return _variance(Std, "std", x, axis, keepdims, ddof, dim, keepdim, correction, unbiased)


def _variance(op_class, op, x, axis, keepdims, ddof, dim, keepdim, correction, unbiased):
    x = as_tensor(x)
    if correction is not None:
        ddof = correction
    elif unbiased is not None:
        ddof = 1 if unbiased else 0
    elif ddof is None:
        ddof = 1   # PyTorch's default
    axes, keep = reduction_axis(op, x.ndim, axis, bool(keepdims), dim,
                                keepdim if keepdims is None else None)
    if x._data.dtype.kind not in "fc":
        raise TypeError(f"{op}: expected a floating-point tensor, got dtype {x.dtype}")
    return op_class(axes, keep, ddof)(x)


def argmax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the first maximum (int64, no gradient)."""
    return _arg_reduce("argmax", x, axis, keepdims, dim, keepdim)


def argmin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the first minimum (int64, no gradient)."""
    return _arg_reduce("argmin", x, axis, keepdims, dim, keepdim)


def _arg_reduce(op, x, axis, keepdims, dim, keepdim):
    x = as_tensor(x)
    axes, keep = reduction_axis(op, x.ndim, axis, keepdims, dim, keepdim)
    if axes is not None and len(axes) != 1 and x.ndim:   # a 0-d x gives () for dim 0 or -1
        raise ValueError(f"{op}: expected one axis, got {axis if dim is None else dim!r}")
    out = getattr(x._data, op)(axis=axes[0] if axes else None, keepdims=keep)
    return Tensor._wrap(out.astype("int64", copy=False))
