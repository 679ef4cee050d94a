"""Elementwise kernels compiled by Numba: ReLU, dropout, the optimizers' updates.

Each is one pass over memory, parallel over Numba's threads (the pool the
GEMMs use, see :mod:`.cpu_blas`) when the array is long enough to pay for a
parallel region, serial below that. NumPy's versions of the same (in
:mod:`.common`, shared with CuPy) make a temporary per operator: ReLU's
backward as ``np.where(y <= 0, 0, gy)`` cost 9.3 ms on 2.4 M float32 here,
six times a single pass.

The arrays handed in are 1-D and contiguous: :func:`flat` gives the memory
of any dense array (an NCHW tensor, conv's C-major output) as such a view,
so a layout is kept, not copied. Results equal NumPy's bit for bit (the same
operations in the same order per element; the tests compare them).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu_blas import _CACHE

# Below this many elements a kernel runs in the calling thread: a parallel
# region's dispatch (3-15 us) would cost more than the second thread saves.
_PARALLEL_MIN = 1 << 15
# Elements per parallel task (a multiple of 8 keeps vector loops aligned).
_TASK = 1 << 14


def flat(a):
    """The memory of a dense array (C-contiguous, or a permutation of one:
    conv's C-major output, a transpose) as a 1-D view, or None."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    order = np.argsort([-s for s in a.strides], kind="stable")
    t = a.transpose(order)
    return t.reshape(-1) if t.flags.c_contiguous else None


@njit(inline="always", cache=_CACHE)
def _tasks(n):
    return (n + _TASK - 1) // _TASK


# ---------------------------------------------------------------------- ReLU

@njit(cache=_CACHE)
def _relu_span(x, y, zero):
    for k in range(x.shape[0]):
        v = x[k]
        y[k] = v if v > zero or v != v else zero   # np.maximum(x, 0): NaN kept


@njit(parallel=True, cache=_CACHE)
def _relu_par(x, y, zero):
    n = x.shape[0]
    for t in prange(_tasks(n)):
        a, b = t * _TASK, min(n, (t + 1) * _TASK)
        _relu_span(x[a:b], y[a:b], zero)


@njit(cache=_CACHE)
def _threshold_bwd_span(y, gy, gx, zero):
    for k in range(y.shape[0]):
        gx[k] = zero if y[k] <= zero else gy[k]   # NaN y passes gy; inf/NaN gy stopped at 0


@njit(parallel=True, cache=_CACHE)
def _threshold_bwd_par(y, gy, gx, zero):
    n = y.shape[0]
    for t in prange(_tasks(n)):
        a, b = t * _TASK, min(n, (t + 1) * _TASK)
        _threshold_bwd_span(y[a:b], gy[a:b], gx[a:b], zero)


def relu(x):
    """max(x, 0) in x's memory layout (NaN stays NaN), or None when x is not
    dense (the caller then uses NumPy's)."""
    xf = flat(x)
    if xf is None or x.dtype.kind != "f":
        return None
    y = np.empty_like(x)   # the same strides as x: flat(y) is laid out as xf
    yf, zero = flat(y), x.dtype.type(0)
    if xf.shape[0] >= _PARALLEL_MIN:
        _relu_par(xf, yf, zero)
    else:
        _relu_span(xf, yf, zero)
    return y


def threshold_backward(gy, y):
    """PyTorch's threshold_backward(gy, y, 0): 0 where y <= 0 (an inf or NaN
    gy there too), gy elsewhere (a NaN y passes it). None when gy and y are
    not dense in one layout."""
    if gy.shape != y.shape or gy.strides != y.strides or gy.dtype != y.dtype:
        return None
    yf, gf = flat(y), flat(gy)
    if yf is None or gf is None:
        return None
    gx = np.empty_like(y)
    xf, zero = flat(gx), y.dtype.type(0)
    if yf.shape[0] >= _PARALLEL_MIN:
        _threshold_bwd_par(yf, gf, xf, zero)
    else:
        _threshold_bwd_span(yf, gf, xf, zero)
    return gx


# ------------------------------------------------------------------- dropout
# The keep/drop decision of element i is a hash of (i, key), so the mask is
# made in the same pass that applies it, on every thread at once, and
# backward makes it again instead of storing it. The hash and the threshold
# are those of :func:`.common.dropout_apply` (NumPy and CuPy), bit for bit.

@njit(inline="always", cache=_CACHE)
def _mix32(x):
    """A 32-bit integer hash (Wellons' lowbias32) of x < 2**32, in uint64
    arithmetic (Numba widens uint32 operands) cut back to 32 bits."""
    mask = np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x21F0AAAD)) & mask
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x735A2D97)) & mask
    x ^= x >> np.uint64(15)
    return x


@njit(cache=_CACHE)
def _dropout_span(x, y, start, k0, k1, threshold, scale, zero):
    """Elements start.. of the whole array: x and y are views from there."""
    for k in range(x.shape[0]):
        i = np.uint64(start + k)
        h = _mix32((i & np.uint64(0xFFFFFFFF)) ^ k0)
        h = _mix32(h ^ (i >> np.uint64(32)) ^ k1)
        # dropped: x * 0, as PyTorch's x * mask (an inf gives NaN)
        y[k] = x[k] * (scale if (h >> np.uint64(8)) >= threshold else zero)


