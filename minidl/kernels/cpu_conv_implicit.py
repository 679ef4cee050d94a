"""conv2d as implicit GEMM: im2col written per block of images inside the GEMM loop.

Notation as in :mod:`minidl.ops.conv`; K1 = K (+1 when the bias rides in
the GEMM as a row of ones under col and a column of W, as in conv2d's
im2col path). Groups = 1 only.

The im2col algorithm unfolds the whole batch (K x N*L, 50 MB for batch 64,
32 -> 64 channels on 26x26) and then multiplies it in one GEMM split over
the threads: every pass over col runs at memory speed, and backward
unfolds it again (col2im then writes a gcol as large). Here each task
takes a block of images: it unfolds them into its thread's scratch
(a few hundred KiB, so it stays in that core's cache), multiplies at once
with a single-threaded cblas GEMM (:mod:`.cpu_blas`), and in backward
unfolds them again, adds ``col @ gy.T`` into its thread's weight-gradient
partial sum, forms ``gcol = W.T @ gy`` in scratch and sums it into the
block's input planes (col2im). One parallel region each way; col and gcol
never exist whole. The same per-plane loops as :mod:`.cpu_numba`'s im2col
and col2im (every geometry: stride, padding, dilation), so the values are
the same products of the same columns, summed by the same BLAS kernels in
another blocking: equal to the im2col path up to float rounding (tests).

Layouts follow conv2d's: a C-major input gives a C-major output (the
block's GEMM writes (Co, images*L) columns of the (Co, N*L) output in
place); an N-major input gives an N-major one (the block's GEMM into
scratch, its (Co, L) planes copied out while in cache), so neither needs a
transpose pass over the whole output.
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange

from .common import is_c_major, plane_major
from .cpu_blas import _CACHE, NO_TRANS, TRANS, _gemm
from .cpu_numba import _col2im_plane, _im2col_plane

# A block's col (K1 x images*L) is held to about this many bytes, so it stays
# in the thread's L2 cache with the GEMM's packed panels (1 image at least).
_BLOCK_BYTES = 384 * 2**10


def block_images(N, K1, L, itemsize, threads):
    """Images per task: col under ``_BLOCK_BYTES``, at least one task per thread."""
    return max(1, min(-(-N // max(1, threads)), _BLOCK_BYTES // max(1, K1 * L * itemsize)))


@njit(cache=_CACHE)
def _unfold_block(xm, c_major, n0, n1, col_flat, K, geometry, one):
    """Images n0..n1-1 of xm (memory-order planes) -> the block's col
    (C, KH, KW, images, OH, OW) at the start of ``col_flat``, then a row of
    ones (the bias's) when col_flat has room for K1 = K + 1 rows."""
    C, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW = geometry
    m, L = n1 - n0, OH * OW
    col = col_flat[:K * m * L].reshape(C, KH, KW, m, OH, OW)
    for c in range(C):
        for n in range(m):
            plane = xm[c, n0 + n] if c_major else xm[n0 + n, c]
            _im2col_plane(plane, col, n, c, True, SH, SW, PH, PW, DH, DW, one - one)
    ones = col_flat[K * m * L:]
    for k in range(ones.shape[0]):
        ones[k] = one


@njit(inline="always", cache=_CACHE)
def _images(t, nb, N):
    """Task t's images: (first, count)."""
    n0 = t * nb
    return n0, min(N, n0 + nb) - n0


@njit(cache=_CACHE)
def _exchange(block, nmajor, n0, m, to_block):
    """Between a block's (Co, m*L) matrix and images n0..n0+m-1 of an N-major
    (N, Co, L) array: gather them into the block (``to_block``) or copy it out."""
    Co, L = nmajor.shape[1], nmajor.shape[2]
    for n in range(m):
        for co in range(Co):
            a, b = block[co, n * L:(n + 1) * L], nmajor[n0 + n, co]
            for k in range(L):
                if to_block:
                    a[k] = b[k]
                else:
                    b[k] = a[k]


@njit(parallel=True, cache=_CACHE)
def _forward(xm, c_major, w1, y, scratch, y_scratch, nb, K, geometry, one):
    """y (Co, N, L) when ``c_major`` else (N, Co, L) = w1 (Co, K1) @ col."""
    Co, K1 = w1.shape
    N = xm.shape[1] if c_major else xm.shape[0]
    L = geometry[3] * geometry[4]
    size = y.itemsize
    for t in prange((N + nb - 1) // nb):
        n0, m = _images(t, nb, N)
        tid = get_thread_id()
        col = scratch[tid, :K1 * m * L]
        _unfold_block(xm, c_major, n0, n0 + m, col, K, geometry, one)
        if c_major:   # the block's columns of the (Co, N*L) output
            _gemm(y, NO_TRANS, NO_TRANS, Co, m * L, K1, w1.ctypes.data, K1, col.ctypes.data,
                  m * L, y.ctypes.data + size * n0 * L, N * L, 0.0)
        else:         # one GEMM into scratch, then each image's (Co, L) plane copied out
            ys = y_scratch[tid, :Co * m * L].reshape(Co, m * L)
            _gemm(ys, NO_TRANS, NO_TRANS, Co, m * L, K1, w1.ctypes.data, K1, col.ctypes.data,
                  m * L, ys.ctypes.data, m * L, 0.0)
            _exchange(ys, y, n0, m, False)


@njit(parallel=True, cache=_CACHE)
def _backward(xm, c_major, w1, gym, gy_c_major, gxm, want_gx, want_gw, col_s, gy_s, gcol_s,
              gw_parts, nb, K, geometry, one):
    """gw_parts[thread] (K1, Co) += col @ gy.T over the thread's blocks (the
    caller zeroes them and sums them); gxm (memory order as xm) = col2im(W.T @ gy).
    gym: (Co, N, L) when ``gy_c_major``, else (N, Co, L)."""
    Co, K1 = w1.shape
    N = xm.shape[1] if c_major else xm.shape[0]
    C, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW = geometry
    L = OH * OW
    size = gym.itemsize
    for t in prange((N + nb - 1) // nb):
        n0, m = _images(t, nb, N)
        tid = get_thread_id()
        if gy_c_major:   # the block's gy is already a (Co, m*L) matrix of leading dim N*L
            g_ptr, ldg = gym.ctypes.data + size * n0 * L, N * L
        else:            # gathered into one
            gys = gy_s[tid, :Co * m * L].reshape(Co, m * L)
            _exchange(gys, gym, n0, m, True)
            g_ptr, ldg = gys.ctypes.data, m * L
        if want_gw:
            col = col_s[tid, :K1 * m * L]
            _unfold_block(xm, c_major, n0, n0 + m, col, K, geometry, one)
            _gemm(gw_parts, NO_TRANS, TRANS, K1, Co, m * L, col.ctypes.data, m * L, g_ptr, ldg,
                  gw_parts[tid].ctypes.data, Co, 1.0)
        if want_gx:
            gcol = gcol_s[tid, :K * m * L]
            # (K, m*L) = w1[:, :K].T (K, Co) @ gy (Co, m*L)
            _gemm(gcol, TRANS, NO_TRANS, K, m * L, Co, w1.ctypes.data, K1, g_ptr, ldg,
                  gcol.ctypes.data, m * L, 0.0)
            taps = gcol.reshape(C, KH, KW, m, OH, OW)
            for c in range(C):
                for n in range(m):
                    plane = gxm[c, n0 + n] if c_major else gxm[n0 + n, c]
                    _col2im_plane(taps, n, c, True, plane, SH, SW, PH, PW, DH, DW)


def _planes(x):
    """x's planes in memory order, C-major whenever x is (a single channel too)."""
    return (x.transpose(1, 0, 2, 3), True) if is_c_major(x) else plane_major(x)


def _geometry(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW):
    return tuple(int(v) for v in (x.shape[1], KH, KW, OH, OW, SH, SW, PH, PW, DH, DW))


def conv2d_forward(x, w1, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW):
    """y (N, Co, OH, OW) = conv2d of x (N, C, H, W) (N-major or C-major; y
    gets its plane order, and a single-channel x the C-major one, as conv2d's
    im2col path) with w1 (Co, K1), the weight as (Co, C*KH*KW) with the bias
    as one more column when K1 = C*KH*KW + 1."""
    xm, c_major = _planes(x)
    N, C = x.shape[:2]
    Co, K1 = w1.shape
    K, L = C * KH * KW, OH * OW
    w1 = np.ascontiguousarray(w1)
    threads = get_num_threads()
    nb = block_images(N, K1, L, x.dtype.itemsize, threads)
    y = np.empty((Co, N, L) if c_major else (N, Co, L), dtype=x.dtype)
    if N:
        scratch = np.empty((threads, K1 * nb * L), dtype=x.dtype)
        y_scratch = np.empty((1, 1) if c_major else (threads, Co * nb * L), dtype=x.dtype)
        _forward(xm, c_major, w1, y, scratch, y_scratch, nb, K,
                 _geometry(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW), x.dtype.type(1))
    if c_major:
        return y.reshape(Co, N, OH, OW).transpose(1, 0, 2, 3)
    return y.reshape(N, Co, OH, OW)


def conv2d_backward(x, w1, gy, want_gx, want_gw, KH, KW, SH, SW, PH, PW, DH, DW):
    """(gx or None, gw1 or None) for :func:`conv2d_forward`'s y: gx in x's
    plane order, gw1 (Co, K1) (its last column the bias gradient when the
    bias was folded). gy may be N-major or C-major."""
    xm, c_major = _planes(x)
    N, C, H, W = x.shape
    Co, K1 = w1.shape
    OH, OW = gy.shape[2:]
    K, L = C * KH * KW, OH * OW
    gym, gy_c_major = plane_major(gy)
    gym = gym.reshape(gym.shape[0], gym.shape[1], L)
    threads = get_num_threads()
    nb = block_images(N, K1, L, x.dtype.itemsize, threads)
    dt = x.dtype
    gx = np.empty((C, N, H, W) if c_major else (N, C, H, W), dtype=dt) if want_gx else None
    gw_parts = np.zeros((threads if want_gw else 1, K1, Co), dtype=dt)

    def scratch(rows, wanted=True):
        return np.empty((threads, rows * nb * L) if wanted else (1, 1), dtype=dt)

    if N:
        _backward(xm, c_major, np.ascontiguousarray(w1), gym, gy_c_major,
                  gx if want_gx else np.empty((1, 1, 1, 1), dt), bool(want_gx), bool(want_gw),
                  scratch(K1, want_gw), scratch(Co, not gy_c_major), scratch(K, want_gx),
                  gw_parts, nb, K, _geometry(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW),
                  dt.type(1))
    if gx is not None and c_major:
        gx = gx.transpose(1, 0, 2, 3)
    gw1 = gw_parts.sum(axis=0).T if want_gw else None
    return gx, gw1
