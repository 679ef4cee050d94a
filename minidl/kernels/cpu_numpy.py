"""Convolution and pooling kernels in plain NumPy (used when Numba is off).

Chainer's approach: im2col is a loop over the KH x KW kernel offsets, each
copying one strided slice of the padded input vectorised over N, C, OH, OW;
col2im is the same loop adding the slice back (no ``np.add.at``). Max
pooling is im2col with -inf padding followed by an argmax over the window.

Notation (as in :mod:`minidl.ops.conv`): N batch, C channels, H x W input,
KH x KW kernel, SH/SW stride, PH/PW padding, DH/DW dilation, OH x OW output.
Windows may run past the bottom/right of the padded input (ceil_mode); those
positions read ``pad_value``.
"""
from __future__ import annotations

import numpy as np

from .common import (batch_range, col2im_destination, gemm_to_nchw,  # noqa: F401
                     maxpool2d_indices, nchw_to_gemm, output_array, relu_pooled)
from .common import dropout_apply, relu, threshold_backward  # noqa: F401


def _padded_extent(size, K, S, P, D, O):
    """Rows (or columns) the padded buffer needs: the input plus both pads,
    or more when ceil_mode lets the last window overhang."""
    return max(size + 2 * P, (O - 1) * S + (K - 1) * D + 1)


def _pad(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, pad_value):
    N, C, H, W = x.shape
    Hp = _padded_extent(H, KH, SH, PH, DH, OH)
    Wp = _padded_extent(W, KW, SW, PW, DW, OW)
    if (Hp, Wp) == (H, W):
        return x
    buf = np.empty((N, C, Hp, Wp), dtype=x.dtype)
    # fill only the border, then copy x once into the interior
    buf[:, :, :PH] = pad_value
    buf[:, :, PH + H:] = pad_value
    buf[:, :, PH:PH + H, :PW] = pad_value
    buf[:, :, PH:PH + H, PW + W:] = pad_value
    buf[:, :, PH:PH + H, PW:PW + W] = x
    return buf


def im2col(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, pad_value=0.0, channels_first=False,
           out=None, batch=None):
    """(N, C, H, W) -> contiguous (N, C, KH, KW, OH, OW) of the windows' pixels,
    or (C, KH, KW, N, OH, OW) with ``channels_first`` (one GEMM for the batch).
    ``out``: a C-contiguous array of that shape and x's dtype to fill (reuse).
    ``batch=(n0, n1)``: unfold only those images (col's N is then n1 - n0)."""
    if batch is not None:
        n0, n1 = batch_range(batch, x.shape[0])
        x = x[n0:n1]
    N, C = x.shape[:2]
    xp_ = _pad(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, pad_value)
    if channels_first:
        col = output_array(np, out, (C, KH, KW, N, OH, OW), x.dtype)
        xp_ = xp_.transpose(1, 0, 2, 3)   # each offset's slice then lands as (C, N, OH, OW)
    else:
        col = output_array(np, out, (N, C, KH, KW, OH, OW), x.dtype)
    dst = col.transpose(0, 3, 1, 2, 4, 5) if channels_first else col
    h_span, w_span = SH * (OH - 1) + 1, SW * (OW - 1) + 1
    for i in range(KH):
        h0 = i * DH
        for j in range(KW):
            w0 = j * DW
            dst[:, :, i, j] = xp_[:, :, h0:h0 + h_span:SH, w0:w0 + w_span:SW]
    return col


def col2im(col, H, W, SH, SW, PH, PW, DH, DW, channels_first=False, out=None, batch=None):
    """Inverse of :func:`im2col`'s gather (same layout flag) -> (N, C, H, W),
    summing the contributions of overlapping windows; padding is dropped.
    With ``out`` (and ``batch=(n0, n1)``), images n0..n1-1 of ``out`` are
    overwritten with the result instead."""
    _, _, where = col2im_destination(col, channels_first, H, W, out, batch)
    img = _col2im(col, H, W, SH, SW, PH, PW, DH, DW, channels_first)
    if out is None:
        return img
    out[where[0]:where[1]] = img
    return out


def _col2im(col, H, W, SH, SW, PH, PW, DH, DW, channels_first):
    if channels_first:
        col = col.transpose(3, 0, 1, 2, 4, 5)   # a view as (N, C, KH, KW, OH, OW)
    N, C, KH, KW, OH, OW = col.shape
    Hp = _padded_extent(H, KH, SH, PH, DH, OH)
    Wp = _padded_extent(W, KW, SW, PW, DW, OW)
    img = np.zeros((N, C, Hp, Wp), dtype=col.dtype)
    h_span, w_span = SH * (OH - 1) + 1, SW * (OW - 1) + 1
    for i in range(KH):
        h0 = i * DH
        for j in range(KW):
            w0 = j * DW
            img[:, :, h0:h0 + h_span:SH, w0:w0 + w_span:SW] += col[:, :, i, j]
    if (Hp, Wp) == (H, W):
        return img
    return np.ascontiguousarray(img[:, :, PH:PH + H, PW:PW + W])


