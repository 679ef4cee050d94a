"""Softmax, log-softmax, GELU and dropout as fused ops.

Each is one Function with one backward, so a softmax costs one saved array
and no graph of small ops. Hot paths work in place on arrays they allocated.

* ``softmax(x, dim)``: y = exp(x - max) / sum(exp(x - max)); backward
  ``gx = y * (gy - sum(gy * y))``. Subtracting the max keeps inputs of any
  magnitude finite; a row that is entirely -inf (fully masked attention)
  gives zeros, not NaN.
* ``log_softmax(x, dim)``: y = x - max - log(sum(exp(x - max))); backward
  ``gx = gy - exp(y) * sum(gy)``.
* ``gelu(x, approximate='none'|'tanh')``: x * Phi(x) as PyTorch.
* ``leaky_relu(x, negative_slope)``: x where x > 0, else slope * x.
* ``silu(x)``: x * sigmoid(x); backward ``gx = gy * s * (1 + x * (1 - s))``.
* ``dropout(x, p, training)``: inverted dropout; the kept elements are
  scaled by 1/(1-p) in training, so eval is the identity.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import backend
from ..random import generator_for
from ..tensor import Function, as_tensor
from .arith import as_float, cast, stable_sigmoid
from .reduce import finite_max
from .shape import normalize_dim, reshape


def rowwise_kernels(x):
    """:mod:`minidl.kernels.cpu_rowwise` when the fused CPU kernels take the float array
    ``x`` (NumPy with Numba, float32 or float64), else None (the ``xp`` code runs)."""
    if type(x) is not np.ndarray or x.dtype not in (np.float32, np.float64) \
            or not backend.numba_enabled() or x.size == 0:
        return None
    from ..kernels import cpu_rowwise
    return cpu_rowwise


def _fused_rows(x, axis):
    """The fused kernels for a softmax of ``x`` over ``axis``, when that is its last dim."""
    return rowwise_kernels(x) if axis == x.ndim - 1 else None


class _RowSoftmax(Function):
    """Softmax and LogSoftmax over ``axis``: the fused CPU kernels when it is the last
    dim (``LOG`` picks which of the two they compute), else each class's ``xp`` code."""

    LOG = False

    def __init__(self, axis):
        self.axis = axis

    def _fused_forward(self, x):
        """The fused result (kept for backward), or None where the kernels do not apply."""
        self.fused = _fused_rows(x, self.axis)
        if self.fused is None:
            return None
        x = np.ascontiguousarray(x)
        self.y = self.fused.softmax_forward(x.reshape(-1, x.shape[-1]),
                                            self.LOG).reshape(x.shape)
        return self.y

    def _fused_backward(self, gy):
        y, D = self.y, self.y.shape[-1]
        return self.fused.softmax_backward(y.reshape(-1, D), gy.reshape(-1, D),
                                           self.LOG).reshape(y.shape)


class Softmax(_RowSoftmax):
    def forward(self, x):
        xp = backend.get_array_module(x)
        x = as_float(x)  # integers give float32, as the other float-valued ops
        if (y := self._fused_forward(x)) is not None:
            return y
        y = x - finite_max(x, (self.axis,), xp)
        xp.exp(y, out=y)
        s = y.sum(axis=self.axis, keepdims=True)
        s += s == 0  # fully masked rows: 0 / 1 = 0 (no boolean mask: CuPy would sync on it)
        y /= s
        self.y = y
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        if self.fused is not None:
            return self._fused_backward(gy)
        y = self.y
        gx = gy * y                                   # the one full-size allocation
        s = gx.sum(axis=self.axis, keepdims=True)
        xp.subtract(gy, s, out=gx)
        gx *= y
        return gx


class LogSoftmax(_RowSoftmax):
    LOG = True

    def forward(self, x):
        xp = backend.get_array_module(x)
        x = as_float(x)  # integers give float32, as the other float-valued ops
        if (y := self._fused_forward(x)) is not None:
            return y
        y = x - finite_max(x, (self.axis,), xp)
        e = xp.exp(y)
        s = e.sum(axis=self.axis, keepdims=True)
        s += s == 0  # fully masked rows stay -inf, without a log(0) warning
        y -= xp.log(s)
        self.y = y
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        if self.fused is not None:
            return self._fused_backward(gy)
        gx = xp.exp(self.y)
        gx *= -gy.sum(axis=self.axis, keepdims=True)
        gx += gy
        return gx


