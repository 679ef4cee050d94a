"""Convolution and pooling kernels compiled by Numba (the default CPU path).

Same functions and signatures as :mod:`.cpu_numpy`. Each kernel is a
``@njit(parallel=True, cache=...)`` driver with ``prange`` over the N x C
planes only (or, for C-major 'same' convolutions, over channels x runs of
images), calling a plain ``@njit`` function for its share: every task is
independent work, while col2im and the max-pool backward accumulate into
overlapping pixels of one plane and so are never split by output position.
Indices and offsets are 64-bit throughout.

Fast paths, each checked against the naive loops in the tests: a
'same'-width stride-1 window plane is the input plane shifted by one flat
offset (one long vectorised run instead of OH short rows); for a C-major
input (conv's own outputs, see :mod:`.common`) with a 'same' stride-1
geometry, a channel's planes of all images are one run and each tap one
shifted copy (im2col) or add (col2im) across them; 2x2 stride-2 pooling with
every window inside the input works on flat arrays with unsigned offsets,
records each window's choice as a uint8 code (0 1 / 2 3) instead of an int64
index (``maxpool2d_indices`` turns codes into PyTorch's indices), records
nothing when no gradient is needed, and its backward zeroes each plane and
stores each window's gradient at its pick, with no accumulation (windows do
not overlap).

The Python wrappers allocate the outputs and hand the jitted loops
C-contiguous arrays (N-major or C-major planes) and Python ints, so each
kernel compiles at most once per dtype (float32, float64); nothing is
compiled at import, and Numba's on-disk cache (``MINIDL_NUMBA_CACHE=0``
turns it off) makes later processes start fast.

Notation as in :mod:`minidl.ops.conv`. A kernel offset ``k`` of output row
``o`` reads input row ``o*S - P + k*D``; rows outside ``[0, H)`` are padding.
"""
from __future__ import annotations

import os

import numpy as np
from numba import njit, prange

from . import common, cpu_blas, cpu_elementwise, cpu_numpy
from .common import (batch_range, col2im_destination, is_c_major, output_array, plane_major,
                     relu_pooled)

_CACHE = os.environ.get("MINIDL_NUMBA_CACHE", "1") != "0"

# How Numba's OpenMP workers wait between kernels, unless the user chose
# (OMP_WAIT_POLICY or GOMP_SPINCOUNT); the runtime reads it when Numba starts
# its threads (the first parallel kernel), after this import.
# * With the GEMMs split over these same threads (cpu_blas): a short spin
#   (0.2-0.5 ms here), then sleep. A training step runs a parallel region
#   every few hundred microseconds, and waking a sleeping worker on a virtual
#   machine costs from 15 us to milliseconds; a short spin catches the next
#   region awake and leaves no core burning once the work stops. (Seed model,
#   batch 64, 2 threads: steps 10-30 % faster in A B A B windows, and a far
#   shorter slow tail.)
# * With BLAS running its own threads: sleep at once. Spinning workers fought
#   the BLAS GEMM that followed each kernel (conv forward+backward 3-5x slower
#   on 2 cores).
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    if cpu_blas.available():
        os.environ["GOMP_SPINCOUNT"] = "30000"
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
cpu_blas.limit_blas_threads()
matmul = cpu_blas.matmul if cpu_blas.available() else cpu_numpy.matmul
# Whether conv2d may run as implicit GEMM (conv2d_implicit_forward below):
# its blocks call cblas from Numba's threads.
IMPLICIT_GEMM = cpu_blas.available()


@njit(inline="always", cache=_CACHE)
def _valid_range(size, k, S, P, D, O):
    """[lo, hi) of output positions whose row ``o*S - P + k*D`` lies in [0, size)."""
    off = k * D - P
    lo = 0
    if off < 0:
        lo = (-off + S - 1) // S
    hi = 0
    if size - 1 - off >= 0:
        hi = (size - 1 - off) // S + 1
    if hi > O:
        hi = O
    if lo > hi:
        lo = hi
    return lo, hi


# Inner loops run over a row view indexed from 0, so Numba's negative-index
# wraparound folds away and LLVM vectorises them. A strided view has layout
# 'A' (unknown stride), so each caller branches on ``S == 1`` to hand the
# unit-stride case a contiguous view: one body, two specialisations. The
# loops run over the shorter view: for an empty output range the window
# slice's stop can go negative and wrap, giving a view of the wrong length.

@njit(inline="always", cache=_CACHE)
def _copy(dst, src):
    for k in range(min(dst.shape[0], src.shape[0])):
        dst[k] = src[k]


@njit(inline="always", cache=_CACHE)
def _add(dst, src):
    for k in range(min(dst.shape[0], src.shape[0])):
        dst[k] += src[k]