def _first_offset(K, S, P, D, O):
    """Per output row: the first kernel offset whose input row is >= 0."""
    start = np.arange(O, dtype=np.int64) * S - P
    return np.where(start < 0, (-start + D - 1) // D, 0)


def matmul(a, b, out=None):
    """``a @ b`` (2-D: a (M, K), b (K, N)), with two OpenBLAS tunings.

    BLAS first copies ("packs") its operands into its own layout, which for
    a tiny operand against a long one costs more than the multiply; cut into
    8 slices of the long axis, multiplied as one batch, each slice is small
    enough for OpenBLAS's unpacked small-matrix kernel:

    * a tiny output over a long inner dimension (the first conv's weight
      gradient, 10 x 8 over 50,176): partial products over 8 slices of K,
      summed (0.45 -> 0.18 ms, with 1 or 2 threads alike);
    * a tiny a against a long b (the first conv's forward, 8 x 10 times
      10 x 50,176): 8 column blocks of the output (1.7x faster; slower for
      the second conv's 16 x 73, hence the bound).
    """
    parts = 8
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0]:
        (M, K), N = a.shape, b.shape[1]
        if M * N <= 4096 and K >= 16384 and K % parts == 0 and out is None:
            sliced_a = a.reshape(M, parts, K // parts).transpose(1, 0, 2)   # (parts, M, K/8)
            sliced_b = b.reshape(parts, K // parts, N)                      # (parts, K/8, N)
            return np.matmul(sliced_a, sliced_b).sum(axis=0)
        if (M * K <= 256 and N >= 16384 and N % parts == 0
                and (out is None or out.flags.c_contiguous)):
            out = np.empty((M, N), dtype=np.result_type(a, b)) if out is None else out
            np.matmul(a, b.reshape(K, parts, N // parts).transpose(1, 0, 2),
                      out=out.reshape(M, parts, N // parts).transpose(1, 0, 2))
            return out
    return np.matmul(a, b, out=out)


def maxpool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, indices=True, relu=False):
    """Max over each window; returns (y, indices) with int64 indices into the
    H*W plane of the input, or (y, None) without ``indices``. Padding counts
    as -inf; ties go to the first maximum in row-major window order
    (PyTorch's rule). ``relu``: y = relu(maxpool(x)), and the index of a
    window whose pick is <= 0 is -1 (no gradient)."""
    if relu:
        return relu_pooled(*maxpool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                                              indices))
    N, C, H, W = x.shape
    col = im2col(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, pad_value=-np.inf)
    col = col.reshape(N, C, KH * KW, OH, OW)
    if not indices:
        return col.max(axis=2), None
    arg = col.argmax(axis=2)  # numpy's argmax returns the first maximum...
    nan = np.isnan(col)
    if nan.any():   # ...and the first NaN; PyTorch's scan keeps the last NaN
        last_nan = KH * KW - 1 - nan[:, :, ::-1].argmax(axis=2)
        arg = np.where(nan.any(axis=2), last_nan, arg)
    y = np.take_along_axis(col, arg[:, :, None], axis=2)[:, :, 0]
    kh, kw = np.divmod(arg, KW)
    oh = np.arange(OH, dtype=np.int64)[:, None]
    ow = np.arange(OW, dtype=np.int64)[None, :]
    h = oh * SH - PH + kh * DH
    w = ow * SW - PW + kw * DW
    outside = (h < 0) | (h >= H) | (w < 0) | (w >= W)
    if outside.any():
        # Only a window whose real pixels are all -inf (or that has none) lands
        # on padding; PyTorch then reports its first tap at or past row/col 0.
        fh = _first_offset(KH, SH, PH, DH, OH)[:, None]
        fw = _first_offset(KW, SW, PW, DW, OW)[None, :]
        h = np.where(outside, oh * SH - PH + fh * DH, h)
        w = np.where(outside, ow * SW - PW + fw * DW, w)
    indices = (h * W + w).astype(np.int64, copy=False)
    return np.ascontiguousarray(y), indices


def maxpool2d_backward(gy, argmax, H, W, KH, KW, SH, SW, PH, PW, DH, DW):
    """Scatter-add gy (N, C, OH, OW) into a zero (N, C, H, W) at ``argmax``;
    overlapping windows that chose the same pixel accumulate. The window
    geometry is unused here (the GPU gather needs it; one shared signature)."""
    N, C = gy.shape[:2]
    plane = H * W
    offsets = np.arange(N * C, dtype=np.int64).reshape(N, C, 1, 1) * plane
    flat, weights = argmax + offsets, gy
    inside = (argmax >= 0) & (argmax < plane)
    if not inside.all():  # a window with no real pixel (PyTorch's index lies outside)
        flat, weights = flat[inside], gy[inside]
    # bincount accumulates repeated indices deterministically (in float64)
    gx = np.bincount(flat.ravel(), weights=weights.ravel(), minlength=N * C * plane)
    return gx.astype(gy.dtype, copy=False).reshape(N, C, H, W)
