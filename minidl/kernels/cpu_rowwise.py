"""Fused row-wise kernels on Numba's threads: layer norm, softmax, log-softmax, GELU.

Notation: x (R, D), R rows of D contiguous elements (the last dim, or the
trailing normalised dims flattened). Each kernel is one ``prange`` over row
chunks (or, for GELU, element chunks) that reads its input once and writes its
output once; sums run in float64 in registers.

* layer norm forward saves mean and rstd (R,) only; backward recomputes xhat
  from x and computes ``gx = rstd (g - mean(g) - xhat mean(g xhat))``,
  g = gy * w, in one pass per row, with the weight and bias gradients summed
  in per-chunk partial rows (a fixed number of chunks, so the sums do not
  depend on the thread count) and added afterwards;
* softmax / log-softmax over the last dim; a row that is all -inf gives
  zeros (softmax) or stays -inf (log-softmax), as :mod:`minidl.ops.activation`;
* GELU exact (erf) and tanh forms; backward recomputes from x.
"""
from __future__ import annotations

import math

import numpy as np
from numba import get_num_threads, njit, prange

from .cpu_blas import _CACHE

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Partial sums of the layer-norm parameter gradients: this many chunks of rows
# (fixed, so results do not depend on the thread count).
_CHUNKS = 16
# Elementwise kernels: below this many elements one thread does it all.
_PARALLEL_MIN = 1 << 15


@njit(parallel=True, cache=_CACHE)
def _layer_norm_forward(x, w, b, has_w, has_b, eps, y, mean, rstd):
    R, D = x.shape
    for r in prange(R):
        s = 0.0
        for j in range(D):
            s += x[r, j]
        mu = s / D
        s2 = 0.0
        for j in range(D):
            d = x[r, j] - mu
            s2 += d * d
        rs = 1.0 / math.sqrt(s2 / D + eps)
        mean[r], rstd[r] = mu, rs
        for j in range(D):
            v = (x[r, j] - mu) * rs
            if has_w:
                v *= w[j]
            if has_b:
                v += b[j]
            y[r, j] = v


@njit(parallel=True, cache=_CACHE)
def _layer_norm_backward(x, w, has_w, gy, mean, rstd, gx, need_x, gw_parts, gb_parts):
    R, D = x.shape
    chunks = gw_parts.shape[0]
    for c in prange(chunks):
        r0, r1 = c * R // chunks, (c + 1) * R // chunks
        for r in range(r0, r1):
            mu, rs = mean[r], rstd[r]
            sg = 0.0
            sgx = 0.0
            for j in range(D):
                xh = (x[r, j] - mu) * rs
                g = gy[r, j]
                gw_parts[c, j] += g * xh
                gb_parts[c, j] += g
                if has_w:
                    g *= w[j]
                sg += g
                sgx += g * xh
            if need_x:
                mg, mgx = sg / D, sgx / D
                for j in range(D):
                    xh = (x[r, j] - mu) * rs
                    g = gy[r, j]
                    if has_w:
                        g *= w[j]
                    gx[r, j] = rs * (g - mg - xh * mgx)


def layer_norm_forward(x, w, b, eps):
    """x (R, D) C-contiguous, w/b (D,) or None -> (y, mean, rstd)."""
    R, D = x.shape
    y = np.empty_like(x)
    mean = np.empty(R, dtype=np.float64)
    rstd = np.empty(R, dtype=np.float64)
    dummy = np.empty(1, dtype=x.dtype)
    _layer_norm_forward(x, dummy if w is None else w, dummy if b is None else b,
                        w is not None, b is not None, float(eps), y, mean, rstd)
    return y, mean, rstd


