"""Sorting ops with PyTorch's names: ``sort``, ``argsort``, ``topk``, ``multinomial``.

``sort`` and ``topk`` return ``(values, indices)`` named tuples, as
``torch.return_types``; the gradient of the values goes back to the
positions they came from (indices along ``dim`` are distinct, so one
scatter per call, no accumulation).
"""
from __future__ import annotations

import collections

import numpy as np

from .. import backend
from ..tensor import Function, Tensor, as_array, raw

SortResult = collections.namedtuple("sort", ["values", "indices"])
TopKResult = collections.namedtuple("topk", ["values", "indices"])


def _dim(op, x, dim):
    ndim = max(x.ndim, 1)
    if isinstance(dim, bool) or int(dim) != dim or not -ndim <= dim < ndim:
        raise IndexError(f"{op}: dim {dim!r} is out of range for a tensor of shape "
                         f"{tuple(x.shape)}")
    return int(dim) % ndim


def _order(x, axis, descending, xp):
    """Indices sorting ``x`` along ``axis``, ties in their original order (stable)."""
    if not descending:
        return xp.argsort(x, axis=axis, kind="stable")
    if x.dtype.kind == "b":
        x = x.astype(np.int8)
    if x.dtype.kind == "u":
        x = x.astype(np.int64) if x.dtype.itemsize < 8 else x
    if x.dtype.kind in "fi":
        # negating keeps ties in order; NaN counts as the largest (PyTorch's rule),
        # so descending it moves to the front with a second stable pass
        keys = -x.astype(np.float64) if x.dtype.kind == "i" else -x
        order = xp.argsort(keys, axis=axis, kind="stable")
        if x.dtype.kind == "f":
            nan_first = xp.argsort(~xp.isnan(xp.take_along_axis(x, order, axis)), axis=axis,
                                   kind="stable")
            order = xp.take_along_axis(order, nan_first, axis)
        return order
    raise TypeError(f"sort: unsupported dtype {x.dtype}")


class Gather(Function):
    """values = x taken at ``index`` along ``axis`` (distinct positions)."""

    def __init__(self, index, axis):
        self.index, self.axis = index, axis

    def forward(self, x):
        self.shape = x.shape
        return backend.get_array_module(x).take_along_axis(x, self.index, self.axis)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        gx = xp.zeros(self.shape, gy.dtype)
        xp.put_along_axis(gx, self.index, gy, self.axis)
        return gx


def _take(x, index, axis):
    x = x if isinstance(x, Tensor) else Tensor(x)
    if x.ndim == 0:
        return x
    return Gather(index, axis)(x)


def sort(input, dim=-1, descending=False, stable=False):
    """``(values, indices)`` sorted along ``dim`` (ascending unless ``descending``);
    ties keep their order (always stable)."""
    x = as_array(input)
    axis = _dim("sort", x, dim)
    if x.ndim == 0:
        return SortResult(_take(input, None, 0), Tensor._wrap(np.zeros((), np.int64)))
    index = _order(x, axis, descending, backend.get_array_module(x)).astype(np.int64)
    return SortResult(_take(input, index, axis), Tensor._wrap(index))


def argsort(input, dim=-1, descending=False, stable=False):
    """The indices that sort ``input`` along ``dim`` (int64)."""
    return sort(input, dim, descending, stable).indices


def topk(input, k, dim=-1, largest=True, sorted=True):
    """The ``k`` largest (``largest=False``: smallest) elements along ``dim`` and
    their indices, largest first, as ``torch.topk``."""
    x = as_array(input)
    axis = _dim("topk", x, dim)
    n = x.shape[axis] if x.ndim else 1
    if isinstance(k, bool) or int(k) != k or not 0 <= k <= n:
        raise ValueError(f"topk: k={k!r} must be an int in [0, {n}] (the size of dim {dim})")
    if x.ndim == 0:
        return TopKResult(_take(input, None, 0), Tensor._wrap(np.zeros((), np.int64)))
    xp = backend.get_array_module(x)
    index = _order(x, axis, largest, xp).astype(np.int64)
    index = xp.ascontiguousarray(xp.take(index, xp.arange(int(k)), axis=axis))
    return TopKResult(_take(input, index, axis), Tensor._wrap(index))


def multinomial(input, num_samples, replacement=False, *, generator=None):
    """Draw ``num_samples`` category indices per row of the weights ``input``
    ((C,) or (N, C), non-negative, not necessarily summing to 1), as
    ``torch.multinomial``; from minidl's generator unless ``generator`` is given."""
    from ..random import default_generator
    probs = backend.as_numpy(raw(input) if isinstance(input, Tensor) else as_array(input))
    if probs.ndim not in (1, 2) or probs.dtype.kind != "f":
        raise ValueError(f"multinomial: input must be a 1-D or 2-D float tensor of weights, "
                         f"got shape {tuple(probs.shape)} {probs.dtype}")
    rows = probs.reshape(-1, probs.shape[-1]).astype(np.float64)
    if not np.all(np.isfinite(rows)) or (rows < 0).any():
        raise ValueError("multinomial: weights must be finite and non-negative")
    if (rows.sum(1) <= 0).any():
        raise ValueError("multinomial: every row of weights must have a positive sum")
    C = rows.shape[1]
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"multinomial: num_samples must be a positive int, got {num_samples!r}")
    if not replacement and (num_samples > C or ((rows > 0).sum(1) < num_samples).any()):
        raise ValueError(f"multinomial: cannot draw {num_samples} samples without replacement "
                         f"from rows with fewer non-zero weights")
    rng = generator or default_generator()
    out = np.stack([rng.choice(C, int(num_samples), replace=bool(replacement), p=row / row.sum())
                    for row in rows]).astype(np.int64)
    out = out.reshape(probs.shape[:-1] + (int(num_samples),))
    return Tensor._wrap(backend.to_device(out, backend.device_of(raw(input))))


__all__ = ["sort", "argsort", "topk", "multinomial"]
