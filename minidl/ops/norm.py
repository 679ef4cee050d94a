"""Layer and batch normalisation, each one fused op.

Notation: x is normalised over the axes A (layer norm: the last
len(normalized_shape) dims; batch norm: every dim but the channel dim 1),
n = number of elements in A, xhat = (x - mean) * rstd, rstd = 1/sqrt(var + eps)
with the biased variance. Backward, with g = gy * weight::

    gx = rstd * (g - mean_A(g) - xhat * mean_A(g * xhat))
    gweight = sum_{not A}(gy * xhat),   gbias = sum_{not A}(gy)

Batch norm in eval mode (or without batch statistics) is affine in x with
the running statistics: gx = gy * weight * rstd.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from .. import backend
from ..tensor import Function, as_tensor, raw
from .activation import rowwise_kernels


class LayerNormFunction(Function):
    def __init__(self, k, eps):
        self.k, self.eps = k, eps

    def forward(self, x, w=None, b=None):
        xp = backend.get_array_module(x)
        self.fused = rowwise_kernels(x) if (w is None or w.dtype == x.dtype) and \
            (b is None or b.dtype == x.dtype) else None
        if self.fused is not None:   # one pass; saves x, the row means and rstd
            D = math.prod(x.shape[x.ndim - self.k:])
            self.x = np.ascontiguousarray(x).reshape(-1, D)
            self.w = None if w is None else np.ascontiguousarray(w).reshape(D)
            y, self.mean, self.rstd = self.fused.layer_norm_forward(
                self.x, self.w, None if b is None else np.ascontiguousarray(b).reshape(D),
                self.eps)
            return y.reshape(x.shape)
        axes = tuple(range(x.ndim - self.k, x.ndim))
        mu = x.mean(axis=axes, keepdims=True)
        xhat = x - mu
        var = (xhat * xhat).mean(axis=axes, keepdims=True)
        var += x.dtype.type(self.eps)
        rstd = 1 / xp.sqrt(var)
        xhat *= rstd
        self.xhat, self.rstd, self.w, self.axes = xhat, rstd, w, axes
        if w is None:
            return xhat.copy() if b is None else xhat + b
        y = xhat * w
        if b is not None:
            y += b
        return y

    def backward(self, gy):
        need = self.needs_input_grad
        if self.fused is not None:
            x = self.x
            gx, gw, gb = self.fused.layer_norm_backward(
                x, self.w, np.ascontiguousarray(gy, dtype=x.dtype).reshape(x.shape), self.mean,
                self.rstd, need[0])
            wshape = gy.shape[gy.ndim - self.k:]
            return (None if gx is None else gx.reshape(gy.shape),
                    gw.reshape(wshape) if len(need) > 1 and need[1] else None,
                    gb.reshape(wshape) if len(need) > 2 and need[2] else None)
        xhat, axes = self.xhat, self.axes
        lead = tuple(range(gy.ndim - self.k))
        need = self.needs_input_grad
        gx = gw = gb = None
        if len(need) > 1 and need[1]:
            gw = (gy * xhat).sum(axis=lead)
        if len(need) > 2 and need[2]:
            gb = gy.sum(axis=lead)
        if need[0]:
            g = gy * self.w if self.w is not None else gy.copy()
            t = (g * xhat).mean(axis=axes, keepdims=True)
            gx = g - g.mean(axis=axes, keepdims=True)
            gx -= xhat * t
            gx *= self.rstd
        return gx, gw, gb


def normalized_shape_tuple(op, normalized_shape):
    """An int (NumPy's too) or a sequence of ints -> a tuple of ints."""
    try:
        if not hasattr(normalized_shape, "__len__"):
            return (operator.index(normalized_shape),)
        return tuple(operator.index(n) for n in normalized_shape)
    except TypeError:
        raise TypeError(f"{op}: normalized_shape must be an int or a sequence of ints, got "
                        f"{normalized_shape!r}") from None


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalisation over the trailing ``normalized_shape`` dims, as PyTorch's."""
    x = as_tensor(input)
    shape = normalized_shape_tuple("layer_norm", normalized_shape)
    if tuple(x.shape[x.ndim - len(shape):]) != shape or x.ndim < len(shape):
        raise ValueError(f"layer_norm: input {tuple(x.shape)} does not end with normalized_shape "
                         f"{shape}")
    fn = LayerNormFunction(len(shape), eps)
    if weight is None and bias is not None:
        raise ValueError("layer_norm: a bias without a weight is not supported")
    args = [x] + [t for t in (weight, bias) if t is not None]
    return fn(*args)


class BatchNormFunction(Function):
    def __init__(self, running_mean, running_var, training, momentum, eps):
        self.rm, self.rv = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps

    def forward(self, x, w=None, b=None):
        xp = backend.get_array_module(x)
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        eps = x.dtype.type(self.eps)
        if self.training:
            n = x.size // x.shape[1]
            if n <= 1:
                raise ValueError(f"batch_norm: expected more than 1 value per channel when "
                                 f"training, got input {x.shape}")
            mu = x.mean(axis=axes, keepdims=True)
            xhat = x - mu
            var = (xhat * xhat).mean(axis=axes, keepdims=True)
            if self.rm is not None:
                m = self.momentum
                self.rm *= 1 - m
                self.rm += m * mu.reshape(-1).astype(self.rm.dtype, copy=False)
            if self.rv is not None:
                m = self.momentum
                self.rv *= 1 - m
                self.rv += (m * n / (n - 1)) * var.reshape(-1).astype(self.rv.dtype, copy=False)
            rstd = 1 / xp.sqrt(var + eps)
            xhat *= rstd
        else:
            rstd = (1 / xp.sqrt(self.rv + eps)).reshape(bshape).astype(x.dtype, copy=False)
            xhat = x - self.rm.reshape(bshape).astype(x.dtype, copy=False)
            xhat *= rstd
        self.xhat, self.rstd, self.w, self.axes, self.bshape = xhat, rstd, w, axes, bshape
        self.rm = self.rv = None  # the buffers are the module's; do not keep them alive
        y = xhat * w.reshape(bshape) if w is not None else xhat.copy()
        if b is not None:
            y += b.reshape(bshape)
        return y

    def backward(self, gy):
        xhat, axes, bshape = self.xhat, self.axes, self.bshape
        need = self.needs_input_grad
        gx = gw = gb = None
        if len(need) > 1 and need[1]:
            gw = (gy * xhat).sum(axis=axes)
        if len(need) > 2 and need[2]:
            gb = gy.sum(axis=axes)
        if need[0]:
            g = gy * self.w.reshape(bshape) if self.w is not None else gy
            if self.training:
                t = (g * xhat).mean(axis=axes, keepdims=True)
                gx = g - g.mean(axis=axes, keepdims=True)
                gx -= xhat * t
                gx *= self.rstd
            else:
                gx = g * self.rstd
        return gx, gw, gb


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalisation over every dim but dim 1, as ``torch.nn.functional.batch_norm``.

    In training, batch statistics normalise and ``running_mean``/``running_var``
    (arrays or tensors, updated in place; the variance unbiased) move by
    ``momentum``; otherwise the running statistics normalise."""
    x = as_tensor(input)
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected input (N, C, ...), got {tuple(x.shape)}")
    rm, rv = raw(running_mean), raw(running_var)
    if not training and (rm is None or rv is None):
        raise ValueError("batch_norm: eval mode needs running_mean and running_var")
    if weight is None and bias is not None:
        raise ValueError("batch_norm: a bias without a weight is not supported")
    fn = BatchNormFunction(rm, rv, bool(training), momentum, eps)
    args = [x] + [t for t in (weight, bias) if t is not None]
    return fn(*args)
