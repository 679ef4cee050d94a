"""Differentiable ops, one module per family; this file also gives Tensor its methods.

* :mod:`.arith`  - elementwise arithmetic, matmul, pointwise activations
* :mod:`.reduce` - sum, mean, max, min, var, argmax
* :mod:`.shape`  - reshape, transpose, indexing, concat, broadcast, pad
* :mod:`.conv`   - conv2d and 2-D pooling (im2col kernels in ``minidl.kernels``)
"""
from __future__ import annotations

import operator

import numpy as np

from .. import backend
from ..tensor import Tensor, is_grad_enabled, raw
from . import arith, reduce, shape
from .arith import (abs, add, cast, clamp, clip, cos, div, exp, log, masked_fill, matmul,
                    maximum, minimum, mul, neg, pow, relu, sigmoid, sin, sqrt, sub, tanh, tril,
                    triu, where)
from .reduce import amax, amin, argmax, argmin, logsumexp, max, mean, min, std, sum, var
from .shape import (broadcast_to, cat, chunk, concat, concatenate, expand, expand_dims, flatten,
                    flip, gather, getitem, pad, permute, repeat, reshape, split, squeeze, stack,
                    swapaxes, transpose, unsqueeze, view)
from .einsum import bmm, einsum


def _compare(op):
    """Comparisons give boolean tensors with no gradient. Against None or a string,
    Python's own rule: ``t == None`` is False (as PyTorch), ``t < None`` a TypeError."""
    def method(self, other):
        if other is None or isinstance(other, (str, bytes)):
            return NotImplemented
        a, b = arith.operands(self, other)
        return Tensor._wrap(op(a._data, b._data))
    method.__name__ = op.__name__
    return method


# ------------------------------------------------------------ in-place
# minidl records no in-place op in a graph. Where no gradient is involved
# (parameter updates under no_grad, counters, masks) PyTorch's in-place ops
# change the tensor itself; without them Python would rebind the name, and
# ``p -= lr * g`` would leave the weights as they were. Where a graph is being
# recorded, ``x += y`` builds a new node (x = x + y: the values and gradients
# PyTorch gives, e.g. for summing losses), but on a leaf that requires grad it
# raises, as PyTorch; the methods (add_, ...) and item assignment raise there.

def _records(target, other=None):
    return is_grad_enabled() and (target.requires_grad
                                  or getattr(other, "requires_grad", False))


def _check_inplace(op, target, other=None):
    if _records(target, other):
        raise RuntimeError(
            f"{op}: in-place update of a tensor that takes part in autograd; minidl records "
            "no in-place ops: write x = x + y to build the graph, or update under "
            "minidl.no_grad() (as optimizers do)")


def _ufunc_in_place(target, ufunc_name, other):
    """``target._data = ufunc(target._data, other)`` in the same array.

    same_kind casting: an integer tensor cannot take a float result, as in PyTorch."""
    ufunc = getattr(backend.get_array_module(target._data), ufunc_name)
    ufunc(target._data, other, out=target._data, casting="same_kind")
    return target


def _augmented(ufunc_name, op, out_of_place):
    """``x += y`` and its kin: in place, or a new node while a graph is recorded."""
    def method(self, other):
        if _records(self, other):
            if self.is_leaf and self.requires_grad:
                raise RuntimeError(f"{op}: a leaf tensor that requires grad cannot be changed "
                                   "in place while recording (update it under "
                                   "minidl.no_grad(), as optimizers do)")
            result = out_of_place(self, other)
            if result.shape != self.shape:   # in place, x cannot grow
                raise RuntimeError(f"{op}: the result's shape {result.shape} differs from the "
                                   f"tensor's {self.shape} (an in-place op keeps the shape)")
            # and keeps the dtype, as PyTorch's (float32 += float64 stays float32)
            return result if result.dtype == self.dtype else arith.cast(result, self.dtype)
        return _ufunc_in_place(self, ufunc_name, raw(other))
    method.__name__ = op
    return method


def _inplace(ufunc_name, op):
    def method(self, other):
        _check_inplace(op, self, other)
        return _ufunc_in_place(self, ufunc_name, raw(other))
    method.__name__ = op
    return method


def _scaled_inplace(ufunc_name, op):
    """``add_(other, alpha=1)`` / ``sub_``: PyTorch's in-place methods."""
    def method(self, other, alpha=1):
        _check_inplace(op, self, other)
        other = raw(other)
        if alpha != 1:
            if self._data.dtype.kind in "iub" and isinstance(alpha, float):
                raise TypeError(f"{op}: alpha must not be a float for an integer tensor "
                                f"(got {alpha}), as in PyTorch")
            other = other * self._data.dtype.type(alpha)
        return _ufunc_in_place(self, ufunc_name, other)
    method.__name__ = op
    return method


def _on_device_of(self, value):
    """``value`` (a tensor, array, list or number) as something ``self``'s array
    takes in an assignment: arrays of the other device are copied over, as
    PyTorch's ``t[k] = v`` and ``copy_`` do (CuPy refuses NumPy arrays there)."""
    value = raw(value)
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    if getattr(value, "ndim", None) is not None and not np.isscalar(value) and \
            backend.device_of(value) != self.device:
        value = backend.to_device(value, self.device)
    return value


def _setitem(self, key, value):
    _check_inplace("__setitem__", self, value)
    key = shape.raw_key(key)
    value = _on_device_of(self, value)
    split = shape.split_int_indices(key, self.ndim)
    if split is not None:   # PyTorch's order: the ints first (a view), then the rest
        self._data[split[0]][split[1]] = value
        return
    self._data[key] = value


