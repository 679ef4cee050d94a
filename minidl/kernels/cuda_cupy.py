"""Convolution and pooling kernels for CuPy arrays (the GPU path).

Same functions and signatures as :mod:`.cpu_numpy`. Each kernel is a
``cupy.ElementwiseKernel`` built on first use and memoized, so importing
this module imports neither CuPy nor the CUDA compiler. One thread per
output element; col2im and the max-pool backward are *gathers*: one thread
per input pixel sums the windows that cover it, so there are no atomics and
results are bit-identical from run to run. All index arithmetic is 64-bit
(``long long``), so arrays over 2 GiB are safe.

Notation as in :mod:`minidl.ops.conv`.
"""
from __future__ import annotations

import functools

from .common import (batch_range, col2im_destination, gemm_to_nchw,  # noqa: F401
                     maxpool2d_indices, nchw_to_gemm, output_array)
from .common import dropout_apply, relu, threshold_backward  # noqa: F401

_GEOMETRY = ("int64 H, int64 W, int64 KH, int64 KW, int64 SH, int64 SW, "
             "int64 PH, int64 PW, int64 DH, int64 DW, int64 OH, int64 OW")


# One thread per output element of a pooling window: its (nc, oh, ow), its
# first tap at or past row/col 0 (h0, w0), and the rows/cols it ends before.
_POOL_WINDOW = """
        long long t = i;
        const long long ow = t % OW; t /= OW;
        const long long oh = t % OH;
        const long long nc = t / OH;
        long long h0 = oh * SH - PH;
        long long w0 = ow * SW - PW;
        const long long h1 = min(h0 + (KH - 1) * DH + 1, H);
        const long long w1 = min(w0 + (KW - 1) * DW + 1, W);
        while (h0 < 0) h0 += DH;
        while (w0 < 0) w0 += DW;
"""


def _cupy():
    import cupy
    return cupy


@functools.lru_cache(maxsize=None)
def _im2col_kernel():
    return _cupy().ElementwiseKernel(
        "raw T img, " + _GEOMETRY + ", int64 N, int64 C, bool cf, T pad_value",
        "T col",
        """
        long long t = i;
        const long long ow = t % OW; t /= OW;
        const long long oh = t % OH; t /= OH;
        long long kw, kh, nc;
        if (cf) {            /* col is (C, KH, KW, N, OH, OW) */
            const long long n = t % N; t /= N;
            kw = t % KW; t /= KW;
            kh = t % KH;
            nc = n * C + t / KH;
        } else {             /* col is (N, C, KH, KW, OH, OW) */
            kw = t % KW; t /= KW;
            kh = t % KH;
            nc = t / KH;
        }
        const long long h = oh * SH - PH + kh * DH;
        const long long w = ow * SW - PW + kw * DW;
        col = (h >= 0 && h < H && w >= 0 && w < W) ? img[(nc * H + h) * W + w] : pad_value;
        """,
        "minidl_im2col")


@functools.lru_cache(maxsize=None)
def _col2im_kernel():
    # One thread per input pixel: walk the kernel offsets, find the output
    # position (if any) whose window puts that offset on this pixel, add.
    return _cupy().ElementwiseKernel(
        "raw T col, " + _GEOMETRY + ", int64 N, int64 C, bool cf",
        "T img",
        """
        long long t = i;
        const long long w = t % W; t /= W;
        const long long h = t % H;
        const long long nc = t / H;
        const long long n = nc / C, c = nc % C;
        T acc = 0;
        for (long long kh = 0; kh < KH; ++kh) {
            const long long hs = h + PH - kh * DH;   /* = oh * SH */
            if (hs < 0 || hs % SH != 0) continue;
            const long long oh = hs / SH;
            if (oh >= OH) continue;
            for (long long kw = 0; kw < KW; ++kw) {
                const long long ws = w + PW - kw * DW;
                if (ws < 0 || ws % SW != 0) continue;
                const long long ow = ws / SW;
                if (ow >= OW) continue;
                const long long plane = cf ? ((c * KH + kh) * KW + kw) * N + n
                                           : (nc * KH + kh) * KW + kw;
                acc += col[(plane * OH + oh) * OW + ow];
            }
        }
        img = acc;
        """,
        "minidl_col2im")


@functools.lru_cache(maxsize=None)
def _maxpool_fwd_kernel():
    # PyTorch's loop: start from -inf at the first in-bounds pixel and take
    # strictly greater values (the first maximum wins) or NaN.
    return _cupy().ElementwiseKernel(
        "raw T x, " + _GEOMETRY + ", bool relu",
        "T y, int64 idx",
        _POOL_WINDOW + """
        const long long plane = nc * H * W;
        long long best_i = h0 * W + w0;
        T best = -CUDART_INF;   /* CuPy's own math_constants.h defines it */
        for (long long hh = h0; hh < h1; hh += DH) {
            for (long long ww = w0; ww < w1; ww += DW) {
                const T v = x[plane + hh * W + ww];
                if (v > best || isnan(v)) {
                    best = v;
                    best_i = hh * W + ww;
                }
            }
        }
        if (relu && best <= 0) {   /* the fused ReLU: no gradient where it gives 0 */
            best = 0;
            best_i = -1;
        }
        y = best;
        idx = best_i;
        """,
        "minidl_maxpool2d_fwd")


