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


# exp(x) for float32 rows, vectorisable: n = round(x / ln 2), r = x - n ln 2 (in two
# parts), exp(r) by Cephes' expf polynomial (about 1 ulp), times 2^n built from its
# exponent bits (an int32 scratch row seen as float32). Below -87 the result is 0
# (so -inf, a masked score, gives exactly 0). float64 rows use libm's exp.
_X_LO, _X_HI = np.float32(-87.0), np.float32(88.0)
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_E0, _E1, _E2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), \
    np.float32(8.3334519073e-3)
_E3, _E4, _E5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), \
    np.float32(5.0000001201e-1)


@njit(cache=_CACHE, error_model="numpy")
def exp_row(src, dst, shift, bits):
    """dst[j] = exp(src[j] - shift) for 1-D src, dst (they may be one array); ``bits``
    an int32 scratch at least as long (float32 only)."""
    n = src.shape[0]
    if src.itemsize != 4:
        for j in range(n):
            dst[j] = math.exp(src[j] - shift)
        return
    sh = np.float32(shift)
    for j in range(n):
        x = src[j] - sh
        dead = x < _X_LO
        x = _X_LO if dead else (_X_HI if x > _X_HI else x)
        k = math.floor(x * _LOG2E + np.float32(0.5))
        r = x - k * _LN2_HI - k * _LN2_LO
        p = (((((_E0 * r + _E1) * r + _E2) * r + _E3) * r + _E4) * r + _E5) * r * r + r + \
            np.float32(1)
        dst[j] = np.float32(0) if dead else p
        bits[j] = (np.int32(k) + np.int32(127)) << np.int32(23)
    scale = bits[:n].view(np.float32)
    for j in range(n):
        dst[j] *= scale[j]


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
def _softmax_forward(x, y, log, tasks):
    R, D = x.shape
    for t in prange(tasks):
        bits = np.empty(D, dtype=np.int32)
        e = np.empty(D, dtype=x.dtype)
        for r in range(t * R // tasks, (t + 1) * R // tasks):
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
            exp_row(x[r], e, mx, bits)
            s = 0.0
            for j in range(D):
                s += e[j]
            if log:
                c = mx + math.log(s)
                for j in range(D):
                    y[r, j] = x[r, j] - c
            else:
                inv = 1.0 / s
                for j in range(D):
                    y[r, j] = e[j] * inv


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
    _softmax_forward(x, y, log, max(1, min(x.shape[0], get_num_threads())))
    return y


def softmax_backward(y, gy, log):
    gx = np.empty_like(y)
    _softmax_backward(y, np.ascontiguousarray(gy), gx, log)
    return gx


@njit(inline="always", cache=_CACHE)
def _gelu_parts(v, tanh_form):
    """(gelu(v), d gelu / dv) in float64, by libm (float64 inputs)."""
    if tanh_form:
        inner = _SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)
        t = math.tanh(inner)
        du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * v * v)
        return 0.5 * v * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du
    cdf = 0.5 * (1.0 + math.erf(v * _INV_SQRT_2))
    return v * cdf, cdf + v * _INV_SQRT_2PI * math.exp(-0.5 * v * v)


