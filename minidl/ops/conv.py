"""2-D convolution (im2col + GEMM) and 2-D pooling, with PyTorch's semantics.

Notation (used in every docstring and variable name of this module and of
``minidl.kernels``)::

    N       batch size
    C       input channels (C_in);   Co  output channels (C_out)
    G       groups;  Cg = C / G,  Cog = Co / G  channels per group
    H, W    input height and width
    KH, KW  kernel height and width
    SH, SW  stride;   PH, PW  zero padding (both sides);   DH, DW  dilation
    OH, OW  output height and width;   L = OH * OW;   K = Cg * KH * KW

Output size (conv and pooling)::

    OH = floor((H + 2*PH - DH*(KH-1) - 1) / SH) + 1        (ceil with ceil_mode)

and with ``ceil_mode`` the last window must start inside the input or the
left padding: if ``(OH-1)*SH >= H + PH`` then OH -= 1 (PyTorch's rule).
Pooling also requires ``PH <= KH // 2`` and ``PW <= KW // 2``.

Convolution: ``col = im2col(x)`` is laid out channels first, (C, KH, KW,
N, OH, OW), i.e. (G, K, N*L), so that ``W.reshape(G, Cog, K) @ col`` is a
single GEMM over the whole batch on the backend's BLAS (64 thin per-sample
GEMMs cost 2-3x more at the model's sizes). With a bias (and G = 1), col gets
a row of ones and W the bias as one more column, so the GEMM adds the bias
and backward's weight-gradient GEMM returns the bias gradient as its last
row. The GEMM's (Co, N*L) result *is* the output when the input is C-major
(see :mod:`minidl.kernels.common`: conv's own outputs, or a single-channel
batch such as images): y is returned as that array's (N, Co, OH, OW) view,
so a stack of convs and pools never transposes. An N-major input gets an
N-major output, transposed in one pass (``gemm_to_nchw``). Backward:
``gW = (col @ gy_t.T).T``, ``gcol = W.T @ gy_t`` and ``gx = col2im(gcol)``
(in x's plane order), with gy_t the (G, Cog, N*L) view of a C-major gy, or
its copy (``nchw_to_gemm``). Each is computed only when that input needs a
gradient, and ``col`` is kept for backward only when the weight needs one.

When the whole col would exceed ``_COL_CHUNK_BYTES`` (16 MiB), the batch is
unfolded in chunks of images that fit, each multiplied into its columns of
the output; col is then not kept but unfolded again, chunk by chunk, in
backward (a 58 MB col made every pass over it run at memory speed).

Peak extra memory of one conv2d forward + backward, in elements (times the
itemsize), beyond x, W, b, y, gy and the gradients themselves, with
``nb`` = min(N, images per chunk) and K' = C*KH*KW (+1 with a folded bias)::

    forward:   K' * nb*OH*OW                  (col, kept for backward when nb = N)
             + N*Co*OH*OW                     (GEMM output; N-major input only)
             + N*C*(H+2*PH)*(W+2*PW)          (padded copy; NumPy path only)
    backward:  N*Co*OH*OW                     (gy_t; N-major gy only)
             + K' * nb*OH*OW                  (gcol)
             + K' * nb*OH*OW                  (col unfolded again; nb < N only)
             + N*C*(H+2*PH)*(W+2*PW)          (padded col2im buffer; NumPy path only)
    peak  =  2*K'*nb*OH*OW + N*Co*OH*OW + N*C*(H+2*PH)*(W+2*PW)

(in backward ``col``, ``gy_t`` and ``gcol`` are alive together while gx is
formed; with the Numba or CuPy kernels the padded term is 0, and without a
weight gradient ``col`` is given back right after forward.) On the CPU these
scratch arrays are then kept for the next step (see ``_Workspace``: at most
two per shape, 512 MiB in all; ``clear_workspace()`` frees them), because
faulting fresh pages in every step cost more than the GEMMs themselves.

Max pooling pads with -inf, so all-negative inputs pool correctly; on ties
the first maximum in row-major window order wins and gets the gradient
(PyTorch's rule). ``stride`` defaults to the kernel size.
"""
from __future__ import annotations

import contextlib
import operator
import threading

import numpy as np

from .. import backend
from ..kernels.common import is_c_major, plane_major
from ..tensor import Function, Tensor, as_tensor
from .shape import pad

__all__ = ["Conv2dFunction", "MaxPool2dFunction", "AvgPool2dFunction",
           "AdaptiveAvgPool2dFunction", "conv2d", "max_pool2d", "max_pool2d_relu",
           "avg_pool2d", "adaptive_avg_pool2d", "clear_workspace"]