@njit(cache=_CACHE)
def _im2col_plane(xp, col, n, c, cf, SH, SW, PH, PW, DH, DW, pad_value):
    """One channel plane xp (H, W) -> its KH x KW window planes of ``col``,
    ``col[c, i, j, n]`` when ``cf`` (channels first) else ``col[n, c, i, j]``
    (either way a C-contiguous (OH, OW) plane, so one specialisation)."""
    H, W = xp.shape
    KH, KW = (col.shape[1], col.shape[2]) if cf else (col.shape[2], col.shape[3])
    OH, OW = col.shape[4], col.shape[5]
    flat = SH == 1 and SW == 1 and OW == W
    for i in range(KH):
        oh_lo, oh_hi = _valid_range(H, i, SH, PH, DH, OH)
        for j in range(KW):
            ow_lo, ow_hi = _valid_range(W, j, SW, PW, DW, OW)
            cp = col[c, i, j, n] if cf else col[n, c, i, j]
            if flat and oh_lo < oh_hi and ow_lo < ow_hi:
                # 'same'-width, stride 1: the window plane is the input plane
                # shifted by one flat offset; copy it in one long run, then
                # overwrite the few padding columns and rows.
                cflat, xf = cp.reshape(OH * OW), xp.reshape(H * W)
                shift = (i * DH - PH) * W + j * DW - PW
                lo, hi = oh_lo * OW + ow_lo, (oh_hi - 1) * OW + ow_hi
                _copy(cflat[lo:hi], xf[lo + shift:hi + shift])
                for k in range(lo):
                    cflat[k] = pad_value
                for k in range(hi, OH * OW):
                    cflat[k] = pad_value
                for oh in range(oh_lo, oh_hi):
                    for ow in range(ow_lo):
                        cp[oh, ow] = pad_value
                    for ow in range(ow_hi, OW):
                        cp[oh, ow] = pad_value
                continue
            if SW == 1:
                _copy_rows(cp.reshape(OH * OW), xp.reshape(H * W), OW, W, oh_lo, oh_hi, ow_lo,
                           ow_hi, (i * DH - PH) * W + j * DW - PW, SH * W, pad_value)
                continue
            for oh in range(OH):
                cr = cp[oh]
                if oh < oh_lo or oh >= oh_hi:
                    for ow in range(OW):
                        cr[ow] = pad_value
                    continue
                for ow in range(ow_lo):
                    cr[ow] = pad_value
                for ow in range(ow_hi, OW):
                    cr[ow] = pad_value
                row, base = xp[oh * SH - PH + i * DH], j * DW - PW
                _copy(cr[ow_lo:ow_hi], row[ow_lo * SW + base:(ow_hi - 1) * SW + base + 1:SW])


@njit(cache=_CACHE)
def _copy_rows(cf, xf, OW, W, oh_lo, oh_hi, ow_lo, ow_hi, shift, row_step, pad_value):
    """One tap's window plane, unit column stride: flat cf (OH*OW) gets, for
    each output row oh in [oh_lo, oh_hi), the input run starting at flat
    ``oh * row_step + shift + ow_lo``; pad_value elsewhere. Flat unsigned
    offsets instead of a row view per row (15-25 % faster on small planes)."""
    size = cf.shape[0]
    _fill(cf[:oh_lo * OW], pad_value)
    _fill(cf[oh_hi * OW:size], pad_value)
    count = ow_hi - ow_lo
    for oh in range(oh_lo, oh_hi):
        d = np.uint64(oh * OW)
        for k in range(ow_lo):
            cf[d + np.uint64(k)] = pad_value
        for k in range(ow_hi, OW):
            cf[d + np.uint64(k)] = pad_value
        src = np.uint64(oh * row_step + shift + ow_lo)
        dst = d + np.uint64(ow_lo)
        for k in range(count):
            cf[dst + np.uint64(k)] = xf[src + np.uint64(k)]


