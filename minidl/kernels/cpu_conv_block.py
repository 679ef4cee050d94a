"""The CNN block conv (stride 1) -> max-pool 2x2 -> ReLU in one parallel region each way.

Notation as in :mod:`minidl.ops.conv`; here K1 = C*KH*KW + 1 (the unfolded
input with a row of ones, which carries the bias), L = OH*OW, and the pooled
output is (Co, N, OH//2, OW//2) in C-major plane order.

Forward, per block of images (one task; blocks run on Numba's threads): the
block's images unfolded (im2col) into a per-thread scratch, the conv GEMM
into a second one (Co, images*L), then the fused 2x2 max-pool + ReLU of
those planes into the pooled output and its window codes. Neither the
unfolded input (the col) nor the conv's output ever exists whole: each
block's stays in the thread's cache. (Measured against a whole col made
once before the region and kept for backward, as conv2d's im2col path does,
2026-12-06, batch 64, forward+backward: on 2 threads of this shared machine
the per-block unfold was 15-40 % faster for the article model's and LeNet's
blocks; in CPU time on one thread it was even for the article model's,
15-25 % faster for LeNet's first (3 -> 6, 5x5) and about 10 % slower for its
second (6 -> 16, 5x5 on 14x14), where unfolding again in backward weighs as
much as the GEMMs. Past 16 MiB a whole col would not be kept anyway.)

Backward, per block: the pooled gradient scattered into a per-thread
scratch gy (the conv output's gradient for the block), the block unfolded
again and the weight gradient's partial product col_block @ gy.T
accumulated into the thread's own partial sum, and, when the input needs
it, gcol = W.T @ gy into a third scratch, summed back into the block's
input planes (col2im). One region instead of four (pool backward, weight
gradient, gcol, col2im), no dense gradient, col or gcol array in memory.

GEMMs are single-threaded cblas calls (:mod:`.cpu_blas`); the pool and
col2im loops are :mod:`.cpu_numba`'s.
"""
from __future__ import annotations

import numpy as np
from numba import get_thread_id, njit, prange

from .cpu_blas import _CACHE, _SLICE, NO_TRANS, TRANS, _gemm
from .cpu_numba import (_col2im_plane, _col2im_same_channel, _im2col_plane,
                        _maxpool2x2_bwd_planes, _maxpool2x2_planes)


@njit(inline="always", cache=_CACHE)
def _block(t, tasks, N):
    return t * N // tasks, (t + 1) * N // tasks


@njit(cache=_CACHE)
def _unfold_block(xm, c_major, n0, n1, flat, C, KH, KW, PH, PW, OH, OW, zero):
    """Images n0..n1-1 of xm (plane-major, see ``common.plane_major``) into the
    flat scratch ``flat`` as the (K1, nb*L) operand: the windows laid out
    (C, KH, KW, nb, OH, OW), then the bias's row of ones. Returns the operand."""
    nb, L = n1 - n0, OH * OW
    K, cols = C * KH * KW, (n1 - n0) * OH * OW
    taps = flat[:K * cols].reshape(C, KH, KW, nb, OH, OW)
    for n in range(nb):
        for c in range(C):
            plane = xm[c, n0 + n] if c_major else xm[n0 + n, c]
            _im2col_plane(plane, taps, n, c, True, 1, 1, PH, PW, 1, 1, zero)
    ones = flat[K * cols:(K + 1) * cols]
    for k in range(cols):
        ones[k] = 1
    return flat[:(K + 1) * cols].reshape(K + 1, cols)