def layer_norm_backward(x, w, gy, mean, rstd, need_x):
    """-> (gx or None, gw (D,), gb (D,)) for x, gy (R, D) C-contiguous."""
    R, D = x.shape
    chunks = max(1, min(_CHUNKS, R))
    gw_parts = np.zeros((chunks, D), dtype=np.float64)
    gb_parts = np.zeros((chunks, D), dtype=np.float64)
    gx = np.empty_like(x) if need_x else np.empty((1, 1), dtype=x.dtype)
    _layer_norm_backward(x, np.empty(1, dtype=x.dtype) if w is None else w, w is not None, gy,
                         mean, rstd, gx, need_x, gw_parts, gb_parts)
    return (gx if need_x else None, gw_parts.sum(axis=0).astype(x.dtype),
            gb_parts.sum(axis=0).astype(x.dtype))


@njit(parallel=True, cache=_CACHE)
def _softmax_forward(x, y, log):
    R, D = x.shape
    for r in prange(R):
        mx = -np.inf
        for j in range(D):
            if x[r, j] > mx:
                mx = x[r, j]
        if mx == -np.inf:   # all -inf: zeros (softmax) or -inf (log-softmax)
            for j in range(D):
                y[r, j] = -np.inf if log else 0.0
            continue
        if mx == np.inf or mx != mx:
            mx = 0.0        # inf or NaN rows: NaN out, as NumPy's path
        s = 0.0
        for j in range(D):
            e = math.exp(x[r, j] - mx)
            s += e
            if not log:
                y[r, j] = e
        if log:
            c = mx + math.log(s)
            for j in range(D):
                y[r, j] = x[r, j] - c
        else:
            inv = 1.0 / s
            for j in range(D):
                y[r, j] *= inv


@njit(parallel=True, cache=_CACHE)
def _softmax_backward(y, gy, gx, log):
    R, D = y.shape
    for r in prange(R):
        s = 0.0
        if log:
            for j in range(D):
                s += gy[r, j]
            for j in range(D):
                gx[r, j] = gy[r, j] - math.exp(y[r, j]) * s
        else:
            for j in range(D):
                s += gy[r, j] * y[r, j]
            for j in range(D):
                gx[r, j] = y[r, j] * (gy[r, j] - s)


def softmax_forward(x, log):
    """Softmax (or log-softmax) over the last dim of a C-contiguous (R, D) x."""
    y = np.empty_like(x)
    _softmax_forward(x, y, log)
    return y


def softmax_backward(y, gy, log):
    gx = np.empty_like(y)
    _softmax_backward(y, np.ascontiguousarray(gy), gx, log)
    return gx


@njit(inline="always", cache=_CACHE)
def _gelu_parts(v, tanh_form):
    """(gelu(v), d gelu / dv)."""
    if tanh_form:
        inner = _SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)
        t = math.tanh(inner)
        du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * v * v)
        return 0.5 * v * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du
    cdf = 0.5 * (1.0 + math.erf(v * _INV_SQRT_2))
    return v * cdf, cdf + v * _INV_SQRT_2PI * math.exp(-0.5 * v * v)


@njit(parallel=True, cache=_CACHE)
def _gelu(x, gy, out, tanh_form, backward, tasks):
    n = x.shape[0]
    for t in prange(tasks):
        for i in range(t * n // tasks, (t + 1) * n // tasks):
            y, d = _gelu_parts(float(x[i]), tanh_form)
            out[i] = gy[i] * d if backward else y


def _tasks(n):
    return 1 if n < _PARALLEL_MIN else get_num_threads()


def gelu_forward(x, tanh_form):
    """GELU of a C-contiguous array (any shape)."""
    out = np.empty_like(x)
    flat = x.reshape(-1)
    _gelu(flat, flat, out.reshape(-1), tanh_form, False, _tasks(flat.size))
    return out


def gelu_backward(x, gy, tanh_form):
    gx = np.empty_like(x)
    gy = np.ascontiguousarray(gy, dtype=x.dtype)
    _gelu(x.reshape(-1), gy.reshape(-1), gx.reshape(-1), tanh_form, True, _tasks(x.size))
    return gx