def _softmax_like(function_class, op, x, dim, axis, dtype):
    """``function_class`` (Softmax or LogSoftmax) over the normalised dim of x, cast to
    ``dtype`` first if given; a 0-d x is a row of length 1 (dim 0 or -1, as PyTorch)."""
    x = as_tensor(x)
    if axis is None and dim is None:
        # PyTorch picks a dim from the rank for dim=None, with a deprecation warning; a
        # silent guess is worse than asking
        raise TypeError(f"{op}: dim=None is not supported; pass the dim to normalise over "
                        f"(e.g. dim=-1 for the last of a tensor of shape {tuple(x.shape)})")
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"{op}: dtype must be a floating dtype, got {dtype}")
        x = cast(x, dtype)  # before the op, as PyTorch: the sums run in dtype
    axis = normalize_dim(op, axis if axis is not None else dim, x.ndim)
    if x.ndim == 0:
        return reshape(function_class(0)(reshape(x, 1)), ())
    return function_class(axis)(x)


def softmax(x, dim=-1, *, dtype=None, axis=None):
    """Softmax over ``dim`` (default the last; PyTorch's name, ``axis`` is accepted too).

    ``dtype`` casts the input first, as PyTorch's (e.g. float64 sums for a
    float32 input); ``dim=None`` is a TypeError (PyTorch would guess a dim).
    Numerically stable for any magnitude; a row that is entirely -inf gives
    zeros, where ``torch.softmax`` gives NaN (zeros are what a fully masked
    query needs in attention; PyTorch's scaled_dot_product_attention gives
    zeros there too)."""
    return _softmax_like(Softmax, "softmax", x, dim, axis, dtype)


def log_softmax(x, dim=-1, *, dtype=None, axis=None):
    """log(softmax(x)) over ``dim`` (default the last), computed directly (stable at any
    magnitude). ``dtype`` and ``dim=None`` as :func:`softmax`."""
    return _softmax_like(LogSoftmax, "log_softmax", x, dim, axis, dtype)


# --------------------------------------------------------------------- GELU

_erf_cpu = None


def _erf(x, xp):
    global _erf_cpu
    if xp is not np:
        from cupyx.scipy.special import erf
        return erf(x)
    if _erf_cpu is None:
        import numba

        @numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)
        def erf(v):
            return math.erf(v)
        _erf_cpu = erf
    return _erf_cpu(x)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class GELU(Function):
    """x * Phi(x); ``approximate='tanh'`` uses PyTorch's tanh formula."""

    def __init__(self, approximate):
        self.approximate = approximate

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.x = x = as_float(x)
        self.fused = rowwise_kernels(x)
        if self.fused is not None:   # one pass; backward recomputes from x
            self.x = x = np.ascontiguousarray(x)
            return self.fused.gelu_forward(x, self.approximate == "tanh")
        if self.approximate == "tanh":
            inner = x * x
            inner *= 0.044715 * x
            inner += x
            inner *= _SQRT_2_OVER_PI
            t = xp.tanh(inner)
            self.t = t
            y = t + 1
            y *= 0.5 * x
            return y
        cdf = _erf(x * _INV_SQRT_2, xp)
        cdf += 1
        cdf *= 0.5
        self.cdf = cdf
        return x * cdf

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        x = self.x
        if self.fused is not None:
            return self.fused.gelu_backward(x, gy, self.approximate == "tanh")
        if self.approximate == "tanh":
            t = self.t
            # d/dx [0.5 x (1 + t)] = 0.5 (1 + t) + 0.5 x (1 - t^2) u'(x)
            du = x * x
            du *= 3 * 0.044715
            du += 1
            du *= _SQRT_2_OVER_PI
            sech2 = 1 - t * t
            g = 0.5 * x * sech2 * du
            g += 0.5 * (1 + t)
            g *= gy
            return g
        pdf = xp.exp(-0.5 * x * x)
        pdf *= _INV_SQRT_2PI
        pdf *= x
        pdf += self.cdf
        pdf *= gy
        return pdf


