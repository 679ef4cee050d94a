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
GEMMs cost 2-3x more at the model's sizes); its (Co, N, L) result is then
transposed to NCHW with the bias added in the same pass (``gemm_to_nchw``).
Backward: ``gW = (col @ gy_t.T).T``, ``gcol = W.T @ gy_t`` and
``gx = col2im(gcol)``, with gy_t the (G, Cog, N*L) copy of gy made together
with ``gb = gy.sum((0, 2, 3))`` (``nchw_to_gemm``). Each is computed only when that input needs a
gradient, and ``col`` is kept for backward only when the weight needs one.

Peak extra memory of one conv2d forward + backward, in elements (times the
itemsize), beyond x, W, b, y, gy and the gradients themselves::

    forward:   N*C*KH*KW*OH*OW                (col, kept for backward)
             + N*Co*OH*OW                     (GEMM output before the NCHW transpose)
             + N*C*(H+2*PH)*(W+2*PW)          (padded copy; NumPy path only)
    backward:  N*Co*OH*OW                     (gy_t)
             + N*C*KH*KW*OH*OW                (gcol)
             + N*C*(H+2*PH)*(W+2*PW)          (padded col2im buffer; NumPy path only)
    peak  =  2*N*C*KH*KW*OH*OW + N*Co*OH*OW + N*C*(H+2*PH)*(W+2*PW)

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

import threading

import numpy as np

from .. import backend
from ..tensor import Function, Tensor

__all__ = ["Conv2dFunction", "MaxPool2dFunction", "AvgPool2dFunction",
           "AdaptiveAvgPool2dFunction", "conv2d", "max_pool2d", "avg_pool2d",
           "adaptive_avg_pool2d", "clear_workspace"]


# ---------------------------------------------------------------- helpers

