"""Tensor factories (PyTorch names); random ones draw from minidl's generator."""
from __future__ import annotations

import numpy as np

from . import backend
from .random import generator_for
from .tensor import Tensor, as_array, raw


def _make(array, requires_grad):
    t = Tensor._wrap(array)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _size(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        return tuple(size[0])
    return tuple(size)


def tensor(data, requires_grad=False, dtype=None, device=None) -> Tensor:
    """A new tensor from array-like data (see :func:`minidl.tensor.as_array` for
    dtypes). Always a copy, as ``torch.tensor``: an optimizer updating the
    tensor never writes into the caller's array (:func:`from_numpy` shares)."""
    source = raw(data)
    t = Tensor(source, requires_grad=requires_grad, dtype=dtype, device=device)
    if t._data is source:
        t._data = t._data.copy()
    return t


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing ``array``'s memory (writes show through both ways)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    return Tensor._wrap(array)


def zeros(*size, dtype=np.float32, device="cpu", requires_grad=False):
    return _make(backend.xp_for(device).zeros(_size(size), dtype=dtype), requires_grad)


def ones(*size, dtype=np.float32, device="cpu", requires_grad=False):
    return _make(backend.xp_for(device).ones(_size(size), dtype=dtype), requires_grad)


def full(size, fill_value, dtype=None, device="cpu", requires_grad=False):
    """A tensor of ``size`` filled with ``fill_value``; without ``dtype``, the
    value's (as ``torch.full``: a float gives float32, an int int64, a bool bool)."""
    if dtype is None:
        dtype = as_array(fill_value).dtype
    return _make(backend.xp_for(device).full(tuple(size), fill_value, dtype=dtype), requires_grad)


def empty(*size, dtype=np.float32, device="cpu", requires_grad=False):
    return _make(backend.xp_for(device).empty(_size(size), dtype=dtype), requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    xp = backend.get_array_module(t._data)
    return _make(xp.zeros_like(t._data, dtype=dtype), requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    xp = backend.get_array_module(t._data)
    return _make(xp.ones_like(t._data, dtype=dtype), requires_grad)


def arange(start, end=None, step=1, dtype=None, device="cpu"):
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange: step must be non-zero")
    array = np.arange(start, end, step)
    if dtype is None and array.dtype.kind == "f":
        dtype = np.float32  # float bounds give float32, as torch.arange (NumPy: float64)
    if dtype is not None:
        array = array.astype(dtype)
    return Tensor._wrap(backend.to_device(array, device))


def linspace(start, end, steps, dtype=np.float32, device="cpu"):
    """``steps`` values from start to end; an integer dtype truncates them toward 0,
    as PyTorch's (NumPy's own integer linspace rounds down)."""
    dtype = np.dtype(dtype)
    xp = backend.xp_for(device)
    if dtype.kind in "iu":
        return Tensor._wrap(xp.linspace(start, end, steps).astype(dtype))
    return Tensor._wrap(xp.linspace(start, end, steps, dtype=dtype))


def eye(n, m=None, dtype=np.float32, device="cpu"):
    return Tensor._wrap(backend.xp_for(device).eye(n, m, dtype=dtype))


def randn(*size, dtype=np.float32, device="cpu", requires_grad=False):
    xp = backend.xp_for(device)
    return _make(generator_for(xp).standard_normal(_size(size), dtype=dtype), requires_grad)


def rand(*size, dtype=np.float32, device="cpu", requires_grad=False):
    xp = backend.xp_for(device)
    return _make(generator_for(xp).random(_size(size), dtype=dtype), requires_grad)


def randint(low, high=None, size=None, device="cpu", *, dtype=np.int64):
    """Integers uniform in [low, high), as ``torch.randint``: ``randint(high, size)``
    or ``randint(low, high, size)``."""
    if size is None and isinstance(high, (tuple, list)):   # randint(high, size)
        low, high, size = 0, low, high
    elif high is None:                                     # randint(high, size=...)
        low, high = 0, low
    if size is None:
        raise TypeError("randint: expected randint(high, size) or randint(low, high, size)")
    xp = backend.xp_for(device)
    return Tensor._wrap(generator_for(xp).integers(low, high, size=tuple(size), dtype=dtype))


def randperm(n, *, generator=None, dtype=np.int64, device="cpu", requires_grad=False):
    """A random permutation of 0..n-1, as ``torch.randperm``; drawn from minidl's
    generator (``minidl.manual_seed``) or from ``generator`` (a NumPy or CuPy
    ``Generator``)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"randperm: n must be a non-negative int, got {n!r}")
    xp = backend.xp_for(device)
    rng = generator_for(xp) if generator is None else generator
    if hasattr(rng, "permutation"):
        perm = rng.permutation(int(n))
    else:   # CuPy's Generator has no permutation: the order that sorts uniform draws
        perm = xp.argsort(rng.random(int(n)))
    return _make(perm.astype(dtype, copy=False), requires_grad)
