"""Losses with PyTorch's signatures; cross-entropy is one fused op.

Notation: N batch, C classes, M = N * d1 * ... (rows after moving the class
dim last), t_i the target class of row i, w the class weights (ones when
not given), eps the label smoothing.

Cross-entropy with class-index targets, per row (0 for ignored rows)::

    l_i = (1 - eps) * w[t_i] * -logp[i, t_i]  +  (eps / C) * sum_c w[c] * -logp[i, c]

and ``reduction='mean'`` divides the sum by ``sum_i w[t_i]`` over rows not
ignored (PyTorch's rule). With class-probability targets q (same shape as
the logits), ``l_i = -sum_c w[c] q'[i, c] logp[i, c]`` with
``q' = (1 - eps) q + eps / C``, and 'mean' divides by the number of rows.

Either way the row's loss is ``-sum_c a[i, c] logp[i, c]`` for a coefficient
matrix ``a``, so the one backward is ``gx = g_i * (p[i] * sum_c a[i, c] - a[i])``
with p the softmax: forward keeps p (and logp, when probability targets need
their own gradient ``gq[i, c] = -g_i (1 - eps) w[c] logp[i, c]``).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .. import backend
from ..tensor import Function, Tensor, as_tensor, raw
from .arith import cast, operands, stable_sigmoid
from .reduce import finite_max, mean_of

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(op, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def legacy_reduction(op, size_average, reduce, reduction):
    """The reduction that the deprecated ``size_average``/``reduce`` flags select,
    by PyTorch's rule (``torch.nn._reduction.legacy_get_string``).

    When either flag is given it overrides ``reduction``: an unset flag counts
    as True, ``reduce=False`` gives 'none', else ``size_average=False`` gives
    'sum', else 'mean'; a warning names the ``reduction=`` to use instead (a
    UserWarning, as PyTorch's). With neither flag, ``reduction`` is returned."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if size_average and reduce:
        legacy = "mean"
    elif reduce:
        legacy = "sum"
    else:
        legacy = "none"
    # stacklevel 3: the caller of the loss function or of the loss module's __init__
    warnings.warn(f"{op}: size_average and reduce are deprecated; use reduction={legacy!r} "
                  "instead", UserWarning, stacklevel=3)
    return legacy



def _rows(x):
    """(N, C, d1, ...) -> (M, C) view/copy with the class dim last."""
    if x.ndim == 2:
        return x
    if x.ndim == 1:
        return x[None, :]
    N, C = x.shape[:2]
    L = math.prod(x.shape[2:])   # not -1: NumPy cannot infer it for an empty batch
    return x.reshape(N, C, L).transpose(0, 2, 1).reshape(N * L, C)


def _target_shape(shape):
    return (shape[0],) + tuple(shape[2:]) if len(shape) > 1 else ()


def _reduce_rows(loss, reduction, denom, shape, dtype):
    """One loss per row -> ``reduction``'s result: 'none' keeps the target's
    shape (rows are ordered (N, d1, ...)); 'mean' divides the sum by ``denom``
    (the total weight of the rows that count)."""
    xp = backend.get_array_module(loss)
    if reduction == "none":
        return loss.reshape(_target_shape(shape)).astype(dtype, copy=False)
    total = loss.sum()
    if reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 = NaN, as PyTorch, quietly
            total = total / denom
    return xp.asarray(total, dtype=dtype)


def _row_grads(gy, reduction, denom, rows, valid=None):
    """The gradient reaching each of ``rows`` per-row losses from ``gy``, the
    gradient of :func:`_reduce_rows`' result: shape (rows,).

    ``valid`` (rows,) marks the rows not ignored; ignored rows get 0. That
    matters for 'mean' when every row is ignored: the loss is 0/0 = NaN, but
    PyTorch skips ignored rows in backward, so their gradient is 0, not
    (gy / 0) * 0 = NaN."""
    if reduction == "none":
        return gy.reshape(-1)
    xp = backend.get_array_module(gy)
    if reduction == "sum":
        return xp.broadcast_to(gy, (rows,))
    with np.errstate(divide="ignore", invalid="ignore"):   # denom 0: every row ignored
        g = gy / denom
    if valid is None:
        return xp.broadcast_to(g, (rows,))
    # one (rows,) select, always: testing denom == 0 first would sync a GPU every step
    return xp.where(valid, g, gy.dtype.type(0))


def _unrows(g, shape):
    if len(shape) == 2:
        return g
    if len(shape) == 1:
        return g[0]
    N, C = shape[:2]
    return g.reshape(N, math.prod(shape[2:]), C).transpose(0, 2, 1).reshape(shape)


class CrossEntropy(Function):
    """Inputs: the logits, and the probability targets when they need a gradient
    (otherwise the targets are a constant given to the constructor)."""

    def __init__(self, target, weight, ignore_index, reduction, label_smoothing):
        self.target, self.weight = target, weight
        self.ignore_index, self.reduction, self.eps = ignore_index, reduction, label_smoothing

    def forward(self, x, target=None):
        xp = backend.get_array_module(x)
        shape, dtype = x.shape, x.dtype
        z = _rows(x)
        C = z.shape[1]
        z = z - finite_max(z, (1,), xp)              # (M, C), ours
        p = xp.exp(z)
        s = p.sum(axis=1, keepdims=True)
        s[s == 0] = 1                                # a row of -inf (padding): p = 0, no 0/0
        p /= s
        log_s = xp.log(s)[:, 0]                      # logp = z - log_s
        w, eps = self.weight, self.eps
        target = self.target if target is None else target
        if target.dtype.kind == "f":                 # class probabilities
            q = _rows(target).astype(dtype, copy=False)
            a = q * (1 - eps) + eps / C if eps else q
            if w is not None:
                a = a * w
            a_sum = a.sum(axis=1)
            loss = a_sum * log_s - (a * z).sum(axis=1)
            denom = dtype.type(z.shape[0])
            self.a, self.rows, self.valid = a, None, None
            if len(self.needs_input_grad) > 1 and self.needs_input_grad[1]:
                # d l_i / d q[i, c] = -(1 - eps) w[c] logp[i, c]
                self.logp, self.target_dtype = z - log_s[:, None], target.dtype
        else:
            t = target.reshape(-1)
            valid = t != self.ignore_index
            t_safe = xp.where(valid, t, 0)
            if not ((t_safe >= 0) & (t_safe < C)).all():
                bad = t[valid & ((t < 0) | (t >= C))]
                raise IndexError(f"cross_entropy: target {int(bad[0])} is out of range for "
                                 f"{C} classes (expected 0..{C - 1} or ignore_index="
                                 f"{self.ignore_index})")
            rows = xp.arange(t.shape[0])
            wt = valid.astype(dtype) if w is None else w[t_safe] * valid
            c_nll = wt * (1 - eps)                   # coefficient of -logp[i, t_i]
            # ignored rows are selected out, not multiplied by 0: a -inf logit there
            # (a masked padding class) would give 0 * inf = NaN
            zero = dtype.type(0)
            loss = c_nll * (xp.where(valid, log_s, zero) - xp.where(valid, z[rows, t_safe], zero))
            if eps:
                validf = valid.astype(dtype)
                if w is None:
                    smooth = C * log_s - z.sum(axis=1)
                    w_total = C
                else:
                    smooth = w.sum() * log_s - z @ w
                    w_total = w.sum()
                loss += xp.where(valid, (eps / C) * smooth, zero)
                a_sum = c_nll + (eps / C) * w_total * validf
                self.validf = validf
            else:
                a_sum = c_nll
            denom = wt.sum()
            self.rows, self.t, self.c_nll, self.valid = rows, t_safe, c_nll, valid
        self.p, self.a_sum, self.shape = p, a_sum.astype(dtype, copy=False), shape
        self.denom = denom
        return _reduce_rows(loss, self.reduction, denom, shape, dtype)

    def backward(self, gy):
        shape = self.shape
        g = _row_grads(gy, self.reduction, self.denom, self.a_sum.shape[0], self.valid)
        gq = None
        if len(self.needs_input_grad) > 1 and self.needs_input_grad[1]:
            gq = self.logp * (g * -(1 - self.eps))[:, None]
            if self.weight is not None:
                gq *= self.weight
            gq = _unrows(gq, shape).astype(self.target_dtype, copy=False)
        if not self.needs_input_grad[0]:
            return None, gq
        gx = self.p * (g * self.a_sum)[:, None]
        if self.rows is None:
            gx -= self.a * g[:, None]
        else:
            gx[self.rows, self.t] -= g * self.c_nll
            if self.eps:
                C = gx.shape[1]
                cw = (self.eps / C) * (g * self.validf)
                gx -= cw[:, None] * (1 if self.weight is None else self.weight)
        return _unrows(gx, shape) if gq is None else (_unrows(gx, shape), gq)


def _class_weight(op, weight, C, x):
    """The (C,) class weights as an array on x's device in x's dtype, or None; a
    ValueError naming ``op`` for another shape."""
    w = raw(weight)
    if w is None:
        return None
    w = backend.to_device(np.asarray(w) if isinstance(w, (list, tuple)) else w, x.device)
    if w.shape != (C,):
        raise ValueError(f"{op}: weight must have shape ({C},), one per class, got {w.shape}")
    return w.astype(x._data.dtype, copy=False)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """Cross-entropy of ``input`` logits (N, C) or (N, C, d1, ...) against class
    indices (N) / (N, d1, ...) or class probabilities (same shape as input),
    as ``torch.nn.functional.cross_entropy``: log-softmax and NLL in one op
    with one backward (see the module docstring for the formula).
    The deprecated ``size_average``/``reduce`` select a reduction as in PyTorch
    (see :func:`legacy_reduction`)."""
    reduction = legacy_reduction("cross_entropy", size_average, reduce, reduction)
    _check_reduction("cross_entropy", reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    x = as_tensor(input)
    t = raw(target)
    if not isinstance(t, np.ndarray) and backend.device_of(t) == "cpu":
        t = np.asarray(t)
    if x.ndim < 1 or x._data.dtype.kind != "f":
        raise ValueError(f"cross_entropy: expected floating logits (N, C) or (N, C, d1, ...), "
                         f"got shape {tuple(x.shape)} dtype {x.dtype}")
    C = x.shape[1] if x.ndim > 1 else x.shape[0]
    if t.dtype.kind == "f":
        if t.shape != x.shape:
            raise ValueError(f"cross_entropy: probability targets must have the input's shape "
                             f"{tuple(x.shape)}, got {t.shape}")
    else:
        if t.dtype.kind not in "iu":
            raise TypeError(f"cross_entropy: targets must be integer class indices or float "
                            f"probabilities, got dtype {t.dtype}")
        expected = (x.shape[0],) + tuple(x.shape[2:]) if x.ndim > 1 else ()
        if t.shape != expected:
            raise ValueError(f"cross_entropy: logits of shape {tuple(x.shape)} need targets of "
                             f"shape {expected}, got {t.shape}")
    t = backend.to_device(t, x.device)
    w = _class_weight("cross_entropy", weight, C, x)
    fn = CrossEntropy(t, w, ignore_index, reduction, float(label_smoothing))
    if getattr(target, "requires_grad", False) and t.dtype.kind == "f":
        # a target from a network being trained (distillation): it gets its gradient
        return fn(x, target if target.device == x.device else Tensor._wrap(t))
    return fn(x)


class NLLLoss(Function):
    def __init__(self, target, weight, ignore_index, reduction):
        self.target, self.weight = target, weight
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, x):
        xp = backend.get_array_module(x)
        shape, dtype = x.shape, x.dtype
        z = _rows(x)
        C = z.shape[1]
        t = self.target.reshape(-1)
        valid = t != self.ignore_index
        t_safe = xp.where(valid, t, 0)
        if not ((t_safe >= 0) & (t_safe < C)).all():
            bad = t[valid & ((t < 0) | (t >= C))]
            raise IndexError(f"nll_loss: target {int(bad[0])} is out of range for {C} classes")
        rows = xp.arange(t.shape[0])
        wt = valid.astype(dtype) if self.weight is None else self.weight[t_safe] * valid
        loss = -wt * xp.where(valid, z[rows, t_safe], dtype.type(0))   # as cross_entropy's
        self.rows, self.t, self.wt, self.shape, self.valid = rows, t_safe, wt, shape, valid
        self.denom = wt.sum()
        return _reduce_rows(loss, self.reduction, self.denom, shape, dtype)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        shape = self.shape
        g = _row_grads(gy, self.reduction, self.denom, self.rows.shape[0], self.valid)
        gx = xp.zeros((self.rows.shape[0], shape[1] if len(shape) > 1 else shape[0]), gy.dtype)
        gx[self.rows, self.t] = -g * self.wt
        return _unrows(gx, shape)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    """Negative log-likelihood of log-probabilities ``input`` (N, C) or (N, C, d1, ...)
    at integer ``target``, as ``torch.nn.functional.nll_loss``. The deprecated
    ``size_average``/``reduce`` select a reduction (see :func:`legacy_reduction`)."""
    reduction = legacy_reduction("nll_loss", size_average, reduce, reduction)
    _check_reduction("nll_loss", reduction)
    x = as_tensor(input)
    t = raw(target)
    t = np.asarray(t) if backend.device_of(t) == "cpu" else t
    if t.dtype.kind not in "iu":
        raise TypeError(f"nll_loss: targets must be integer class indices, got dtype {t.dtype}")
    expected = (x.shape[0],) + tuple(x.shape[2:]) if x.ndim > 1 else ()
    if t.shape != expected:
        raise ValueError(f"nll_loss: input of shape {tuple(x.shape)} needs targets of shape "
                         f"{expected}, got {t.shape}")
    t = backend.to_device(t, x.device)
    w = _class_weight("nll_loss", weight, x.shape[1] if x.ndim > 1 else x.shape[0], x)
    return NLLLoss(t, w, ignore_index, reduction)(x)


def _reduce(loss, reduction, xp, dtype):
    if reduction == "none":
        return loss
    # mean_of: NaN for no elements without NumPy's warning, float64 sums when long
    total = mean_of(loss, None, False) if reduction == "mean" else loss.sum()
    return xp.asarray(total, dtype=dtype)


def _unreduce(gy, shape, reduction, xp):
    """``gy``, the gradient of :func:`_reduce`'s result, spread over ``shape``."""
    if reduction == "none":
        return gy
    if reduction == "mean":
        count = math.prod(shape)
        # a scalar of gy's own dtype: dividing by an int64 count would give float64
        # under NumPy 2; an empty input (count 0) has no element to receive it
        gy = gy * gy.dtype.type(1.0 / count if count else 0.0)
    return xp.broadcast_to(gy, shape)


class MSELoss(Function):
    def __init__(self, reduction):
        self.reduction = reduction

    def forward(self, x, y):
        xp = backend.get_array_module(x)
        d = x - y
        self.d, self.dtypes = d, (x.dtype, y.dtype)
        return _reduce(d * d, self.reduction, xp, d.dtype)   # the wider dtype, any reduction

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        g = self.d * (2 * _unreduce(gy, self.d.shape, self.reduction, xp))
        return (g.astype(self.dtypes[0], copy=False) if self.needs_input_grad[0] else None,
                (-g).astype(self.dtypes[1], copy=False) if self.needs_input_grad[1] else None)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """Mean squared error, as ``torch.nn.functional.mse_loss`` (shapes must match).
    The deprecated ``size_average``/``reduce`` select a reduction (see
    :func:`legacy_reduction`)."""
    reduction = legacy_reduction("mse_loss", size_average, reduce, reduction)
    _check_reduction("mse_loss", reduction)
    x, y = operands(as_tensor(input), as_tensor(target))   # an int target: input's dtype
    if x.shape != y.shape:
        raise ValueError(f"mse_loss: input {tuple(x.shape)} and target {tuple(y.shape)} must "
                         "have the same shape")
    return MSELoss(reduction)(x, y)


class L1Loss(Function):
    def __init__(self, reduction):
        self.reduction = reduction

    def forward(self, x, y):
        xp = backend.get_array_module(x)
        d = x - y
        self.sign, self.dtypes = xp.sign(d), (x.dtype, y.dtype)
        return _reduce(xp.abs(d), self.reduction, xp, d.dtype)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        g = self.sign * _unreduce(gy, self.sign.shape, self.reduction, xp)
        return (g.astype(self.dtypes[0], copy=False) if self.needs_input_grad[0] else None,
                (-g).astype(self.dtypes[1], copy=False) if self.needs_input_grad[1] else None)


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """Mean absolute error, as ``torch.nn.functional.l1_loss`` (shapes must
    match; the gradient at a zero difference is 0, PyTorch's sign(0))."""
    reduction = legacy_reduction("l1_loss", size_average, reduce, reduction)
    _check_reduction("l1_loss", reduction)
    x, y = operands(as_tensor(input), as_tensor(target))
    if x.shape != y.shape:
        raise ValueError(f"l1_loss: input {tuple(x.shape)} and target {tuple(y.shape)} must "
                         "have the same shape")
    return L1Loss(reduction)(x, y)


class BCEWithLogits(Function):
    """l = (1 - y) x + lw * softplus(-x), lw = 1 + (pos_weight - 1) y, times weight."""

    def __init__(self, weight, pos_weight, reduction):
        self.weight, self.pos_weight, self.reduction = weight, pos_weight, reduction

    def forward(self, x, y):
        xp = backend.get_array_module(x)
        sp = xp.logaddexp(0, -x).astype(x.dtype, copy=False)   # softplus(-x), stable
        lw = 1 if self.pos_weight is None else 1 + (self.pos_weight - 1) * y
        loss = (1 - y) * x + lw * sp
        if self.weight is not None:
            loss = loss * self.weight
        self.x, self.y, self.sp, self.lw = x, y, sp, lw
        self.shape = loss.shape
        return _reduce(loss, self.reduction, xp, x.dtype)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        g = _unreduce(gy, self.shape, self.reduction, xp)
        if self.weight is not None:
            g = g * self.weight
        x, y = self.x, self.y
        gx = gy_ = None
        if self.needs_input_grad[0]:
            # (1 - y) + lw (sig - 1) = lw sig - pw y, written so: for y = 0 the first form
            # is 1 + (sig - 1), which cancels (0 for x < -17 in float32); and the
            # sigmoid itself stable (tanh's form cancels there too)
            sig = stable_sigmoid(x, xp)
            pw_y = y if self.pos_weight is None else self.pos_weight * y
            gx = g * (self.lw * sig - pw_y)
        if self.needs_input_grad[1]:
            gy_ = -x if self.pos_weight is None else -x + (self.pos_weight - 1) * self.sp
            gy_ = g * gy_
        return gx, gy_


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """Sigmoid + binary cross-entropy in one stable op, as PyTorch's. The
    deprecated ``size_average``/``reduce`` select a reduction (see
    :func:`legacy_reduction`)."""
    reduction = legacy_reduction("binary_cross_entropy_with_logits", size_average, reduce,
                                 reduction)
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    x, y = as_tensor(input), as_tensor(target)
    if x.shape != y.shape:
        raise ValueError(f"binary_cross_entropy_with_logits: target {tuple(y.shape)} must have "
                         f"the input's shape {tuple(x.shape)}")
    if y._data.dtype != x._data.dtype:
        y = cast(y, x._data.dtype)   # an op: a target that needs a gradient keeps it
    w, pw = raw(weight), raw(pos_weight)
    w = None if w is None else backend.to_device(w, x.device).astype(x._data.dtype, copy=False)
    pw = None if pw is None else backend.to_device(pw, x.device).astype(x._data.dtype, copy=False)
    return BCEWithLogits(w, pw, reduction)(x, y)
