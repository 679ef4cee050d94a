"""Tensor factories (PyTorch names); random ones draw from minidl's generator."""
from __future__ import annotations

import numpy as np

from . import backend
from .random import generator_for
from .tensor import Tensor


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
    """A new tensor from array-like data (see :func:`minidl.tensor.as_array` for dtypes)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def from_numpy(array: np.ndarray) -> Tensor:
    return Tensor._wrap(array)


def zeros(*size, dtype=np.float32, device="cpu", requires_grad=False):
    return _make(backend.xp_for(device).zeros(_size(size), dtype=dtype), requires_grad)


def ones(*size, dtype=np.float32, device="cpu", requires_grad=False):
    return _make(backend.xp_for(device).ones(_size(size), dtype=dtype), requires_grad)


def full(size, fill_value, dtype=np.float32, device="cpu", requires_grad=False):
    return _make(backend.xp_for(device).full(tuple(size), fill_value, dtype=dtype), requires_grad)


def empty(*size, dtype=np.float32, device="cpu", requires_grad=False):
    return _make(backend.xp_for(device).empty(_size(size), dtype=dtype), requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    xp = backend.get_array_module(t.data)
    return _make(xp.zeros_like(t.data, dtype=dtype), requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    xp = backend.get_array_module(t.data)
    return _make(xp.ones_like(t.data, dtype=dtype), requires_grad)


def arange(start, end=None, step=1, dtype=None, device="cpu"):
    if end is None:
        start, end = 0, start
    array = np.arange(start, end, step)
    if dtype is None and array.dtype.kind == "f":
        dtype = np.float32  # float bounds give float32, as torch.arange (NumPy: float64)
    if dtype is not None:
        array = array.astype(dtype)
    return Tensor._wrap(backend.to_device(array, device))


def linspace(start, end, steps, dtype=np.float32, device="cpu"):
    return Tensor._wrap(backend.xp_for(device).linspace(start, end, steps, dtype=dtype))


def eye(n, m=None, dtype=np.float32, device="cpu"):
    return Tensor._wrap(backend.xp_for(device).eye(n, m, dtype=dtype))


def randn(*size, dtype=np.float32, device="cpu", requires_grad=False):
    xp = backend.xp_for(device)
    return _make(generator_for(xp).standard_normal(_size(size), dtype=dtype), requires_grad)


def rand(*size, dtype=np.float32, device="cpu", requires_grad=False):
    xp = backend.xp_for(device)
    return _make(generator_for(xp).random(_size(size), dtype=dtype), requires_grad)


def randint(low, high, size, device="cpu"):
    xp = backend.xp_for(device)
    return Tensor._wrap(generator_for(xp).integers(low, high, size=tuple(size), dtype=np.int64))
