"""Differentiable ops, one module per family; this file also gives Tensor its methods.

* :mod:`.arith`  - elementwise arithmetic, matmul, pointwise activations
* :mod:`.reduce` - sum, mean, max, min, var, argmax
* :mod:`.shape`  - reshape, transpose, indexing, concat, broadcast, pad
* :mod:`.conv`   - conv2d and 2-D pooling (im2col kernels in ``minidl.kernels``)
"""
from __future__ import annotations

import operator

from ..tensor import Tensor
from . import arith, reduce, shape
from .arith import (abs, add, cast, clamp, clip, div, exp, log, matmul, maximum, minimum, mul,
                    neg, pow, relu, sigmoid, sqrt, sub, tanh, where)
from .reduce import argmax, argmin, max, mean, min, std, sum, var
from .shape import (broadcast_to, cat, concat, concatenate, expand, expand_dims, flatten,
                    getitem, pad, permute, reshape, squeeze, stack, swapaxes, transpose,
                    unsqueeze, view)


def _compare(op):
    """Comparisons give boolean tensors with no gradient."""
    def method(self, other):
        a, b = arith.operands(self, other)
        return Tensor._wrap(op(a.data, b.data))
    method.__name__ = op.__name__
    return method


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
        "__eq__": _compare(operator.eq), "__ne__": _compare(operator.ne),
        "__lt__": _compare(operator.lt), "__le__": _compare(operator.le),
        "__gt__": _compare(operator.gt), "__ge__": _compare(operator.ge),
        "add": add, "sub": sub, "mul": mul, "div": div, "pow": pow, "matmul": matmul,
        "neg": neg, "exp": exp, "log": log, "sqrt": sqrt, "abs": abs, "tanh": tanh,
        "sigmoid": sigmoid, "relu": relu, "clip": clip, "clamp": clamp,
        "maximum": maximum, "minimum": minimum,
        "sum": sum, "mean": mean, "max": max, "min": min, "var": var, "std": std,
        "argmax": argmax, "argmin": argmin,
        "reshape": reshape, "view": view, "flatten": flatten, "squeeze": squeeze,
        "unsqueeze": unsqueeze, "permute": permute, "transpose": transpose,
        "swapaxes": swapaxes, "expand": expand, "broadcast_to": broadcast_to,
    }
    for name, fn in methods.items():
        setattr(Tensor, name, fn)
    Tensor.T = property(lambda self: transpose(self))
    Tensor.mT = property(lambda self: swapaxes(self, -1, -2))
    Tensor.__array_priority__ = 1000


_install_tensor_methods()