@njit(parallel=True, cache=_CACHE)
def _dropout_par(x, y, k0, k1, threshold, scale, zero):
    n = x.shape[0]
    for t in prange(_tasks(n)):
        a, b = t * _TASK, min(n, (t + 1) * _TASK)
        _dropout_span(x[a:b], y[a:b], a, k0, k1, threshold, scale, zero)


def dropout_apply(x, key, threshold, scale):
    """y = x * scale where element i is kept, else x * 0, for a C-contiguous x:
    kept iff the top 24 bits of hash(i, key) are >= ``threshold``
    (= ceil(p * 2**24), so P(keep) = 1 - p at float32's 24-bit resolution)."""
    xf = x.reshape(-1)
    y = np.empty_like(x)
    yf = y.reshape(-1)
    args = (np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32), np.uint64(threshold),
            x.dtype.type(scale), x.dtype.type(0))
    if xf.shape[0] >= _PARALLEL_MIN:
        _dropout_par(xf, yf, *args)
    else:
        _dropout_span(xf, yf, 0, *args)
    return y


# ---------------------------------------------------------------- optimizers
# One pass per parameter: every operand read once, p (and the state) written
# once, in the order of operations of the NumPy rule in minidl.optim (so the
# results are the same to the last bit in float32: each step is rounded to
# the dtype as NumPy's in-place ops round it).

@njit(cache=_CACHE)
def _sgd_span(p, g, buf, lr, mom, damp1, wd, nesterov, maximize, first, has_buf):
    for k in range(p.shape[0]):
        d = g[k]
        if wd != 0:
            d = p[k] * wd + d if not maximize else p[k] * wd - d
        elif maximize:
            d = -d
        if has_buf:
            if first:
                m = d
            else:
                m = buf[k] * mom
                m = m + (d * damp1 if damp1 != 1 else d)
            buf[k] = m
            d = d + m * mom if nesterov else m
        p[k] = p[k] - d * lr


@njit(parallel=True, cache=_CACHE)
def _sgd_par(p, g, buf, lr, mom, damp1, wd, nesterov, maximize, first, has_buf):
    n = p.shape[0]
    for t in prange(_tasks(n)):
        a, b = t * _TASK, min(n, (t + 1) * _TASK)
        _sgd_span(p[a:b], g[a:b], buf[a:b], lr, mom, damp1, wd, nesterov, maximize, first,
                  has_buf)


def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, maximize, first):
    """In place: one SGD step of the 1-D contiguous parameter p with gradient g
    and momentum buffer ``buf`` (None without momentum; ``first``: the buffer
    is set to the gradient, as PyTorch's first step)."""
    dt = p.dtype.type
    has_buf = buf is not None
    args = (buf if has_buf else p, dt(lr), dt(momentum), dt(1 - dampening), dt(weight_decay),
            bool(nesterov), bool(maximize), bool(first), has_buf)
    if p.shape[0] >= _PARALLEL_MIN:
        _sgd_par(p, g, *args)
    else:
        _sgd_span(p, g, *args)


@njit(cache=_CACHE)
def _adam_span(p, g, m, v, vmax, lr_bc1, b1, b1c, b2, b2c, eps, sqrt_bc2, wd, decay,
               maximize, amsgrad):
    for k in range(p.shape[0]):
        x = p[k]
        if decay != 1:
            x = x * decay                  # AdamW's decoupled decay
        d = g[k]
        if wd != 0:
            d = x * wd + d if not maximize else x * wd - d
        elif maximize:
            d = -d
        mk = m[k] * b1 + d * b1c
        vk = v[k] * b2 + (d * b2c) * d     # (1 - b2) * g first, then * g, as PyTorch
        m[k], v[k] = mk, vk
        if amsgrad:
            if vk > vmax[k] or vk != vk:
                vmax[k] = vk
            vk = vmax[k]
        s = np.sqrt(vk) / sqrt_bc2 + eps
        p[k] = x - (mk / s) * lr_bc1


@njit(parallel=True, cache=_CACHE)
def _adam_par(p, g, m, v, vmax, lr_bc1, b1, b1c, b2, b2c, eps, sqrt_bc2, wd, decay, maximize,
              amsgrad):
    n = p.shape[0]
    for t in prange(_tasks(n)):
        a, b = t * _TASK, min(n, (t + 1) * _TASK)
        _adam_span(p[a:b], g[a:b], m[a:b], v[a:b], vmax[a:b], lr_bc1, b1, b1c, b2, b2c, eps,
                   sqrt_bc2, wd, decay, maximize, amsgrad)


def adam_update(p, g, m, v, vmax, lr_bc1, b1, b2, eps, sqrt_bc2, wd, decay, maximize):
    """In place: one Adam/AdamW step of the 1-D contiguous p (see
    :func:`.common.adam_update` for the arguments)."""
    dt = p.dtype.type
    amsgrad = vmax is not None
    args = (m, v, vmax if amsgrad else m, dt(lr_bc1), dt(b1), dt(1 - b1), dt(b2), dt(1 - b2),
            dt(eps), dt(sqrt_bc2), dt(wd), dt(decay), bool(maximize), amsgrad)
    if p.shape[0] >= _PARALLEL_MIN:
        _adam_par(p, g, *args)
    else:
        _adam_span(p, g, *args)