@njit(cache=_CACHE)
def _col2im_plane(col, n, c, cf, ip, SH, SW, PH, PW, DH, DW):
    """The window planes of (n, c) in ``col`` (laid out as in _im2col_plane)
    summed into one image plane ip (H, W), serially."""
    H, W = ip.shape
    KH, KW = (col.shape[1], col.shape[2]) if cf else (col.shape[2], col.shape[3])
    OH, OW = col.shape[4], col.shape[5]
    for h in range(H):
        for w in range(W):
            ip[h, w] = 0
    flat = SH == 1 and SW == 1 and OW == W
    for i in range(KH):
        oh_lo, oh_hi = _valid_range(H, i, SH, PH, DH, OH)
        for j in range(KW):
            ow_lo, ow_hi = _valid_range(W, j, SW, PW, DW, OW)
            cp = col[c, i, j, n] if cf else col[n, c, i, j]
            if flat and oh_lo < oh_hi and ow_lo < ow_hi:
                # as in im2col: one long shifted run. Its padding columns
                # land on the neighbouring row's edge pixels, so they are
                # zeroed first (col is scratch; taking them back out after
                # the run would not be exact: 1 + 1e8 - 1e8, inf - inf).
                cflat, If = cp.reshape(OH * OW), ip.reshape(H * W)
                shift = (i * DH - PH) * W + j * DW - PW
                lo, hi = oh_lo * OW + ow_lo, (oh_hi - 1) * OW + ow_hi
                for oh in range(oh_lo, oh_hi):
                    for ow in range(ow_lo):
                        k = oh * OW + ow
                        if k >= lo:
                            cflat[k] = 0
                    for ow in range(ow_hi, OW):
                        k = oh * OW + ow
                        if k < hi:
                            cflat[k] = 0
                _add(If[lo + shift:hi + shift], cflat[lo:hi])
                continue
            if SW == 1:
                _add_rows(ip.reshape(H * W), cp.reshape(OH * OW), OW, oh_lo, oh_hi, ow_lo, ow_hi,
                          (i * DH - PH) * W + j * DW - PW, SH * W)
                continue
            for oh in range(oh_lo, oh_hi):
                row, base = ip[oh * SH - PH + i * DH], j * DW - PW
                _add(row[ow_lo * SW + base:(ow_hi - 1) * SW + base + 1:SW], cp[oh, ow_lo:ow_hi])


@njit(cache=_CACHE)
def _add_rows(imf, cf, OW, oh_lo, oh_hi, ow_lo, ow_hi, shift, row_step):
    """col2im's counterpart of :func:`_copy_rows`: each valid row of one tap's
    window plane (flat cf) added into the flat image plane imf, in the same
    order as row views would add them."""
    count = ow_hi - ow_lo
    for oh in range(oh_lo, oh_hi):
        src = np.uint64(oh * OW + ow_lo)
        dst = np.uint64(oh * row_step + shift + ow_lo)
        for k in range(count):
            imf[dst + np.uint64(k)] += cf[src + np.uint64(k)]


# The per-plane loops live in plain @njit functions called from the prange
# drivers below: compiled inside a prange body the same loops ran about 3x
# slower (parfor lowering keeps LLVM from optimising them as well).

@njit(parallel=True, cache=_CACHE)
def _im2col(xm, c_major, n0, n1, col, cf, SH, SW, PH, PW, DH, DW, pad_value):
    """Images n0..n1-1 of xm (memory order: (C, N, H, W) when ``c_major``,
    else (N, C, H, W)) -> col, whose image axis counts from n0."""
    C = xm.shape[0] if c_major else xm.shape[1]
    for t in prange((n1 - n0) * C):
        n = t // C
        c = t - n * C
        plane = xm[c, n0 + n] if c_major else xm[n0 + n, c]
        _im2col_plane(plane, col, n, c, cf, SH, SW, PH, PW, DH, DW, pad_value)


@njit(parallel=True, cache=_CACHE)
def _col2im(col, cf, img, c_major, n0, SH, SW, PH, PW, DH, DW):
    """col's windows summed into images n0.. of img (memory order as in _im2col)."""
    C = img.shape[0] if c_major else img.shape[1]
    N = col.shape[3] if cf else col.shape[0]
    for t in prange(N * C):  # one plane per task: its overlapping adds stay serial
        n = t // C
        c = t - n * C
        plane = img[c, n0 + n] if c_major else img[n0 + n, c]
        _col2im_plane(col, n, c, cf, plane, SH, SW, PH, PW, DH, DW)


# C-major 'same' convolutions (stride 1, OH == H, OW == W: the model's 3x3
# pad 1): for one channel, the planes of consecutive images are contiguous,
# and every kernel tap shifts them by one flat offset ``s``, so a tap's whole
# (images x OH x OW) col plane is one long copy (im2col) or add (col2im),
# after which the few positions that fell on padding (the plane's border
# rows and columns, which the shift takes from a neighbouring row or image)
# are zeroed. A task is (channel, run of images); reads and writes never
# cross the task's images (what would cross is padding), so tasks never
# share memory.

@njit(inline="always", cache=_CACHE)
def _fill(dst, value):
    for k in range(dst.shape[0]):
        dst[k] = value