def gelu(x, approximate="none"):
    """GELU as ``torch.nn.functional.gelu``: exact (erf) or ``approximate='tanh'``."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    x = as_tensor(x)
    return GELU(approximate)(x)


# ------------------------------------------------- leaky ReLU and SiLU

class LeakyReLU(Function):
    def __init__(self, negative_slope):
        self.negative_slope = negative_slope

    def forward(self, x):
        xp = backend.get_array_module(x)
        x = as_float(x)
        # the slope where x <= 0, 1 elsewhere: y = x * slope_or_one, gx = gy * slope_or_one
        # (at 0 the slope, as PyTorch's gradient)
        self.scale = xp.where(x > 0, x.dtype.type(1), x.dtype.type(self.negative_slope))
        return x * self.scale

    def backward(self, gy):
        return gy * self.scale


def negative_slope_of(op, value):
    """``value`` as a float, or a TypeError naming ``op`` (a string would pass float())."""
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: negative_slope must be a number, got {value!r}")
    return float(value)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """``input`` where positive, else ``negative_slope * input``, as
    ``torch.nn.functional.leaky_relu``. ``inplace`` as :func:`minidl.nn.functional.relu`:
    accepted, and the result is always a new tensor."""
    return LeakyReLU(negative_slope_of("leaky_relu", negative_slope))(as_tensor(input))


class SiLU(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        self.x = x = as_float(x)
        self.s = stable_sigmoid(x, xp)
        return x * self.s

    def backward(self, gy):
        x, s = self.x, self.s
        g = 1 - s
        g *= x
        g += 1
        g *= s
        g *= gy
        return g


def silu(input, inplace=False):
    """x * sigmoid(x) (swish), as ``torch.nn.functional.silu``; ``inplace`` as
    :func:`leaky_relu`."""
    x = as_tensor(input)
    return SiLU()(x)


# ------------------------------------------------------------------ dropout

class Dropout(Function):
    """Inverted dropout. Element i of the (C-order) input is kept iff a hash
    of (i, key) clears a threshold, ``key`` being one draw from minidl's
    generator per call (so ``manual_seed`` makes the masks reproducible):
    the kernels make the mask in the pass that applies it, and backward makes
    it again from the key rather than storing it (the hash is in
    :mod:`minidl.kernels.common`; every backend gives the same masks)."""

    def __init__(self, p):
        self.p = p

    def forward(self, x):
        xp = backend.get_array_module(x)
        x = _c_order(xp, as_float(x))   # int64 * float32 would be float64
        # the key comes from the host's per-rank stream on every device: no device ->
        # host read per call on the GPU, and the same masks on CPU and GPU
        self.key = int(generator_for(np, per_rank=True).integers(0, 2**63 - 1))
        # keep iff the hash's top 24 bits >= p * 2**24: P(keep) = 1 - p at the
        # 24-bit resolution of a float32 uniform draw (the old mask's)
        self.threshold = math.ceil(self.p * 2**24)
        self.scale = 1.0 / (1.0 - self.p)
        return backend.kernels_for(xp).dropout_apply(x, self.key, self.threshold, self.scale)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        return backend.kernels_for(xp).dropout_apply(_c_order(xp, gy), self.key,
                                                     self.threshold, self.scale)


def _c_order(xp, a):
    """a C-contiguous (the dropout mask follows the C order of the elements);
    a 0-d array stays 0-d (ascontiguousarray would make it 1-d)."""
    return a if a.flags.c_contiguous else xp.ascontiguousarray(a)


def dropout(x, p=0.5, training=True, inplace=False):
    """Inverted dropout: zero each element with probability ``p`` and scale the
    rest by 1/(1-p) while ``training``; the identity otherwise. Draws come from
    minidl's generator (``minidl.manual_seed``), the rank's own stream in a
    data-parallel run (``minidl.random.rank_generator``)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    x = as_tensor(x)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return Dropout(float(p))(x)