@functools.lru_cache(maxsize=None)
def _maxpool_bwd_kernel():
    # Gather: one thread per input pixel sums gy over the windows covering it
    # whose argmax is this pixel.
    return _cupy().ElementwiseKernel(
        "raw T gy, raw int64 idx, " + _GEOMETRY,
        "T gx",
        """
        long long t = i;
        const long long w = t % W; t /= W;
        const long long h = t % H;
        const long long nc = t / H;
        const long long me = h * W + w;
        T acc = 0;
        for (long long kh = 0; kh < KH; ++kh) {
            const long long hs = h + PH - kh * DH;
            if (hs < 0 || hs % SH != 0) continue;
            const long long oh = hs / SH;
            if (oh >= OH) continue;
            for (long long kw = 0; kw < KW; ++kw) {
                const long long ws = w + PW - kw * DW;
                if (ws < 0 || ws % SW != 0) continue;
                const long long ow = ws / SW;
                if (ow >= OW) continue;
                const long long o = (nc * OH + oh) * OW + ow;
                if (idx[o] == me) acc += gy[o];
            }
        }
        gx = acc;
        """,
        "minidl_maxpool2d_bwd")


@functools.lru_cache(maxsize=None)
def _maxpool_bwd_stray_kernel():
    # A window wholly in the padding picks no pixel of its own: like PyTorch,
    # the forward records its first tap at or past row/col 0, which may lie
    # outside the window (or alias another row), so the gather above never
    # visits it. One thread per such window adds its gradient there.
    return _cupy().ElementwiseKernel(
        "raw T gy, raw int64 idx, " + _GEOMETRY,
        "raw T gx",
        _POOL_WINDOW + """
        const long long k = idx[i];
        if ((h0 >= h1 || w0 >= w1) && k >= 0 && k < H * W)
            atomicAdd(&gx[nc * H * W + k], gy[i]);
        """,
        "minidl_maxpool2d_bwd_stray")


@functools.lru_cache(maxsize=None)
def _has_empty_window(size, K, S, P, D, O):
    """Whether some window along one axis has no tap inside the input."""
    for o in range(O):
        start = o * S - P
        first = -(-max(-start, 0) // D)   # the first tap at or past 0
        if first >= K or start + first * D >= size:
            return True
    return False


def im2col(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, pad_value=0.0, channels_first=False,
           out=None, batch=None):
    """(N, C, H, W) -> contiguous (N, C, KH, KW, OH, OW) of the windows' pixels,
    or (C, KH, KW, N, OH, OW) with ``channels_first`` (one GEMM for the batch).
    ``out``: a C-contiguous array of that shape and x's dtype to fill (reuse).
    ``batch=(n0, n1)``: unfold only those images (col's N is then n1 - n0)."""
    cp = _cupy()
    if batch is not None:
        n0, n1 = batch_range(batch, x.shape[0])
        x = x[n0:n1]
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    shape = (C, KH, KW, N, OH, OW) if channels_first else (N, C, KH, KW, OH, OW)
    col = output_array(cp, out, shape, x.dtype)
    _im2col_kernel()(x, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, N, C,
                     bool(channels_first), x.dtype.type(pad_value), col)
    return col


def col2im(col, H, W, SH, SW, PH, PW, DH, DW, channels_first=False, out=None, batch=None):
    """Sum the windows of ``col`` (laid out as :func:`im2col` makes it) back
    into (N, C, H, W): one thread per pixel gathers the windows covering it.
    With ``out`` (and ``batch=(n0, n1)``), images n0..n1-1 of ``out`` (any
    strides) are overwritten instead."""
    cp = _cupy()
    col = cp.ascontiguousarray(col)
    if channels_first:
        C, KH, KW, N, OH, OW = col.shape
    else:
        N, C, KH, KW, OH, OW = col.shape
    _, _, where = col2im_destination(col, channels_first, H, W, out, batch)
    img = cp.empty((N, C, H, W), dtype=col.dtype) if out is None else out[where[0]:where[1]]
    _col2im_kernel()(col, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, N, C,
                     bool(channels_first), img)
    return img if out is None else out


def matmul(a, b, out=None):
    """``a @ b`` (cuBLAS)."""
    return _cupy().matmul(a, b, out=out)


def maxpool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, indices=True, relu=False):
    """Max over each window: (y, int64 indices into the input's H*W plane),
    or (y, None) without ``indices``. ``relu``: y = relu(maxpool(x)), and the
    index of a window whose pick is <= 0 is -1 (the gather never matches it),
    in the same kernel (:func:`.common.relu_pooled`'s boolean mask would make
    CuPy wait for the GPU to count it)."""
    cp = _cupy()
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    y = cp.empty((N, C, OH, OW), dtype=x.dtype)
    idx = cp.empty((N, C, OH, OW), dtype=cp.int64)
    _maxpool_fwd_kernel()(x, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, bool(relu), y, idx)
    return y, (idx if indices else None)


def maxpool2d_backward(gy, argmax, H, W, KH, KW, SH, SW, PH, PW, DH, DW):
    """gx (N, C, H, W): each pixel gathers gy from the windows that picked it.

    The gather needs the window geometry (the CPU kernels take and ignore it,
    so the three modules share one signature).
    """
    cp = _cupy()
    gy = cp.ascontiguousarray(gy)
    argmax = cp.ascontiguousarray(argmax, dtype=cp.int64)
    N, C, OH, OW = gy.shape
    gx = cp.empty((N, C, H, W), dtype=gy.dtype)
    _maxpool_bwd_kernel()(gy, argmax, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, gx)
    if _has_empty_window(H, KH, SH, PH, DH, OH) or _has_empty_window(W, KW, SW, PW, DW, OW):
        _maxpool_bwd_stray_kernel()(gy, argmax, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, gx,
                                    size=gy.size)
    return gx