# ---------------------------------------------------------------- helpers

def _pair(op, name, value, minimum):
    """An int or a pair of ints -> (h, w), each checked against ``minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    try:   # operator.index: ints (NumPy's too), never a float silently truncated
        pair = tuple(operator.index(v) for v in pair)
    except TypeError:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") \
            from None
    if min(pair) < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{op}: {name} must be {kind}, got {value!r}")
    return pair


def _out_size(size, K, S, P, D, ceil_mode=False):
    """PyTorch's pooling_output_shape (conv is the ceil_mode=False case)."""
    out = (size + 2 * P - D * (K - 1) - 1 + (S - 1 if ceil_mode else 0)) // S + 1
    if ceil_mode and (out - 1) * S >= size + P:
        out -= 1
    return out


def _shape(x):
    return tuple(x.shape)


def _as_batched(op, x):
    """Accept (N, C, H, W) or unbatched (C, H, W) like PyTorch; returns
    (4-D tensor, whether a batch dim was added)."""
    ndim = x.ndim
    if ndim == 4:
        return x, False
    if ndim == 3:
        return x.reshape(1, *x.shape), True
    raise ValueError(f"{op}: expected a 4-D (N, C, H, W) or 3-D (C, H, W) input, "
                     f"got shape {_shape(x)}")



def _geometry_check(op, x_shape, K, P, D, S, out):
    (H, W), (KH, KW), (PH, PW), (DH, DW) = x_shape[-2:], K, P, D
    if out[0] <= 0 or out[1] <= 0:
        raise ValueError(
            f"{op}: output size {out} is not positive for input {tuple(x_shape)}: the kernel "
            f"{(KH, KW)} with dilation {(DH, DW)} spans {(DH * (KH - 1) + 1, DW * (KW - 1) + 1)}, "
            f"larger than the padded input {(H + 2 * PH, W + 2 * PW)} (stride {S}, padding {P})")


# --------------------------------------------------------------- workspace

class _Workspace(threading.local):
    """Scratch arrays of the NumPy conv path, kept for the next step.

    A conv step allocates several multi-megabyte buffers (col, gcol, the GEMM
    outputs); fresh each step, the kernel maps, faults in and returns their
    pages every time, which cost more than the GEMMs at the model's sizes.
    Buffers come back here only once nothing else can read them (gcol after
    col2im; col when the engine releases the Function after its backward),
    at most ``per_key`` per (shape, dtype) and ``max_bytes`` in all. CuPy has
    its own memory pool and is not cached here.
    """

    per_key = 2
    max_bytes = 512 * 2**20

    def __init__(self):
        self.free, self.nbytes = {}, 0

    def get(self, xp, shape, dtype):
        if xp is np:
            stack = self.free.get((shape, np.dtype(dtype)))
            if stack:
                array = stack.pop()
                self.nbytes -= array.nbytes
                return array
        return xp.empty(shape, dtype=dtype)

    def put(self, array):
        if type(array) is not np.ndarray or array.base is not None:
            return   # only plain arrays we allocated; never a view
        stack = self.free.setdefault((array.shape, array.dtype), [])
        if len(stack) < self.per_key and self.nbytes + array.nbytes <= self.max_bytes:
            stack.append(array)
            self.nbytes += array.nbytes

    def clear(self):
        self.free.clear()
        self.nbytes = 0


_workspace = _Workspace()


def clear_workspace():
    """Drop the cached conv scratch arrays of this thread (frees their memory)."""
    _workspace.clear()


# ------------------------------------------------------------------ conv2d

