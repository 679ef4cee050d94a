"""Binary cross-entropy on probabilities (``F.binary_cross_entropy``) and channel
dropout (``F.dropout2d``), with PyTorch's signatures.

``binary_cross_entropy``: l = -w (y log x + (1 - y) log(1 - x)), each log
clamped at -100 as PyTorch's (so x = 0 or 1 gives a finite loss); the
gradient in x is w (x - y) / max(x (1 - x), 1e-12).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Function, as_tensor, raw
from .arith import cast
from .loss import _check_reduction, _reduce, _unreduce, legacy_reduction


class BinaryCrossEntropy(Function):
    def __init__(self, weight, reduction):
        self.weight, self.reduction = weight, reduction

    def forward(self, x, y):
        xp = backend.get_array_module(x)
        if x.size and (xp.any(x < 0) or xp.any(x > 1)):
            raise ValueError("binary_cross_entropy: all elements of input should be between 0 "
                             "and 1 (probabilities; for logits use "
                             "binary_cross_entropy_with_logits)")
        floor = x.dtype.type(-100)
        with np.errstate(divide="ignore"):
            log_x = xp.maximum(xp.log(x), floor)
            log_1mx = xp.maximum(xp.log1p(-x), floor)
        loss = -(y * log_x + (1 - y) * log_1mx)
        if self.weight is not None:
            loss = loss * self.weight
        self.x, self.y, self.shape = x, y, loss.shape
        self.log_x, self.log_1mx = log_x, log_1mx
        return _reduce(loss, self.reduction, xp, x.dtype)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        g = _unreduce(gy, self.shape, self.reduction, xp)
        if self.weight is not None:
            g = g * self.weight
        x, y = self.x, self.y
        gx = gt = None
        if self.needs_input_grad[0]:
            gx = g * (x - y) / xp.maximum(x * (1 - x), x.dtype.type(1e-12))
        if self.needs_input_grad[1]:
            gt = g * (self.log_1mx - self.log_x)
        return gx, gt


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    """Binary cross-entropy between probabilities ``input`` and ``target`` (same
    shape), as ``torch.nn.functional.binary_cross_entropy``."""
    reduction = legacy_reduction("binary_cross_entropy", size_average, reduce, reduction)
    _check_reduction("binary_cross_entropy", reduction)
    x, y = as_tensor(input), as_tensor(target)
    if x.shape != y.shape:
        raise ValueError(f"binary_cross_entropy: target {tuple(y.shape)} must have the input's "
                         f"shape {tuple(x.shape)}")
    if y._data.dtype != x._data.dtype:
        y = cast(y, x._data.dtype)
    w = raw(weight)
    w = None if w is None else backend.to_device(w, x.device).astype(x._data.dtype, copy=False)
    return BinaryCrossEntropy(w, reduction)(x, y)


def dropout2d(input, p=0.5, training=True, inplace=False):
    """Zero whole channels: each (n, c) plane of ``(N, C, H, W)`` (or ``(C, H, W)``)
    with probability ``p``, the rest scaled by 1/(1-p), while ``training``; as
    ``torch.nn.functional.dropout2d``. Draws come from minidl's generator."""
    from ..random import generator_for
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout2d: p must be in [0, 1], got {p}")
    x = as_tensor(input)
    if x.ndim not in (3, 4):
        raise ValueError(f"dropout2d: expects (N, C, H, W) or (C, H, W), got shape "
                         f"{tuple(x.shape)}")
    if not training or p == 0.0:
        return x
    xp = backend.get_array_module(x._data)
    planes = x.shape[:-2] + (1, 1)
    keep = generator_for(xp).random(planes) >= p
    scale = x._data.dtype.type(0.0 if p == 1.0 else 1.0 / (1.0 - p))
    return x * (keep.astype(x._data.dtype) * scale)
