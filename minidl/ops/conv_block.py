"""Fused CNN blocks: ``relu(max_pool2d(conv2d(x, W, b, padding=P), 2))`` and
``relu(conv2d(x, W, b, ...))``, each as one op.

Users do not call these: :mod:`minidl.fusion` runs them in place of the
ops a model calls (``nn.Conv2d`` -> ``nn.ReLU`` -> ``nn.MaxPool2d``, or
``F.max_pool2d(F.relu(conv(x)), 2)``, in either order of ReLU and pool).
Values and gradients are those of the separate ops.

ConvPoolReLU shapes: x (N, C, H, W), W (Co, C, KH, KW), b (Co,) or none,
stride 1, dilation 1, zero padding (PH, PW); the conv output (N, Co, OH, OW)
is pooled 2x2 with stride 2 in floor mode to (N, Co, OH//2, OW//2), in the
C-major plane order (see :mod:`minidl.kernels.common`). Max-pool and ReLU
commute (ReLU is monotone), so the pool runs first and the ReLU is applied
to each window's pick: a window whose maximum is <= 0 gives 0 and passes no
gradient either way. Fused (Numba kernels with cblas, see
:mod:`minidl.kernels.cpu_conv_block`), the conv's output and its gradient
never exist as whole arrays, nor does its unfolded input: each block of
images is unfolded and goes through the GEMM, the pool and the ReLU while it
is in a thread's cache, in one parallel region forward and one backward
(with the col2im of the input gradient).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..kernels.common import is_c_major, plane_major
from .arith import ReLU
from ..tensor import Function
from .conv import Conv2dFunction


class ConvPoolReLU(Function):
    """The fused conv -> 2x2 max-pool -> ReLU (see the module docstring);
    inputs x, W and optionally b."""

    def __init__(self, padding):
        self.padding = padding

    def forward(self, x, w, b=None):
        import numba
        from ..kernels import cpu_conv_block as kernels
        N, C, H, W = x.shape
        Co, _, KH, KW = w.shape
        PH, PW = self.padding
        OH, OW = H + 2 * PH - KH + 1, W + 2 * PW - KW + 1
        L, K = OH * OW, C * KH * KW
        K1 = K + 1
        bias = np.zeros((Co, 1), x.dtype) if b is None else b.reshape(Co, 1)
        w1 = np.concatenate([w.reshape(Co, K), bias], axis=1)   # (Co, K1)
        self.want_gw = self.needs_input_grad[1] or (b is not None and self.needs_input_grad[2])
        threads = numba.get_num_threads()
        block = kernels.block_images(N, L, threads)
        xm, c_major = plane_major(x)
        pooled = np.empty((Co, N, OH // 2, OW // 2), dtype=x.dtype)
        want_code = any(self.needs_input_grad)
        code = np.empty(pooled.shape if want_code else (1, 1, 1, 1), dtype=np.uint8)
        tasks = -(-N // block)
        kernels.conv_pool_forward(
            w1, xm, c_major, kernels.scratch(threads, K1, block * L, x.dtype),
            kernels.scratch(threads, Co, block * L, x.dtype), pooled, code, KH, KW, PH, PW, OH, OW,
            tasks, want_code, x.dtype.type(0))
        self.xm = xm if self.want_gw else None   # unfolded again, block by block
        self.w1, self.code, self.has_bias, self.c_major = w1, code, b is not None, c_major
        self.x_shape, self.k_hw, self.out_hw = x.shape, (KH, KW), (OH, OW)
        self.block, self.tasks = block, tasks
        return pooled.transpose(1, 0, 2, 3)

    def backward(self, gy):
        import numba
        from ..kernels import cpu_conv_block as kernels
        N, C, H, W = self.x_shape
        (KH, KW), (OH, OW) = self.k_hw, self.out_hw
        Co, K1 = self.w1.shape
        K, L, dtype = K1 - 1, OH * OW, self.w1.dtype
        gpooled = np.ascontiguousarray(gy.transpose(1, 0, 2, 3))   # (Co, N, OH//2, OW//2)
        threads = numba.get_num_threads()
        cols = self.block * L
        gw_parts = np.zeros((threads if self.want_gw else 1, K1, Co), dtype=dtype)
        want_gx = self.needs_input_grad[0]
        gx = np.empty((C, N, H, W) if want_gx else (1, 1, 1, 1), dtype=dtype)
        xm = self.xm if self.want_gw else np.empty((1, 1, 1, 1), dtype)
        kernels.conv_pool_backward(
            self.w1, xm, self.c_major, gpooled, self.code,
            kernels.scratch(threads, K1 if self.want_gw else 0, cols, dtype),
            kernels.scratch(threads, Co, cols, dtype),
            kernels.scratch(threads, K if want_gx else 1, cols, dtype), gw_parts, gx, KH, KW,
            *self.padding, OH, OW, self.tasks, self.want_gw, want_gx, dtype.type(0))
        gx = gx.transpose(1, 0, 2, 3) if want_gx else None
        if not self.want_gw:
            return (gx, None, None) if self.has_bias else (gx, None)
        gw1 = gw_parts.sum(axis=0)                       # (K1, Co)
        gw = np.ascontiguousarray(gw1[:K].T).reshape(Co, C, KH, KW)
        return (gx, gw, gw1[K].copy()) if self.has_bias else (gx, gw)


def fusable(x, weight, bias, padding):
    """Whether :class:`ConvPoolReLU` can run ``conv2d(x, weight, bias, padding=padding)``
    (stride 1, dilation 1, one group: the caller's checks) pooled 2x2: the Numba
    kernels with cblas, a CPU float input in N-major or C-major planes, and a
    conv output of at least 2x2."""
    from ..kernels import cpu_blas
    if not (backend.numba_enabled() and cpu_blas.available() and x.device == "cpu"
            and x.ndim == 4 and weight.ndim == 4 and min(x.shape) > 0
            and x.dtype in (np.float32, np.float64) and x.dtype == weight.dtype
            and (bias is None or bias.dtype == x.dtype)
            and (x._data.flags.c_contiguous or is_c_major(x._data))):
        return False
    (H, W), (KH, KW), (PH, PW) = x.shape[2:], weight.shape[2:], padding
    return min(H + 2 * PH - KH + 1, W + 2 * PW - KW + 1) >= 2


class Conv2dReLU(Conv2dFunction):
    """relu(conv2d(x, W, b)) as one op: the ReLU clips the conv's fresh output
    in place (no second array, no ReLU node), and backward masks the gradient
    as ReLU's backward does before the conv's backward. Any conv2d geometry."""

    def forward(self, x, w, b=None):
        y = super().forward(x, w, b)
        backend.get_array_module(y).maximum(y, y.dtype.type(0), out=y)   # NaN stays NaN
        if any(self.needs_input_grad):
            self.relu = ReLU()
            self.relu.y = y
        return y

    def backward(self, gy):
        return super().backward(self.relu.backward(gy))