def _images_per_chunk(xp, N, col_bytes_per_image):
    """How many images one im2col chunk holds: all N when the whole col is at
    most ``_COL_CHUNK_BYTES`` (it is then kept for backward), else chunks of
    about that size, each unfolded again in backward. On the CPU, a 58 MB col
    (batch 64, 32 -> 64 channels, 28 x 28) made every pass over it run at
    memory speed; 16 MB chunks cut the forward+backward time by a quarter.
    CuPy has the bandwidth and its own pool: no chunks there."""
    if xp is not np or N * col_bytes_per_image <= _COL_CHUNK_BYTES:
        return max(N, 1)
    return max(1, _COL_CHUNK_BYTES // col_bytes_per_image)


_COL_CHUNK_BYTES = 16 * 2**20


def _weight_grad(kernels, xp, col, gy):
    """(G, K, Cog) = col (G, K, M) @ gy (G, Cog, M).T, M the long N*L axis
    (rather than gy @ col.T: BLAS then streams the big col untransposed,
    15-40 % faster at the model's shapes)."""
    if col.shape[0] == 1:
        return kernels.matmul(col[0], gy[0].T)[None]
    return xp.matmul(col, gy.transpose(0, 2, 1))


def _grouped_matmul(kernels, xp, a, b, out):
    """out (G, m, n) = a (G, m, k) @ b (G, k, n): one group through the
    backend's 2-D matmul (on the CPU, split over Numba's threads)."""
    if a.shape[0] == 1:
        kernels.matmul(a[0], b[0], out=out[0])
        return out
    return xp.matmul(a, b, out=out)


class _ColKeepingFunction(Function):
    """A Function whose forward may keep a workspace buffer (``self.col_buf``)
    for its backward: the buffer goes back to the workspace when the engine
    releases the Function (the graph is gone: nothing can read it again)."""

    def release(self):
        buf = self.__dict__.get("col_buf")
        super().release()
        if buf is not None:
            _workspace.put(buf)


class Conv2dFunction(_ColKeepingFunction):
    """y = conv2d(x, W[, b]) by im2col + one batched GEMM (see the module docstring)."""

    def __init__(self, stride=1, padding=0, dilation=1, groups=1):
        self.stride = _pair("conv2d", "stride", stride, 1)
        self.padding = _pair("conv2d", "padding", padding, 0)
        self.dilation = _pair("conv2d", "dilation", dilation, 1)
        try:
            self.groups = operator.index(groups)
        except TypeError:
            raise ValueError(f"conv2d: groups must be an int, got {groups!r}") from None
        if self.groups < 1:
            raise ValueError(f"conv2d: groups must be positive, got {groups!r}")

    def _geometry(self, x_shape, w_shape):
        N, C, H, W = x_shape
        Co, Cg, KH, KW = w_shape
        OH = _out_size(H, KH, self.stride[0], self.padding[0], self.dilation[0])
        OW = _out_size(W, KW, self.stride[1], self.padding[1], self.dilation[1])
        return N, C, H, W, Co, Cg, KH, KW, OH, OW

    def _unfold(self, kernels, xp, x, KH, KW, OH, OW, n0, n1):
        """im2col of images n0..n1-1 into a workspace buffer: (flat buffer, GEMM
        operand (G, K, nb*L)), with the row of ones below when the bias is folded."""
        C, G = x.shape[1], self.groups
        rows, size = C * KH * KW, C * KH * KW * (n1 - n0) * OH * OW
        buf = _workspace.get(xp, (self.chunk_elements,), x.dtype)
        col = buf[:size].reshape(C, KH, KW, n1 - n0, OH, OW)
        kernels.im2col(x, KH, KW, *self.stride, *self.padding, *self.dilation, OH, OW,
                       channels_first=True, out=col, batch=(n0, n1))
        if self.fold_bias:
            buf[size:size + size // rows] = 1
            rows += 1
        return buf, buf[:rows * (n1 - n0) * OH * OW].reshape(G, rows // G, -1)

    def forward(self, x, w, b=None):
        xp = backend.get_array_module(x)
        kernels = backend.kernels_for(xp)
        N, C, H, W, Co, Cg, KH, KW, OH, OW = self._geometry(x.shape, w.shape)
        G = self.groups
        L, K, Cog = OH * OW, Cg * KH * KW, Co // G
        # The bias rides in the GEMM: a row of ones below col and b as one more
        # column of W; backward's weight-gradient GEMM then yields the bias
        # gradient as its last row. Two passes over y and gy fewer.
        self.fold_bias = b is not None and G == 1
        if self.fold_bias:
            w_g = xp.concatenate([w.reshape(Co, K), b.reshape(Co, 1)], axis=1)[None]
        else:
            w_g = w.reshape(G, Cog, K)
        self.x_shape, self.w_shape = x.shape, w.shape
        self.implicit = _use_implicit(kernels, x, G, Co, K + self.fold_bias, N * L)
        if self.implicit:
            self.w1 = w_g[0]
            if any(self.needs_input_grad):   # unfolded again, block by block, in backward
                self.x = x
            return kernels.conv2d_implicit_forward(x, self.w1, KH, KW, *self.stride,
                                                   *self.padding, *self.dilation, OH, OW)
        self.nb = _images_per_chunk(xp, N, C * KH * KW * L * x.dtype.itemsize)
        self.chunk_elements = (C * KH * KW + self.fold_bias) * self.nb * L
        # A C-major input (conv's own output, or any single-channel batch) gets
        # a C-major output: the GEMM's (Co, N*L) result as it is, no transpose.
        self.c_major = is_c_major(x)
        if self.c_major:   # y_t becomes y
            y_t = xp.empty((G, Cog, N * L), x.dtype)
        else:              # transposed into a new y below, then reused
            y_t = _workspace.get(xp, (G, Cog, N * L), x.dtype)
        buf = None
        for n0 in range(0, max(N, 1), self.nb):   # an empty batch: one empty chunk
            n1 = min(N, n0 + self.nb)
            buf, col = self._unfold(kernels, xp, x, KH, KW, OH, OW, n0, n1)
            _grouped_matmul(kernels, xp, w_g, col, y_t[:, :, n0 * L:n1 * L])
            if n1 < N:
                _workspace.put(buf)
        if self.needs_input_grad[1]:
            if self.nb >= N:   # one chunk: keep it (back to the workspace in release())
                self.col_buf, self.col = buf, col
                buf = None
            else:              # unfolded again, chunk by chunk, in backward
                self.x = x
        if buf is not None:
            _workspace.put(buf)
        if self.needs_input_grad[0]:
            self.w = w
        bias = None if self.fold_bias else b
        if self.c_major:
            y_2d = y_t.reshape(Co, N * L)
            if bias is not None:
                xp.add(y_2d, bias.reshape(Co, 1), out=y_2d)
            return y_2d.reshape(Co, N, OH, OW).transpose(1, 0, 2, 3)
        # (Co, N*L) -> NCHW (with the bias added in the same pass if not folded)
        y = kernels.gemm_to_nchw(y_t.reshape(Co, N * L), bias, N, OH, OW)
        _workspace.put(y_t)
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        kernels = backend.kernels_for(xp)
        N, C, H, W, Co, Cg, KH, KW, OH, OW = self._geometry(self.x_shape, self.w_shape)
        G = self.groups
        L, K, Cog = OH * OW, Cg * KH * KW, Co // G
        want_gb = len(self.needs_input_grad) > 2 and self.needs_input_grad[2]
        if self.implicit:
            return self._implicit_backward(kernels, gy, K, want_gb)
        # with the bias folded, the weight-gradient GEMM gives gb (its last row)
        gb_from_gemm = want_gb and self.fold_bias and self.needs_input_grad[1]
        want_gb = want_gb and not gb_from_gemm
        gy_t = gb = None
        if is_c_major(gy):   # already the GEMM's (Co, N*L) layout: no copy
            gy_2d = gy.transpose(1, 0, 2, 3).reshape(Co, N * L)
            if want_gb:
                gb = gy_2d.sum(axis=1)
        else:
            # (N, Co, OH, OW) -> (Co, N*L), and gb = gy.sum((0, 2, 3)) in the same pass
            gy_t = _workspace.get(xp, (Co, N, L), gy.dtype)
            gy_2d, gb = kernels.nchw_to_gemm(gy, bias_grad=want_gb, out=gy_t)
        gy_g = gy_2d.reshape(G, Cog, N * L)
        gx = gw_t = None
        if self.needs_input_grad[0]:
            # the input's plane order (a C-major x gets a C-major gradient)
            gx = (xp.empty((C, N, H, W), gy.dtype).transpose(1, 0, 2, 3) if self.c_major
                  else xp.empty((N, C, H, W), gy.dtype))
            w_t = self.w.reshape(G, Cog, K).transpose(0, 2, 1)
        for n0 in range(0, max(N, 1), self.nb):   # an empty batch: one empty chunk
            n1 = min(N, n0 + self.nb)
            gy_c = gy_g[:, :, n0 * L:n1 * L]
            if self.needs_input_grad[1]:
                unfolded = "col" not in self.__dict__   # chunks: unfold them again
                if unfolded:
                    buf, col = self._unfold(kernels, xp, self.x, KH, KW, OH, OW, n0, n1)
                else:
                    col = self.col
                part = _weight_grad(kernels, xp, col, gy_c)   # (G, K [+1], Cog)
                gw_t = part if gw_t is None else gw_t + part
                if unfolded:
                    _workspace.put(buf)
            if gx is not None:
                gbuf = _workspace.get(xp, (self.chunk_elements,), gy.dtype)
                gcol = gbuf[:G * K * (n1 - n0) * L].reshape(G, K, (n1 - n0) * L)
                _grouped_matmul(kernels, xp, w_t, gy_c, gcol)
                kernels.col2im(gcol.reshape(C, KH, KW, n1 - n0, OH, OW), H, W, *self.stride,
                               *self.padding, *self.dilation, channels_first=True, out=gx,
                               batch=(n0, n1))
                _workspace.put(gbuf)
        if gy_t is not None:
            _workspace.put(gy_t)
        if self.fold_bias and gw_t is not None:   # the bias's row, wanted or not
            if gb_from_gemm:
                gb = gw_t[0, K]
            gw_t = gw_t[:, :K]
        gw = None if gw_t is None else gw_t.transpose(0, 2, 1).reshape(Co, Cg, KH, KW)
        return gx, gw, gb

    def _implicit_backward(self, kernels, gy, K, want_gb):
        """backward() of the implicit-GEMM forward: one parallel region, the
        bias gradient from the weight-gradient GEMM's bias column."""
        want_gw = self.needs_input_grad[1] or want_gb
        gx, gw1 = kernels.conv2d_implicit_backward(
            self.x, self.w1, gy, self.needs_input_grad[0], want_gw, *self.w_shape[2:],
            *self.stride, *self.padding, *self.dilation)
        gw = gw1[:, :K].reshape(self.w_shape) if self.needs_input_grad[1] else None
        gb = gw1[:, K] if want_gb else None
        return gx, gw, gb


# conv2d runs as implicit GEMM (im2col per block of images inside the GEMM
# loop, see minidl.kernels.cpu_conv_implicit) when the kernels have it, for
# one group, once the whole col would pass _IMPLICIT_MIN_COL_BYTES, or a
# quarter of that with at least _IMPLICIT_WIDE output channels. Measured
# (CPU time, one thread, 2026-12-06, batch 16 and 64; forward+backward):
# implicit 10-35 % faster from 4.5 MiB of col up (40 MiB, 32 -> 64 on 26x26:
# 63 ms against 78), within 5 % at 0.4-1.8 MiB with 32 output channels, but
# 40-70 % slower for 6 -> 16 channels 5x5 on 14x14 (0.9 and 3.7 MiB): it
# unfolds x again in backward where im2col keeps its col, and with few output
# channels per column that second unfold weighs more than the GEMMs.
_IMPLICIT_MIN_COL_BYTES = 8 * 2**20
_IMPLICIT_WIDE = 32
_ALGORITHMS = ("auto", "im2col", "implicit")
_algorithm = threading.local()


@contextlib.contextmanager
def conv_algorithm(name):
    """Run conv2d with one algorithm in this block (tests and benchmarks):
    'im2col' (unfold the batch, one GEMM), 'implicit' (per block of images
    inside the GEMM loop, where the kernels have it: the Numba kernels with
    cblas, one group), or 'auto' (the default: chosen per shape)."""
    if name not in _ALGORITHMS:
        raise ValueError(f"conv_algorithm: expected one of {_ALGORITHMS}, got {name!r}")
    old = getattr(_algorithm, "name", "auto")
    _algorithm.name = name
    try:
        yield
    finally:
        _algorithm.name = old


def _use_implicit(kernels, x, G, Co, K1, NL):
    """Whether this conv runs as implicit GEMM (see ``_IMPLICIT_MIN_COL_BYTES``)."""
    if (G != 1 or not getattr(kernels, "IMPLICIT_GEMM", False) or NL == 0
            or x.dtype not in (np.float32, np.float64)):   # cblas's sgemm and dgemm
        return False
    name = getattr(_algorithm, "name", "auto")
    if name != "auto":
        return name == "implicit"
    col_bytes = K1 * NL * x.dtype.itemsize
    return col_bytes >= _IMPLICIT_MIN_COL_BYTES or (
        col_bytes >= _IMPLICIT_MIN_COL_BYTES // 4 and Co >= _IMPLICIT_WIDE)


def check_string_padding(op, padding, stride):
    """PyTorch's rules for a string padding: 'valid' or 'same', and 'same' only with
    stride 1 (``nn.Conv2d`` checks them when built, ``conv2d`` when called)."""
    if padding not in ("valid", "same"):
        raise ValueError(f"{op}: padding must be an int, a pair, 'valid' or 'same', got "
                         f"{padding!r}")
    if padding == "same" and _pair(op, "stride", stride, 1) != (1, 1):
        raise ValueError(f"{op}: padding='same' needs stride 1 (got stride={stride!r}), as in "
                         "PyTorch")


def _string_padding(x, weight, padding, stride, dilation):
    """PyTorch's ``padding='valid'`` (none) and ``'same'`` (the output keeps the
    input's size; stride 1 only): (input, numeric padding). An odd total padding
    puts the extra pixel on the right/bottom, as PyTorch: the input is then
    padded here and the conv runs with padding 0."""
    check_string_padding("conv2d", padding, stride)
    if padding == "valid":
        return x, 0
    D = _pair("conv2d", "dilation", dilation, 1)
    totals = [d * (k - 1) for d, k in zip(D, weight.shape[2:])]
    left = [t // 2 for t in totals]
    if all(t % 2 == 0 for t in totals):
        return x, tuple(left)
    (th, tw), (lh, lw) = totals, left
    return pad(x, (lw, tw - lw, lh, th - lh)), 0


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution of ``x`` (N, C, H, W) with ``weight`` (Co, C/groups, KH, KW),
    exactly as ``torch.nn.functional.conv2d`` (int or pair arguments, or
    ``padding='valid'``/``'same'``; a 3-D unbatched input is accepted).
    Returns (N, Co, OH, OW)."""
    x, weight = as_tensor(x), as_tensor(weight)
    if isinstance(padding, str):
        if weight.ndim != 4:
            raise ValueError(f"conv2d: expected a 4-D weight (C_out, C_in/groups, kH, kW), got "
                             f"shape {_shape(weight)}")
        x, padding = _string_padding(x, weight, padding, stride, dilation)
    fn = Conv2dFunction(stride, padding, dilation, groups)
    x4, unbatched = _as_batched("conv2d", x)
    if weight.ndim != 4:
        raise ValueError(f"conv2d: expected a 4-D weight (C_out, C_in/groups, kH, kW), got "
                         f"shape {_shape(weight)}")
    N, C, H, W = x4.shape
    Co, Cg, KH, KW = weight.shape
    G = fn.groups
    if C % G or Co % G:
        raise ValueError(f"conv2d: groups={G} must divide both the input channels ({C}, input "
                         f"{_shape(x)}) and the output channels ({Co}, weight {_shape(weight)})")
    if Cg * G != C:
        raise ValueError(f"conv2d: the input has {C} channels (input {_shape(x)}) but the weight "
                         f"{_shape(weight)} with groups={G} expects {Cg * G} "
                         f"(weight.shape[1] * groups)")
    if min(KH, KW) < 1:
        raise ValueError(f"conv2d: empty kernel in weight {_shape(weight)}")
    out = (_out_size(H, KH, fn.stride[0], fn.padding[0], fn.dilation[0]),
           _out_size(W, KW, fn.stride[1], fn.padding[1], fn.dilation[1]))
    _geometry_check("conv2d", x4.shape, (KH, KW), fn.padding, fn.dilation, fn.stride, out)
    if x4.dtype != weight.dtype:
        raise TypeError(f"conv2d: input dtype {x4.dtype} and weight dtype {weight.dtype} differ "
                        "(cast one; minidl never promotes silently)")
    args = (x4, weight)
    if bias is not None:
        bias = as_tensor(bias)
        if _shape(bias) != (Co,):
            raise ValueError(f"conv2d: bias must have shape ({Co},) for weight "
                             f"{_shape(weight)}, got {_shape(bias)}")
        if bias.dtype != weight.dtype:
            raise TypeError(f"conv2d: bias dtype {bias.dtype} differs from weight dtype "
                            f"{weight.dtype}")
        args = (x4, weight, bias)
    y = fn(*args)
    return y.reshape(*y.shape[1:]) if unbatched else y


# -------------------------------------------------------------- max_pool2d

def _pool_params(op, x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    K = _pair(op, "kernel_size", kernel_size, 1)
    S = K if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else _pair(op, "stride", stride, 1)
    P = _pair(op, "padding", padding, 0)
    D = _pair(op, "dilation", dilation, 1)
    if P[0] > K[0] // 2 or P[1] > K[1] // 2:
        raise ValueError(f"{op}: padding {P} must be at most half the kernel size {K}")
    H, W = x_shape[-2:]
    out = (_out_size(H, K[0], S[0], P[0], D[0], ceil_mode),
           _out_size(W, K[1], S[1], P[1], D[1], ceil_mode))
    _geometry_check(op, x_shape, K, P, D, S, out)
    return K, S, P, D, out


class MaxPool2dFunction(Function):
    """y = max over each window, or with ``relu`` relu(max over each window)
    in the same pass. The kernels see the planes in memory order (so a C-major
    input pools, and its gradient comes back, without a copy); ``argmax`` is
    the kernel's record of each window's choice (and, with ``relu``, of the
    windows whose pick the ReLU zeroed)."""

    def __init__(self, kernel_size, stride, padding, dilation, output_size,
                 return_indices=False, relu=False):
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation, self.output_size = padding, dilation, output_size
        self.return_indices, self.relu = return_indices, relu

    def _geometry(self):
        return (*self.kernel_size, *self.stride, *self.padding, *self.dilation)

    def forward(self, x):
        kernels = backend.kernels_for(backend.get_array_module(x))
        planes, self.c_major = plane_major(x)
        y, self.argmax = kernels.maxpool2d_forward(
            planes, *self._geometry(), *self.output_size,
            indices=self.needs_input_grad[0] or self.return_indices, relu=self.relu)
        self.x_hw = x.shape[2:]
        return _plane_view(y, self.c_major)

    def indices(self):
        """PyTorch's ``return_indices``: int64 (N, C, OH, OW) into each H*W plane."""
        kernels = backend.kernels_for(backend.get_array_module(self.argmax))
        idx = kernels.maxpool2d_indices(self.argmax, *self.x_hw, *self._geometry())
        return _plane_view(idx, self.c_major)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        if self.c_major:   # gy in the argmax's plane order
            gy = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3))
        gx = backend.kernels_for(xp).maxpool2d_backward(gy, self.argmax, *self.x_hw,
                                                        *self._geometry())
        return (_plane_view(gx, self.c_major),)


def _plane_view(planes, c_major):
    """A kernel's memory-order result as (N, C, ...): the (C, N, ...) array
    transposed back when the input was C-major."""
    return planes.transpose(1, 0, 2, 3) if c_major else planes


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling as ``torch.nn.functional.max_pool2d`` (padding is -inf;
    ``stride`` defaults to ``kernel_size``; ties: the first maximum)."""
    op = "max_pool2d"
    x = as_tensor(x)
    x4, unbatched = _as_batched(op, x)
    K, S, P, D, out = _pool_params(op, x4.shape, kernel_size, stride, padding, dilation,
                                   ceil_mode)
    fn = MaxPool2dFunction(K, S, P, D, out, return_indices=return_indices)
    y = fn(x4)
    if not return_indices:
        return y.reshape(*y.shape[1:]) if unbatched else y
    indices = Tensor._wrap(fn.indices())
    if unbatched:
        y, indices = y.reshape(*y.shape[1:]), indices.reshape(*indices.shape[1:])
    return y, indices


def max_pool2d_relu(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``relu(max_pool2d(x, ...))`` as one op: one pass over x and none over the
    pooled map, no ReLU node in the graph; the same values and gradients as the
    two ops (PyTorch's: a window whose maximum is <= 0 gives 0 and passes no
    gradient; NaN stays NaN and passes it). max_pool2d's arguments, without
    return_indices."""
    op = "max_pool2d_relu"
    x = as_tensor(x)
    x4, unbatched = _as_batched(op, x)
    K, S, P, D, out = _pool_params(op, x4.shape, kernel_size, stride, padding, dilation,
                                   ceil_mode)
    y = MaxPool2dFunction(K, S, P, D, out, relu=True)(x4)
    return y.reshape(*y.shape[1:]) if unbatched else y


# -------------------------------------------------------------- avg_pool2d

def _window_counts(size, K, S, P, O, include_pad):
    """Per output row: how many rows of the window count in the divisor
    (PyTorch: the window clipped to the padded input, or to the input)."""
    start = np.arange(O, dtype=np.int64) * S - P
    if include_pad:
        return np.minimum(start + K, size + P) - start
    return np.minimum(start + K, size) - np.maximum(start, 0)


class AvgPool2dFunction(Function):
    """y = mean over each window, by im2col (zero padding) and col2im."""

    def __init__(self, kernel_size, stride, padding, output_size, count_include_pad,
                 divisor_override):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.output_size = output_size
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def _divisor(self, xp, H, W, dtype):
        (KH, KW), (SH, SW), (PH, PW), (OH, OW) = (self.kernel_size, self.stride, self.padding,
                                                  self.output_size)
        if self.divisor_override:
            return dtype.type(self.divisor_override)

        def build():
            rows = _window_counts(H, KH, SH, PH, OH, self.count_include_pad)
            cols = _window_counts(W, KW, SW, PW, OW, self.count_include_pad)
            return np.maximum(rows[:, None] * cols[None, :], 1).astype(dtype)
        # on the GPU, copied over once per geometry, not on every call
        return backend.device_constant(xp, ("avg_pool2d", H, W, self.kernel_size, self.stride,
                                            self.padding, self.output_size,
                                            self.count_include_pad, np.dtype(dtype).str), build)

    def forward(self, x):
        xp = backend.get_array_module(x)
        N, C, H, W = x.shape
        (KH, KW), (SH, SW), (PH, PW), (OH, OW) = (self.kernel_size, self.stride, self.padding,
                                                  self.output_size)
        col = backend.kernels_for(xp).im2col(x, KH, KW, SH, SW, PH, PW, 1, 1, OH, OW)
        self.x_hw = (H, W)
        y = col.sum(axis=(2, 3))
        y /= self._divisor(xp, H, W, x.dtype)
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        H, W = self.x_hw
        N, C, OH, OW = gy.shape
        (KH, KW), (SH, SW), (PH, PW) = self.kernel_size, self.stride, self.padding
        g = gy / self._divisor(xp, H, W, gy.dtype)
        gcol = xp.broadcast_to(g[:, :, None, None], (N, C, KH, KW, OH, OW))
        gx = backend.kernels_for(xp).col2im(gcol, H, W, SH, SW, PH, PW, 1, 1)
        return (gx,)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling as ``torch.nn.functional.avg_pool2d``."""
    op = "avg_pool2d"
    x = as_tensor(x)
    x4, unbatched = _as_batched(op, x)
    K, S, P, _, out = _pool_params(op, x4.shape, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None and int(divisor_override) <= 0:
        raise ValueError(f"{op}: divisor_override must be positive, got {divisor_override!r}")
    y = AvgPool2dFunction(K, S, P, out, bool(count_include_pad), divisor_override)(x4)
    return y.reshape(*y.shape[1:]) if unbatched else y


# ------------------------------------------------------ adaptive_avg_pool2d

def _adaptive_windows(size, out):
    """PyTorch's windows along one axis: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


class AdaptiveAvgPool2dFunction(Function):
    """Each output pixel averages its window; the windows are separable, so rows
    are averaged over H first (OH slices), then over W (OW slices). Sums over the
    windows themselves, not products with averaging matrices: those would turn one
    inf into NaN across whole rows and columns (0 * inf)."""

    def __init__(self, output_size):
        self.output_size = output_size

    def forward(self, x):
        xp = backend.get_array_module(x)
        N, C, H, W = x.shape
        self.rows = _adaptive_windows(H, self.output_size[0])
        self.cols = _adaptive_windows(W, self.output_size[1])
        self.x_shape = x.shape
        by_rows = xp.stack([x[:, :, a:b].mean(axis=2) for a, b in self.rows], axis=2)
        return xp.stack([by_rows[..., a:b].mean(axis=3) for a, b in self.cols], axis=3)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        N, C, H, W = self.x_shape
        g_rows = xp.zeros((N, C, gy.shape[2], W), gy.dtype)   # the gradient of by_rows
        for j, (a, b) in enumerate(self.cols):
            g_rows[..., a:b] += gy[..., j:j + 1] / gy.dtype.type(b - a)
        gx = xp.zeros(self.x_shape, gy.dtype)
        for i, (a, b) in enumerate(self.rows):
            gx[:, :, a:b] += g_rows[:, :, i:i + 1] / gy.dtype.type(b - a)
        return gx


def adaptive_avg_pool2d(x, output_size):
    """Adaptive 2-D average pooling as ``torch.nn.functional.adaptive_avg_pool2d``
    (``output_size`` an int or a pair; None in a pair keeps that input size)."""
    op = "adaptive_avg_pool2d"
    x = as_tensor(x)
    x4, unbatched = _as_batched(op, x)
    H, W = x4.shape[2:]
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"{op}: output_size must be an int or a pair, got {output_size!r}")
        out = (H if output_size[0] is None else int(output_size[0]),
               W if output_size[1] is None else int(output_size[1]))
    else:
        out = (int(output_size), int(output_size))
    if min(out) < 1:
        raise ValueError(f"{op}: output size {out} must be positive (input {_shape(x)})")
    if min(H, W) < 1:
        raise ValueError(f"{op}: empty input {_shape(x)}")
    y = AdaptiveAvgPool2dFunction(out)(x4)
    return y.reshape(*y.shape[1:]) if unbatched else y