@njit(parallel=True, cache=_CACHE)
def _gelu64(x, gy, out, tanh_form, backward, tasks):
    n = x.shape[0]
    for t in prange(tasks):
        for i in range(t * n // tasks, (t + 1) * n // tasks):
            y, d = _gelu_parts(x[i], tanh_form)
            out[i] = gy[i] * d if backward else y


# float32: erf as Eigen's rational approximation (|error| < 5e-7 against libm's; no
# calls, so the loop vectorises), exp and tanh by NumPy's SIMD ufuncs in between.
_F = np.float32
_ERF_P = tuple(_F(c) for c in (-2.72614225801306e-10, 2.77068142495902e-08,
                               -2.10102402082508e-06, -5.69250639462346e-05,
                               -7.34990630326855e-04, -2.95459980854025e-03,
                               -1.60960333262415e-02))
_ERF_Q = tuple(_F(c) for c in (-1.45660718464996e-05, -2.13374055278905e-04,
                               -1.68282697438203e-03, -7.37332916720468e-03,
                               -1.42647390514189e-02))
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = _ERF_P
_Q0, _Q1, _Q2, _Q3, _Q4 = _ERF_Q
_F4, _FHALF, _FONE = _F(4), _F(0.5), _F(1)
_FC1, _FC2 = _F(_INV_SQRT_2), _F(_INV_SQRT_2PI)
_FK, _FA, _FA3 = _F(_SQRT_2_OVER_PI), _F(0.044715), _F(3 * 0.044715)


@njit(inline="always", cache=_CACHE)
def _erf32(v):
    v = _F4 if v > _F4 else (-_F4 if v < -_F4 else v)
    v2 = v * v
    p = ((((((_P0 * v2 + _P1) * v2 + _P2) * v2 + _P3) * v2 + _P4) * v2 + _P5) * v2 + _P6) * v
    q = (((_Q0 * v2 + _Q1) * v2 + _Q2) * v2 + _Q3) * v2 + _Q4
    return p / q


@njit(cache=_CACHE, error_model="numpy")
def _gelu32_erf_run(x, gy, e, out, backward):
    for i in range(x.shape[0]):
        v = x[i]
        cdf = _FHALF * (_FONE + _erf32(v * _FC1))
        if backward:
            out[i] = gy[i] * (cdf + v * e[i] * _FC2)
        else:
            out[i] = v * cdf


@njit(cache=_CACHE, error_model="numpy")
def _gelu32_inner_run(x, out):
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = _FK * (v + _FA * v * v * v)


@njit(cache=_CACHE, error_model="numpy")
def _gelu32_tanh_run(x, gy, th, out, backward):
    for i in range(x.shape[0]):
        v, h = x[i], th[i]
        if backward:
            du = _FK * (_FONE + _FA3 * v * v)
            out[i] = gy[i] * (_FHALF * (_FONE + h) + _FHALF * v * (_FONE - h * h) * du)
        else:
            out[i] = _FHALF * v * (_FONE + h)


# Each parallel kernel hands its threads' slices to a plain @njit loop: Numba
# vectorises that loop (8 floats at a time), not one written inside the prange body,
# and only with NumPy's error model (Python's checks every division for zero).

_ERF, _INNER, _TANH = 0, 1, 2


@njit(parallel=True, cache=_CACHE)
def _gelu32(kind, x, gy, aux, out, backward, tasks):
    """One pass of ``kind``: _ERF (forward x Phi(x); backward gy (Phi(x) + x aux /
    sqrt(2 pi)), aux = exp(-x^2/2)), _INNER (out = the tanh form's argument
    sqrt(2/pi) (x + 0.044715 x^3)) or _TANH (aux = tanh of it; forward 0.5 x (1 + aux),
    backward gy times the derivative)."""
    n = x.shape[0]
    for t in prange(tasks):
        a, b = t * n // tasks, (t + 1) * n // tasks
        if kind == _ERF:
            _gelu32_erf_run(x[a:b], gy[a:b], aux[a:b], out[a:b], backward)
        elif kind == _INNER:
            _gelu32_inner_run(x[a:b], out[a:b])
        else:
            _gelu32_tanh_run(x[a:b], gy[a:b], aux[a:b], out[a:b], backward)


def _tasks(n):
    return 1 if n < _PARALLEL_MIN else get_num_threads()


def _gelu(x, gy, tanh_form, backward):
    flat = x.reshape(-1)
    g = flat if gy is None else np.ascontiguousarray(gy, dtype=x.dtype).reshape(-1)
    out = np.empty_like(flat)
    tasks = _tasks(flat.size)
    if x.dtype != np.float32:
        _gelu64(flat, g, out, tanh_form, backward, tasks)
    elif tanh_form:
        th = np.empty_like(flat)
        _gelu32(_INNER, flat, g, th, th, False, tasks)
        np.tanh(th, out=th)
        _gelu32(_TANH, flat, g, th, out, backward, tasks)
    elif backward:
        e = np.multiply(flat, flat)
        e *= _F(-0.5)
        np.exp(e, out=e)
        _gelu32(_ERF, flat, g, e, out, True, tasks)
    else:
        _gelu32(_ERF, flat, g, flat, out, False, tasks)
    return out.reshape(x.shape)


def gelu_forward(x, tanh_form):
    """GELU of a C-contiguous float array (any shape)."""
    return _gelu(x, None, tanh_form, False)


def gelu_backward(x, gy, tanh_form):
    """gy times GELU's derivative at x (x C-contiguous)."""
    return _gelu(x, gy, tanh_form, True)