@njit(cache=_CACHE)
def _zero_padding_taps(flat, nb, H, W, h_lo, h_hi, w_lo, w_hi, zero):
    """In nb flat (H, W) planes, zero what lies outside rows [h_lo, h_hi) x
    columns [w_lo, w_hi): the positions whose tap reads padding."""
    HW = H * W
    for n in range(nb):
        p = flat[n * HW:(n + 1) * HW]
        _fill(p[:h_lo * W], zero)
        _fill(p[h_hi * W:], zero)
        if w_lo > 0 or w_hi < W:
            for h in range(h_lo, h_hi):
                r = p[h * W:(h + 1) * W]
                _fill(r[:w_lo], zero)
                _fill(r[w_hi:], zero)


@njit(cache=_CACHE)
def _im2col_same_channel(src, col, c, n0, n1, nb_total, H, W, PH, PW, DH, DW, zero):
    """Images n0..n1-1 (counted in col) of channel c: src is that channel's
    planes, flat from col's first image on; col is (C, KH, KW, N, H, W)."""
    KH, KW = col.shape[1], col.shape[2]
    HW = H * W
    a, b = n0 * HW, n1 * HW
    for i in range(KH):
        h_lo, h_hi = _valid_range(H, i, 1, PH, DH, H)
        for j in range(KW):
            w_lo, w_hi = _valid_range(W, j, 1, PW, DW, W)
            dst = col[c, i, j].reshape(nb_total * HW)
            s = (i * DH - PH) * W + j * DW - PW
            lo, hi = max(a, a - s), min(b, b - s)   # sources within these images
            if lo < hi:
                _copy(dst[lo:hi], src[lo + s:hi + s])
            _zero_padding_taps(dst[a:b], n1 - n0, H, W, h_lo, h_hi, w_lo, w_hi, zero)


@njit(parallel=True, cache=_CACHE)
def _im2col_same_c_major(xm, n0, n1, col, PH, PW, DH, DW, runs, zero):
    """im2col of images n0..n1-1 of the C-major xm (C, N, H, W)."""
    C, H, W = xm.shape[0], xm.shape[2], xm.shape[3]
    nb = n1 - n0
    for t in prange(C * runs):
        c = t // runs
        r = t - c * runs
        src = xm[c, n0:n1].reshape(nb * H * W)
        _im2col_same_channel(src, col, c, r * nb // runs, (r + 1) * nb // runs, nb, H, W,
                             PH, PW, DH, DW, zero)


@njit(cache=_CACHE)
def _col2im_same_channel(col, dst, c, n0, n1, nb_total, H, W, PH, PW, DH, DW, zero):
    """Images n0..n1-1 of channel c: dst (flat, from col's first image) =
    the sum of every tap's col plane shifted back. The col planes' padding
    positions are zeroed first (col is the caller's scratch gradient)."""
    KH, KW = col.shape[1], col.shape[2]
    HW = H * W
    a, b = n0 * HW, n1 * HW
    _fill(dst[a:b], zero)
    for i in range(KH):
        h_lo, h_hi = _valid_range(H, i, 1, PH, DH, H)
        for j in range(KW):
            w_lo, w_hi = _valid_range(W, j, 1, PW, DW, W)
            src = col[c, i, j].reshape(nb_total * HW)
            _zero_padding_taps(src[a:b], n1 - n0, H, W, h_lo, h_hi, w_lo, w_hi, zero)
            s = (i * DH - PH) * W + j * DW - PW
            lo, hi = max(a, a - s), min(b, b - s)
            if lo < hi:
                _add(dst[lo + s:hi + s], src[lo:hi])


@njit(parallel=True, cache=_CACHE)
def _col2im_same_c_major(col, img, n0, PH, PW, DH, DW, runs, zero):
    """col2im into images n0.. of the C-major img (C, N, H, W)."""
    C, H, W = img.shape[0], img.shape[2], img.shape[3]
    nb = col.shape[3]
    for t in prange(C * runs):
        c = t // runs
        r = t - c * runs
        dst = img[c, n0:n0 + nb].reshape(nb * H * W)
        _col2im_same_channel(col, dst, c, r * nb // runs, (r + 1) * nb // runs, nb, H, W,
                             PH, PW, DH, DW, zero)


def _same_size(SH, SW, OH, OW, H, W):
    return SH == 1 and SW == 1 and OH == H and OW == W