@njit(parallel=True, cache=_CACHE)
def conv_pool_forward(w, xm, c_major, col_scratch, scratch, pooled, code, KH, KW, PH, PW,
                      OH, OW, tasks, with_code, zero):
    """pooled (Co, N, OH//2, OW//2) = relu(maxpool2x2(w (Co, K1) @ col (K1, N*L)))
    (floor mode: an odd last row or column of the conv output is dropped), each
    task unfolding its own images of xm into its thread's ``col_scratch``;
    code: each window's pick (| 4 where the ReLU zeroed it). scratch: one
    (Co, block*L) buffer per thread."""
    Co, K1 = w.shape
    N, L = pooled.shape[1], OH * OW
    C = (K1 - 1) // (KH * KW)
    for t in prange(tasks):
        n0, n1 = _block(t, tasks, N)
        nb = n1 - n0
        if nb <= 0:
            continue
        tid = get_thread_id()
        cols = nb * L
        col = _unfold_block(xm, c_major, n0, n1, col_scratch[tid], C, KH, KW, PH, PW, OH, OW,
                            zero)
        ys = scratch[tid, :Co * cols].reshape(Co, cols)
        _gemm(ys, NO_TRANS, NO_TRANS, Co, cols, K1, w.ctypes.data, K1, col.ctypes.data, cols,
              ys.ctypes.data, cols, 0.0)
        for c in range(Co):
            planes = ys[c].reshape(nb, OH, OW)
            codes = code[c, n0:n1] if with_code else code[0, 0:1]
            _maxpool2x2_planes(planes, pooled[c, n0:n1], codes, 0, nb, with_code, True, zero)


@njit(parallel=True, cache=_CACHE)
def conv_pool_backward(w, xm, c_major, gpooled, code, col_scratch, gy_scratch, gcol_scratch,
                       gw_parts, gx, KH, KW, PH, PW, OH, OW, tasks, want_gw, want_gx, zero):
    """The gradients of :func:`conv_pool_forward` from gpooled (Co, N, OH//2, OW//2):
    with ``want_gw``, gw_parts[thread] (K1, Co) += col @ gy.T over the thread's
    blocks (each unfolded again from xm; gw_parts zeroed by the caller, their
    sum is the weight-and-bias gradient), and, with ``want_gx``, gx (C, N, H, W)
    (C-major planes) = col2im(W.T @ gy)."""
    Co, K1 = w.shape
    N, L = gpooled.shape[1], OH * OW
    K = K1 - 1
    C = K // (KH * KW)
    H, W = gx.shape[2], gx.shape[3]
    same = OH == H and OW == W
    for t in prange(tasks):
        n0, n1 = _block(t, tasks, N)
        nb = n1 - n0
        if nb <= 0:
            continue
        tid = get_thread_id()
        cols = nb * L
        gys = gy_scratch[tid, :Co * cols].reshape(Co, cols)
        for c in range(Co):
            _maxpool2x2_bwd_planes(gpooled[c, n0:n1], code[c, n0:n1],
                                   gys[c].reshape(nb, OH, OW), 0, nb, zero)
        if want_gw:   # (K1, Co) += col[:, block] (K1, cols) @ gy (Co, cols).T
            col = _unfold_block(xm, c_major, n0, n1, col_scratch[tid], C, KH, KW, PH, PW, OH,
                                OW, zero)
            _gemm(gw_parts, NO_TRANS, TRANS, K1, Co, cols, col.ctypes.data, cols,
                  gys.ctypes.data, cols, gw_parts[tid].ctypes.data, Co, 1.0)
        if want_gx:
            gcol = gcol_scratch[tid, :K * cols].reshape(K, cols)
            # (K, cols) = W[:, :K].T (K, Co) @ gy (Co, cols)
            _gemm(gcol, TRANS, NO_TRANS, K, cols, Co, w.ctypes.data, K1, gys.ctypes.data, cols,
                  gcol.ctypes.data, cols, 0.0)
            taps = gcol.reshape(C, KH, KW, nb, OH, OW)
            for c in range(C):
                if same:   # every tap one shifted run over the block's planes
                    _col2im_same_channel(taps, gx[c, n0:n1].reshape(nb * H * W), c, 0, nb, nb,
                                         H, W, PH, PW, 1, 1, zero)
                else:
                    for n in range(nb):
                        _col2im_plane(taps, n, c, True, gx[c, n0 + n], 1, 1, PH, PW, 1, 1)


def block_images(N, L, threads):
    """Images per task: at most about 6 Ki conv outputs per channel (the
    block's GEMMs are then small enough for OpenBLAS's unpacked small-matrix
    kernels, and a thread's scratch stays in its cache), and at least one
    block per thread."""
    return max(1, min(-(-N // threads), _SLICE // max(1, L)))


def scratch(threads, rows, block_cols, dtype):
    """One flat (rows * block_cols) buffer per thread (each task views its own
    images' part of it as a contiguous (rows, images*L) matrix)."""
    return np.empty((threads, rows * block_cols), dtype=dtype)
