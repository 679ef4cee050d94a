"""``relu(max_pool2d(conv2d(x, W, b, padding=1), 2))`` as one op: the CNN block.

Shapes: x (N, C, H, W) with H and W even, W (Co, C, 3, 3), b (Co,) ->
(N, Co, H/2, W/2), in the C-major plane order (see :mod:`minidl.kernels.common`).

Values and gradients are those of the three ops (:func:`conv_pool_relu`
checks it can fuse and otherwise runs them). Fused (Numba kernels with
cblas, see :mod:`minidl.kernels.cpu_conv_block`), the conv's output and its
gradient never exist as whole arrays: each block of images goes through the
GEMM, the pool and the ReLU while it is in a thread's cache, in one parallel
region forward and one backward (with the col2im of the input gradient).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..kernels.common import is_c_major
from ..tensor import as_tensor
from .conv import (_COL_CHUNK_BYTES, _ColKeepingFunction, _workspace, conv2d,
                   max_pool2d_relu)


class ConvPoolReLU(_ColKeepingFunction):
    """The fused block (see the module docstring); inputs x, W, b."""

    def forward(self, x, w, b):
        import numba
        from ..kernels import cpu_conv_block as kernels
        N, C, H, W = x.shape
        Co, L = w.shape[0], H * W
        K1 = C * 9 + 1
        col_size = K1 * N * L
        buf = _workspace.get(np, (col_size,), x.dtype)
        col = buf.reshape(K1, N * L)
        backend.kernels_for(np).im2col(x, 3, 3, 1, 1, 1, 1, 1, 1, H, W, channels_first=True,
                                       out=col[:C * 9].reshape(C, 3, 3, N, H, W))
        col[C * 9] = 1                                   # the bias's row
        w1 = np.concatenate([w.reshape(Co, C * 9), b.reshape(Co, 1)], axis=1)   # (Co, K1)
        threads = numba.get_num_threads()
        block = kernels.block_images(N, L, threads)
        tasks = -(-N // block)
        pooled = np.empty((Co, N, H // 2, W // 2), dtype=x.dtype)
        want_code = any(self.needs_input_grad)
        code = np.empty(pooled.shape if want_code else (1, 1, 1, 1), dtype=np.uint8)
        kernels.conv_pool_forward(w1, col, kernels.scratch(threads, Co, block * L, x.dtype),
                                  pooled, code, H, W, tasks, want_code, x.dtype.type(0))
        self.want_gw = self.needs_input_grad[1] or self.needs_input_grad[2]
        if self.want_gw:
            self.col_buf, self.col = buf, col   # back to the workspace in release()
        else:
            _workspace.put(buf)
            self.col = np.empty((K1, 0), dtype=x.dtype)   # never read (no weight gradient)
        self.w1, self.code = w1, code
        self.x_shape, self.block, self.tasks = x.shape, block, tasks
        return pooled.transpose(1, 0, 2, 3)

    def backward(self, gy):
        import numba
        from ..kernels import cpu_conv_block as kernels
        N, C, H, W = self.x_shape
        Co, K1 = self.w1.shape
        L, dtype = H * W, self.w1.dtype
        gpooled = np.ascontiguousarray(gy.transpose(1, 0, 2, 3))   # (Co, N, H/2, W/2)
        threads = numba.get_num_threads()
        cols = self.block * L
        gw_parts = np.zeros((threads if self.want_gw else 1, K1, Co), dtype=dtype)
        want_gx = self.needs_input_grad[0]
        gx = np.empty((C, N, H, W) if want_gx else (1, 1, 1, 1), dtype=dtype)
        kernels.conv_pool_backward(
            self.w1, self.col, gpooled, self.code, kernels.scratch(threads, Co, cols, dtype),
            kernels.scratch(threads, C * 9 if want_gx else 1, cols, dtype), gw_parts, gx, H, W,
            self.tasks, self.want_gw, want_gx, dtype.type(0))
        gx = gx.transpose(1, 0, 2, 3) if want_gx else None
        if not self.want_gw:
            return gx, None, None
        gw1 = gw_parts.sum(axis=0)                       # (K1, Co)
        gw = np.ascontiguousarray(gw1[:C * 9].T).reshape(Co, C, 3, 3)
        return gx, gw, gw1[C * 9].copy()


def _fusable(x, weight, bias):
    from ..kernels import cpu_blas
    return (backend.numba_enabled() and cpu_blas.available() and x.device == "cpu"
            and x.ndim == 4 and weight.ndim == 4 and bias is not None
            and x.dtype in (np.float32, np.float64) and x.dtype == weight.dtype == bias.dtype
            and weight.shape[1:] == (x.shape[1], 3, 3) and tuple(bias.shape) == weight.shape[:1]
            and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0 and min(x.shape) > 0
            and (x._data.flags.c_contiguous or is_c_major(x._data))
            # the whole unfolded input, kept for backward, within conv2d's chunk
            # budget; past it, conv2d unfolds the batch in chunks and is faster
            and (x.shape[1] * 9 + 1) * x.shape[0] * x.shape[2] * x.shape[3] * x._data.itemsize
            <= _COL_CHUNK_BYTES)


def conv_pool_relu(x, weight, bias):
    """``relu(max_pool2d(conv2d(x, weight, bias, padding=1), 2))`` for a 3x3
    weight: one fused op where the kernels allow (see the module docstring),
    else the three ops. Returns (N, Co, H/2, W/2)."""
    x, weight = as_tensor(x), as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    if not _fusable(x, weight, bias):
        return max_pool2d_relu(conv2d(x, weight, bias, padding=1), 2)
    return ConvPoolReLU()(x, weight, bias)