def _runs(C, nb):
    """Runs of images per channel: enough tasks for the threads (8 at least)."""
    return max(1, min(nb, -(-8 // C)))


@njit(cache=_CACHE)
def _maxpool_plane(xp, yp, ip, KH, KW, SH, SW, PH, PW, DH, DW, neg_inf):
    H, W = xp.shape
    OH, OW = yp.shape
    inside = (PH == 0 and PW == 0 and DH == 1 and DW == 1 and (OH - 1) * SH + KH <= H
              and (OW - 1) * SW + KW <= W)
    if inside and KH == 2 and KW == 2:
        # the CNN's 2x2 pooling, unrolled (runtime-length loops of two taps
        # cost 3-5x here); same scan order and comparisons as below
        for oh in range(OH):
            yr, ir = yp[oh], ip[oh]
            r0, r1 = xp[oh * SH], xp[oh * SH + 1]
            for ow in range(OW):
                w0 = ow * SW
                best, k = r0[w0], 0
                v = r0[w0 + 1]
                if v > best or v != v:
                    best, k = v, 1
                v = r1[w0]
                if v > best or v != v:
                    best, k = v, W
                v = r1[w0 + 1]
                if v > best or v != v:
                    best, k = v, W + 1
                yr[ow] = best
                ir[ow] = oh * SH * W + w0 + k
        return
    if inside:
        # every window inside the input, no dilation: no bounds to clip
        for oh in range(OH):
            yr, ir = yp[oh], ip[oh]
            for ow in range(OW):
                h0, w0 = oh * SH, ow * SW
                best = neg_inf
                best_i = h0 * W + w0
                for i in range(KH):
                    xr = xp[h0 + i]
                    for j in range(KW):
                        v = xr[w0 + j]
                        if v > best or v != v:
                            best = v
                            best_i = (h0 + i) * W + w0 + j
                yr[ow] = best
                ir[ow] = best_i
        return
    for oh in range(OH):
        h0 = oh * SH - PH
        h1 = min(h0 + (KH - 1) * DH + 1, H)
        while h0 < 0:
            h0 += DH
        yr, ir = yp[oh], ip[oh]
        for ow in range(OW):
            w0 = ow * SW - PW
            w1 = min(w0 + (KW - 1) * DW + 1, W)
            while w0 < 0:
                w0 += DW
            # PyTorch's loop: start at -inf with the first in-bounds pixel,
            # take strictly greater values (first maximum wins) or NaN.
            best = neg_inf
            best_i = h0 * W + w0
            h = h0
            while h < h1:
                xr = xp[h]
                w = w0
                while w < w1:
                    v = xr[w]
                    if v > best or v != v:
                        best = v
                        best_i = h * W + w
                    w += DW
                h += DH
            yr[ow] = best
            ir[ow] = best_i


# The 2x2 stride-2 kernels index flat arrays with unsigned offsets: row views
# and signed indices (Numba's negative-index wraparound) ran them 3-5x slower.

@njit(cache=_CACHE)
def _maxpool2x2_planes(x, y, code, p0, p1, with_code, relu, zero):
    """2x2 stride-2 windows, all inside the input, for planes [p0, p1) of
    x (P, H, W): y (P, OH, OW) and, ``with_code``, code (P, OH, OW) uint8,
    the chosen pixel's place in its window (0 1 / 2 3). Scan order a, b, c, d
    with PyTorch's test: the first maximum wins, or the last NaN. With
    ``relu``, y = max(pick, 0) and a pick <= 0 gets code | 4: no gradient."""
    H, W = x.shape[1], x.shape[2]
    OH, OW = y.shape[1], y.shape[2]
    xf, yf, cf = x.reshape(x.size), y.reshape(y.size), code.reshape(code.size)
    Wu, one = np.uint64(W), np.uint64(1)
    for p in range(p0, p1):
        for oh in range(OH):
            i0 = np.uint64((p * H + 2 * oh) * W)
            o0 = np.uint64((p * OH + oh) * OW)
            for owi in range(OW):
                ow = np.uint64(owi)
                i = i0 + ow + ow
                best, k = _first_max4(xf[i], xf[i + one], xf[i + Wu], xf[i + Wu + one])
                if relu and best <= zero:   # NaN is kept, and passes its gradient (PyTorch)
                    best, k = zero, k | np.uint8(4)
                yf[o0 + ow] = best
                if with_code:
                    cf[o0 + ow] = k


@njit(inline="always", cache=_CACHE)
def _first_max4(a, b, c, d):
    """(value, place) of a window's pick in scan order a b c d: PyTorch's
    test, so the first maximum wins, or the last NaN."""
    best, k = a, np.uint8(0)
    if b > best or b != b:
        best, k = b, np.uint8(1)
    if c > best or c != c:
        best, k = c, np.uint8(2)
    if d > best or d != d:
        best, k = d, np.uint8(3)
    return best, k


@njit(parallel=True, cache=_CACHE)
def _maxpool2x2_fwd(x, y, code, chunk, with_code, relu, zero):
    P = x.shape[0]
    for t in prange((P + chunk - 1) // chunk):   # chunks of whole planes
        _maxpool2x2_planes(x, y, code, t * chunk, min(P, (t + 1) * chunk), with_code, relu,
                           zero)


def _is_2x2(KH, KW, SH, SW, PH, PW, DH, DW):
    return (KH, KW, SH, SW, PH, PW, DH, DW) == (2, 2, 2, 2, 0, 0, 1, 1)


def _chunk(planes, elements):
    """Planes per prange task: about 64 Ki elements each (less scheduling
    than one plane per task), but at least 8 tasks when there is work."""
    return max(1, min(max(1, 65536 // max(1, elements)), -(-planes // 8)))


@njit(cache=_CACHE)
def _maxpool2x2_bwd_planes(gy, code, gx, p0, p1, zero):
    """gx planes [p0, p1) = 0, then each window's gy at its chosen pixel
    (none for a code >= 4: a pick the fused ReLU zeroed). Windows do not
    overlap, so every pixel is written by this task alone."""
    H, W = gx.shape[1], gx.shape[2]
    OH, OW = gy.shape[1], gy.shape[2]
    gxf, gyf, cf = gx.reshape(gx.size), gy.reshape(gy.size), code.reshape(code.size)
    Wu = np.uint64(W)
    for p in range(p0, p1):
        base = np.uint64(p * H * W)
        for k in range(np.uint64(H * W)):
            gxf[base + k] = zero
        for oh in range(OH):
            o0 = np.uint64((p * OH + oh) * OW)
            i0 = base + np.uint64(2 * oh) * Wu
            for owi in range(OW):
                ow = np.uint64(owi)
                k = cf[o0 + ow]
                if k < 4:
                    gxf[i0 + ow + ow + (k & np.uint8(1)) + (k >> np.uint8(1)) * Wu] = gyf[o0 + ow]


@njit(parallel=True, cache=_CACHE)
def _maxpool2x2_bwd(gy, code, gx, chunk, zero):
    P = gy.shape[0]
    for t in prange((P + chunk - 1) // chunk):
        _maxpool2x2_bwd_planes(gy, code, gx, t * chunk, min(P, (t + 1) * chunk), zero)


@njit(parallel=True, cache=_CACHE)
def _maxpool_fwd(x, y, idx, KH, KW, SH, SW, PH, PW, DH, DW, neg_inf):
    N, C = x.shape[0], x.shape[1]
    for nc in prange(N * C):   # the plane's loops live in a plain @njit function:
        n = nc // C            # compiled inside a prange body they ran 3x slower
        c = nc - n * C
        _maxpool_plane(x[n, c], y[n, c], idx[n, c], KH, KW, SH, SW, PH, PW, DH, DW, neg_inf)


@njit(cache=_CACHE)
def _maxpool_bwd_plane(gp, ipl, gxp):
    H, W = gxp.shape
    OH, OW = gp.shape
    for h in range(H):
        for w in range(W):
            gxp[h, w] = 0
    for oh in range(OH):
        gr, ir = gp[oh], ipl[oh]
        for ow in range(OW):
            k = ir[ow]
            if 0 <= k < H * W:  # outside only for a window with no real pixel
                gxp[k // W, k % W] += gr[ow]


@njit(parallel=True, cache=_CACHE)
def _maxpool_bwd(gy, idx, gx):
    N, C = gy.shape[0], gy.shape[1]
    for nc in prange(N * C):  # one plane per task: windows may pick the same pixel
        n = nc // C
        c = nc - n * C
        _maxpool_bwd_plane(gy[n, c], idx[n, c], gx[n, c])


@njit(cache=_CACHE)
def _add_bias_row(dst, src, bias):
    for k in range(min(dst.shape[0], src.shape[0])):
        dst[k] = src[k] + bias


# The two layout kernels below run serially: each is a single pass over a
# few hundred KiB (30-60 us), less than waking Numba's sleeping workers
# costs (~50 us with OMP_WAIT_POLICY=PASSIVE).

@njit(cache=_CACHE)
def _gemm_to_nchw(y_t, b, y):
    Co, N = y_t.shape[0], y_t.shape[1]
    for nc in range(N * Co):
        n = nc // Co
        c = nc - n * Co
        _add_bias_row(y[n, c], y_t[c, n], b[c])


@njit(fastmath={"reassoc", "nsz"}, cache=_CACHE)
def _row_sum(row):
    # reassociation lets LLVM vectorise the sum (pairwise-like accuracy)
    s = 0.0
    for k in range(row.shape[0]):
        s += row[k]
    return s


@njit(cache=_CACHE)
def _gather_channel(gy, gt, c, want_gb):
    """gt[n] = gy[n, c] for every n; returns the channel's sum (float64)."""
    acc = 0.0
    for n in range(gy.shape[0]):
        _copy(gt[n], gy[n, c])
        if want_gb:
            acc += _row_sum(gt[n])
    return acc


@njit(cache=_CACHE)
def _nchw_to_gemm(gy, gy_t, gb, want_gb):
    for c in range(gy.shape[1]):
        gb[c] = _gather_channel(gy, gy_t[c], c, want_gb)


def im2col(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, pad_value=0.0, channels_first=False,
           out=None, batch=None):
    """(N, C, H, W) -> contiguous (N, C, KH, KW, OH, OW) of the windows' pixels,
    or (C, KH, KW, N, OH, OW) with ``channels_first`` (one GEMM for the batch).
    ``out``: a C-contiguous array of that shape and x's dtype to fill (reuse).
    ``batch=(n0, n1)``: unfold only those images (col's N is then n1 - n0).
    x may be N-major or C-major (see :mod:`.common`) without a copy."""
    xm, c_major = plane_major(x)   # one C-layout specialisation per dtype
    C = x.shape[1]
    n0, n1 = batch_range(batch, x.shape[0])
    shape = (C, KH, KW, n1 - n0, OH, OW) if channels_first else (n1 - n0, C, KH, KW, OH, OW)
    col = output_array(np, out, shape, x.dtype)
    H, W = x.shape[2:]
    if c_major and channels_first and _same_size(SH, SW, OH, OW, H, W) and col.size:
        _im2col_same_c_major(xm, n0, n1, col, PH, PW, DH, DW, _runs(C, n1 - n0),
                             x.dtype.type(pad_value))
        return col
    _im2col(xm, c_major, n0, n1, col, bool(channels_first), SH, SW, PH, PW, DH, DW,
            x.dtype.type(pad_value))
    return col


def col2im(col, H, W, SH, SW, PH, PW, DH, DW, channels_first=False, out=None, batch=None):
    """Sum the windows of ``col`` (laid out as :func:`im2col` makes it) back
    into a new (N, C, H, W); or, with ``out`` (N-major or C-major) and
    ``batch=(n0, n1)``, overwrite images n0..n1-1 of ``out`` with them.
    ``col`` is scratch: its entries for taps that fall on padding (which
    feed no pixel) may be set to 0."""
    col = np.ascontiguousarray(col)
    N, C, where = col2im_destination(col, channels_first, H, W, out, batch)
    if out is None:
        out = np.empty((N, C, H, W), dtype=col.dtype)
    n0 = where[0] if where else 0
    if not (out.flags.c_contiguous or is_c_major(out)):
        raise ValueError("col2im: out must be N-major or C-major (contiguous planes)")
    img, c_major = plane_major(out)
    OH, OW = col.shape[4:]
    if not col.flags.writeable or np.may_share_memory(col, out):
        col = col.copy()   # both paths write 0 to the padding taps of col
    if c_major and channels_first and _same_size(SH, SW, OH, OW, H, W) and col.size:
        _col2im_same_c_major(col, img, n0, PH, PW, DH, DW, _runs(C, N), col.dtype.type(0))
        return out
    _col2im(col, bool(channels_first), img, c_major, n0, SH, SW, PH, PW, DH, DW)
    return out


def maxpool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, indices=True, relu=False):
    """Max over each window: ``(y, argmax)``, or ``(y, None)`` without
    ``indices`` (nothing to differentiate). Padding counts as -inf; ties go to
    the first maximum (PyTorch's rule). ``argmax`` is what
    :func:`maxpool2d_backward` takes: int64 indices into the input's H*W
    plane, or, from the 2x2 stride-2 path, each window's uint8 code (0 1 / 2 3:
    1/8 of the memory); :func:`maxpool2d_indices` gives PyTorch's indices.
    ``relu``: y = relu(maxpool(x)) in the same pass; a window whose pick is
    <= 0 is marked in ``argmax`` (code | 4, index -1) and gets no gradient."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    zero = x.dtype.type(0)
    if _is_2x2(KH, KW, SH, SW, PH, PW, DH, DW) and 2 * OH <= H and 2 * OW <= W and N * C:
        P = N * C
        code = np.empty((N, C, OH, OW) if indices else (1, 1, 1), dtype=np.uint8)
        _maxpool2x2_fwd(x.reshape(P, H, W), y.reshape(P, OH, OW), code.reshape(-1, OH, OW)
                        if indices else code, _chunk(P, H * W), bool(indices), bool(relu), zero)
        return y, (code if indices else None)
    idx = np.empty((N, C, OH, OW), dtype=np.int64)
    _maxpool_fwd(x, y, idx, KH, KW, SH, SW, PH, PW, DH, DW, x.dtype.type(-np.inf))
    if relu:
        relu_pooled(y, idx)
    return y, (idx if indices else None)


def maxpool2d_indices(argmax, H, W, KH, KW, SH, SW, PH, PW, DH, DW):
    """PyTorch's ``return_indices``: int64 indices into each H*W input plane."""
    if argmax.dtype == np.int64:
        return argmax
    OH, OW = argmax.shape[2:]   # uint8 codes of the 2x2 stride-2 path
    k = argmax.astype(np.int64)
    rows = (2 * np.arange(OH, dtype=np.int64))[:, None] + k // 2
    cols = (2 * np.arange(OW, dtype=np.int64))[None, :] + k % 2
    return rows * W + cols


def maxpool2d_backward(gy, argmax, H, W, KH, KW, SH, SW, PH, PW, DH, DW):
    """Scatter-add gy (N, C, OH, OW) into a zero (N, C, H, W) at ``argmax``
    (from :func:`maxpool2d_forward`; windows it marks as zeroed by the fused
    ReLU send nothing). The window geometry is unused here (the GPU gather
    needs it)."""
    gy = np.ascontiguousarray(gy)
    N, C, OH, OW = gy.shape
    gx = np.empty((N, C, H, W), dtype=gy.dtype)
    if argmax.dtype == np.uint8:
        P = N * C
        if P:
            _maxpool2x2_bwd(gy.reshape(P, OH, OW), np.ascontiguousarray(argmax).reshape(P, OH, OW),
                            gx.reshape(P, H, W), _chunk(P, H * W), gy.dtype.type(0))
        return gx
    _maxpool_bwd(gy, np.ascontiguousarray(argmax, dtype=np.int64), gx)
    return gx


def gemm_to_nchw(y_t, b, N, OH, OW):
    """The conv GEMM's (Co, N*L) output -> a new (N, Co, OH, OW), adding the
    bias ``b`` (Co,) (or None) on the way: one pass instead of two."""
    Co = y_t.shape[0]
    y_t = np.ascontiguousarray(y_t).reshape(Co, N, OH * OW)
    b = np.zeros(Co, y_t.dtype) if b is None else np.ascontiguousarray(b, dtype=y_t.dtype)
    y = np.empty((N, Co, OH * OW), dtype=y_t.dtype)
    _gemm_to_nchw(y_t, b, y)
    return y.reshape(N, Co, OH, OW)


def nchw_to_gemm(gy, bias_grad=False, out=None):
    """(N, Co, OH, OW) -> (Co, N*OH*OW) (the conv GEMM's layout) and, with
    ``bias_grad``, the per-channel sums gy.sum((0, 2, 3)) (else None).
    ``out``: a C-contiguous (Co, N, OH*OW) array of gy's dtype to fill."""
    gy = np.ascontiguousarray(gy)
    N, Co = gy.shape[:2]
    L = gy.shape[2] * gy.shape[3]
    gy_t = output_array(np, out, (Co, N, L), gy.dtype)
    gb = np.empty(Co, dtype=np.float64)
    _nchw_to_gemm(gy.reshape(N, Co, L), gy_t, gb, bool(bias_grad))
    return gy_t.reshape(Co, N * L), (gb.astype(gy.dtype) if bias_grad else None)


def relu(x):
    """max(x, 0) in one parallel pass, keeping x's layout (NumPy's for other layouts)."""
    y = cpu_elementwise.relu(x)
    return common.relu(x) if y is None else y


def threshold_backward(gy, y):
    """PyTorch's threshold_backward(gy, y, 0) in one parallel pass (see
    :func:`.common.threshold_backward`)."""
    gx = cpu_elementwise.threshold_backward(gy, y)
    return common.threshold_backward(gy, y) if gx is None else gx


dropout_apply = cpu_elementwise.dropout_apply
sgd_update = cpu_elementwise.sgd_update
adam_update = cpu_elementwise.adam_update


def conv2d_implicit_forward(x, w1, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW):
    """conv2d as implicit GEMM (see :mod:`.cpu_conv_implicit`; imported on first use)."""
    from . import cpu_conv_implicit
    return cpu_conv_implicit.conv2d_forward(x, w1, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)


def conv2d_implicit_backward(x, w1, gy, want_gx, want_gw, KH, KW, SH, SW, PH, PW, DH, DW):
    """The gradients of :func:`conv2d_implicit_forward` (see :mod:`.cpu_conv_implicit`)."""
    from . import cpu_conv_implicit
    return cpu_conv_implicit.conv2d_backward(x, w1, gy, want_gx, want_gw, KH, KW, SH, SW, PH, PW,
                                             DH, DW)