def _pair(op, name, value, minimum):
    """An int or a pair of ints -> (h, w), each checked against ``minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    try:
        pair = tuple(int(v) for v in pair)
    except (TypeError, ValueError):
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


def _as_tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


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

class Conv2dFunction(Function):
    """y = conv2d(x, W[, b]) by im2col + one batched GEMM (see the module docstring)."""

    def __init__(self, stride=1, padding=0, dilation=1, groups=1):
        self.stride = _pair("conv2d", "stride", stride, 1)
        self.padding = _pair("conv2d", "padding", padding, 0)
        self.dilation = _pair("conv2d", "dilation", dilation, 1)
        self.groups = int(groups)
        if self.groups < 1:
            raise ValueError(f"conv2d: groups must be positive, got {groups!r}")

    def forward(self, x, w, b=None):
        xp = backend.get_array_module(x)
        kernels = backend.kernels_for(xp)
        N, C, H, W = x.shape
        Co, Cg, KH, KW = w.shape
        (SH, SW), (PH, PW), (DH, DW), G = self.stride, self.padding, self.dilation, self.groups
        OH, OW = _out_size(H, KH, SH, PH, DH), _out_size(W, KW, SW, PW, DW)
        L, K = OH * OW, Cg * KH * KW
        # channels-first col (C, KH, KW, N, OH, OW) = (G, K, N*L): one GEMM for
        # the whole batch (64 thin per-sample GEMMs cost 2-3x more)
        col = kernels.im2col(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, channels_first=True,
                             out=_workspace.get(xp, (C, KH, KW, N, OH, OW), x.dtype))
        y_t = _workspace.get(xp, (G, Co // G, N * L), x.dtype)
        xp.matmul(w.reshape(G, Co // G, K), col.reshape(G, K, N * L), out=y_t)
        # (Co, N*L) -> NCHW with the bias added in the same pass
        y = kernels.gemm_to_nchw(y_t.reshape(Co, N * L), b, N, OH, OW)
        _workspace.put(y_t)
        self.x_shape = (N, C, H, W)
        self.w_shape = w.shape
        if self.needs_input_grad[1]:
            self.col = col   # back to the workspace in release(), after backward
        else:
            _workspace.put(col)
        if self.needs_input_grad[0]:
            self.w = w
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        N, C, H, W = self.x_shape
        Co, Cg, KH, KW = self.w_shape
        (SH, SW), (PH, PW), (DH, DW), G = self.stride, self.padding, self.dilation, self.groups
        OH, OW = gy.shape[2:]
        L, K, Cog = OH * OW, Cg * KH * KW, Co // G
        want_gb = len(self.needs_input_grad) > 2 and self.needs_input_grad[2]
        # (N, Co, OH, OW) -> (G, Cog, N*L), the layout of the forward GEMM's
        # output, and gb = gy.sum((0, 2, 3)) in the same pass
        gy_t = _workspace.get(xp, (Co, N, L), gy.dtype)
        gy_2d, gb = backend.kernels_for(xp).nchw_to_gemm(gy, bias_grad=want_gb, out=gy_t)
        gy_g = gy_2d.reshape(G, Cog, N * L)
        gx = gw = None
        if self.needs_input_grad[0]:
            w = self.w.reshape(G, Cog, K)
            gcol = _workspace.get(xp, (G, K, N * L), gy.dtype)
            xp.matmul(w.transpose(0, 2, 1), gy_g, out=gcol)
            gx = backend.kernels_for(xp).col2im(
                gcol.reshape(C, KH, KW, N, OH, OW), H, W, SH, SW, PH, PW, DH, DW,
                channels_first=True)
            _workspace.put(gcol)
        if self.needs_input_grad[1]:
            col = self.col.reshape(G, K, N * L)
            # (col @ gy_t.T).T rather than gy_t @ col.T: BLAS then streams the big
            # col untransposed (15-40% faster at the model's shapes)
            gw = xp.matmul(col, gy_g.transpose(0, 2, 1)).transpose(0, 2, 1)   # (G, Cog, K)
            gw = gw.reshape(Co, Cg, KH, KW)
        _workspace.put(gy_t)
        return gx, gw, gb

    def release(self):
        col = self.__dict__.get("col")
        super().release()
        if col is not None:   # the graph is gone: nothing can read col again
            _workspace.put(col)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution of ``x`` (N, C, H, W) with ``weight`` (Co, C/groups, KH, KW),
    exactly as ``torch.nn.functional.conv2d`` (int or pair arguments; a 3-D
    unbatched input is accepted). Returns (N, Co, OH, OW)."""
    x, weight = _as_tensor(x), _as_tensor(weight)
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
        bias = _as_tensor(bias)
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
    """y = max over each window; ``self.indices`` (int64, into each H*W plane)
    are the argmaxes, PyTorch's ``return_indices`` convention."""

    def __init__(self, kernel_size, stride, padding, dilation, output_size):
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation, self.output_size = padding, dilation, output_size

    def forward(self, x):
        kernels = backend.kernels_for(backend.get_array_module(x))
        (KH, KW), (SH, SW), (PH, PW), (DH, DW) = (self.kernel_size, self.stride, self.padding,
                                                  self.dilation)
        OH, OW = self.output_size
        y, self.indices = kernels.maxpool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)
        self.x_hw = x.shape[2:]
        return y

    def backward(self, gy):
        kernels = backend.kernels_for(backend.get_array_module(gy))
        H, W = self.x_hw
        gx = kernels.maxpool2d_backward(gy, self.indices, H, W, *self.kernel_size,
                                        *self.stride, *self.padding, *self.dilation)
        return (gx,)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling as ``torch.nn.functional.max_pool2d`` (padding is -inf;
    ``stride`` defaults to ``kernel_size``; ties: the first maximum)."""
    op = "max_pool2d"
    x = _as_tensor(x)
    x4, unbatched = _as_batched(op, x)
    K, S, P, D, out = _pool_params(op, x4.shape, kernel_size, stride, padding, dilation,
                                   ceil_mode)
    fn = MaxPool2dFunction(K, S, P, D, out)
    y = fn(x4)
    indices = Tensor._wrap(fn.indices)
    if unbatched:
        y, indices = y.reshape(*y.shape[1:]), indices.reshape(*indices.shape[1:])
    return (y, indices) if return_indices else y


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
        rows = _window_counts(H, KH, SH, PH, OH, self.count_include_pad)
        cols = _window_counts(W, KW, SW, PW, OW, self.count_include_pad)
        div = np.maximum(rows[:, None] * cols[None, :], 1).astype(dtype)
        return xp.asarray(div)

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
    x = _as_tensor(x)
    x4, unbatched = _as_batched(op, x)
    K, S, P, _, out = _pool_params(op, x4.shape, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None and int(divisor_override) <= 0:
        raise ValueError(f"{op}: divisor_override must be positive, got {divisor_override!r}")
    y = AvgPool2dFunction(K, S, P, out, bool(count_include_pad), divisor_override)(x4)
    return y.reshape(*y.shape[1:]) if unbatched else y


# ------------------------------------------------------ adaptive_avg_pool2d

def _adaptive_matrix(size, out, dtype):
    """(out, size) averaging matrix: row i averages PyTorch's window
    [floor(i*size/out), ceil((i+1)*size/out))."""
    m = np.zeros((out, size), dtype=dtype)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class AdaptiveAvgPool2dFunction(Function):
    """y = Ah @ x @ Aw.T with per-axis averaging matrices (windows are separable)."""

    def __init__(self, output_size):
        self.output_size = output_size

    def forward(self, x):
        xp = backend.get_array_module(x)
        H, W = x.shape[2:]
        OH, OW = self.output_size
        self.ah = xp.asarray(_adaptive_matrix(H, OH, x.dtype))
        self.aw = xp.asarray(_adaptive_matrix(W, OW, x.dtype))
        return xp.matmul(xp.matmul(self.ah, x), self.aw.T)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        return (xp.matmul(xp.matmul(self.ah.T, gy), self.aw),)


def adaptive_avg_pool2d(x, output_size):
    """Adaptive 2-D average pooling as ``torch.nn.functional.adaptive_avg_pool2d``
    (``output_size`` an int or a pair; None in a pair keeps that input size)."""
    op = "adaptive_avg_pool2d"
    x = _as_tensor(x)
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