def _zero_(self):
    _check_inplace("zero_", self)
    self._data[...] = 0
    return self


def _fill_(self, value):
    _check_inplace("fill_", self)
    if getattr(value, "ndim", 0):
        raise ValueError(f"fill_: expects a number or a 0-d tensor, got shape {value.shape}")
    self._data[...] = _on_device_of(self, value)
    return self


def _copy_(self, source):
    """PyTorch's ``copy_``: source's values (broadcast to self's shape), from any device."""
    _check_inplace("copy_", self, source)
    self._data[...] = _on_device_of(self, source)
    return self


def _bitwise(ufunc_name):
    """``&``, ``|``, ``^`` of bool or integer tensors (masks): no gradient."""
    def method(self, other):
        xp = backend.get_array_module(self._data)
        return Tensor._wrap(getattr(xp, ufunc_name)(self._data, raw(other)))
    method.__name__ = ufunc_name
    return method


def _invert(self):
    """``~mask``: logical not of a bool tensor, bitwise not of an integer one."""
    if self._data.dtype.kind not in "biu":
        raise TypeError(f"~: needs a bool or integer tensor, got dtype {self.dtype}")
    return Tensor._wrap(~self._data)


def _reflected(fn):
    def method(self, other):
        return fn(other, self)
    return method


def _install_tensor_methods():
    methods = {
        "__add__": add, "__radd__": _reflected(add),
        "__sub__": sub, "__rsub__": _reflected(sub),
        "__mul__": mul, "__rmul__": _reflected(mul),
        "__truediv__": div, "__rtruediv__": _reflected(div),
        "__pow__": pow, "__rpow__": _reflected(pow),
        "__matmul__": matmul, "__rmatmul__": _reflected(matmul),
        "__neg__": neg, "__pos__": lambda self: self, "__abs__": abs,
        "__getitem__": getitem,
        "__and__": _bitwise("bitwise_and"), "__or__": _bitwise("bitwise_or"),
        "__xor__": _bitwise("bitwise_xor"), "__rand__": _bitwise("bitwise_and"),
        "__ror__": _bitwise("bitwise_or"), "__rxor__": _bitwise("bitwise_xor"),
        "__invert__": _invert,
        "__iand__": _inplace("bitwise_and", "__iand__"),
        "__ior__": _inplace("bitwise_or", "__ior__"),
        "__ixor__": _inplace("bitwise_xor", "__ixor__"),
        "__eq__": _compare(operator.eq), "__ne__": _compare(operator.ne),
        "__lt__": _compare(operator.lt), "__le__": _compare(operator.le),
        "__gt__": _compare(operator.gt), "__ge__": _compare(operator.ge),
        "add": add, "sub": sub, "mul": mul, "div": div, "pow": pow, "matmul": matmul,
        "neg": neg, "exp": exp, "log": log, "sqrt": sqrt, "abs": abs, "tanh": tanh,
        "sigmoid": sigmoid, "relu": relu, "clip": clip, "clamp": clamp,
        "sin": sin, "cos": cos, "tril": tril, "triu": triu,
        "maximum": maximum, "minimum": minimum, "masked_fill": masked_fill,
        "sum": sum, "mean": mean, "max": max, "min": min, "amax": amax, "amin": amin,
        "var": var, "std": std, "logsumexp": logsumexp,
        "argmax": argmax, "argmin": argmin,
        "reshape": reshape, "view": view, "flatten": flatten, "squeeze": squeeze,
        "unsqueeze": unsqueeze, "permute": permute, "transpose": transpose,
        "swapaxes": swapaxes, "expand": expand, "broadcast_to": broadcast_to,
        "expand_as": lambda self, other: broadcast_to(self, tuple(other.shape)),
        "eq": _compare(operator.eq), "ne": _compare(operator.ne),
        "lt": _compare(operator.lt), "le": _compare(operator.le),
        "gt": _compare(operator.gt), "ge": _compare(operator.ge),
        "view_as": lambda self, other: reshape(self, tuple(other.shape)),
        "split": split, "chunk": chunk, "flip": flip, "repeat": repeat, "gather": gather,
    }
    methods.update({
        "__iadd__": _augmented("add", "__iadd__", add),
        "__isub__": _augmented("subtract", "__isub__", sub),
        "__imul__": _augmented("multiply", "__imul__", mul),
        "__itruediv__": _augmented("true_divide", "__itruediv__", div),
        "add_": _scaled_inplace("add", "add_"), "sub_": _scaled_inplace("subtract", "sub_"),
        "mul_": _inplace("multiply", "mul_"), "div_": _inplace("true_divide", "div_"),
        "__setitem__": _setitem, "zero_": _zero_, "fill_": _fill_, "copy_": _copy_,
    })
    for name, fn in methods.items():
        setattr(Tensor, name, fn)
    Tensor.T = property(lambda self: transpose(self))
    Tensor.mT = property(lambda self: swapaxes(self, -1, -2))
    Tensor.__array_priority__ = 1000


_install_tensor_methods()

# sorting and in-place random fills live in their own modules
from .sorting import argsort, multinomial, sort, topk  # noqa: E402
from . import random_fill as _random_fill  # noqa: E402

_random_fill.install(Tensor)
for _name in ("sort", "argsort", "topk", "multinomial"):
    setattr(Tensor, _name, globals()[_name])
