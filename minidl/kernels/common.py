"""Pieces every kernel module shares: written once against ``xp``.

The conv GEMM's layout changes (NCHW <-> (Co, N*L)) are plain array
expressions, so the NumPy and CuPy modules use these as they are; the Numba
module has compiled one-pass versions of its own and shares the ``out=``
check and :func:`plane_major`.

**Plane orders.** A 4-D (N, C, H, W) array is *N-major* when C-contiguous
(plain NCHW) and *C-major* when its transpose (C, N, H, W) is C-contiguous:
the layout conv2d returns for a C-major (or single-channel) input, because
that is how its GEMM writes the output, (Co, N*OH*OW), with no transpose
pass. Either way every (H, W) plane is contiguous, so per-plane kernels
(pooling, im2col, col2im) work on both without a copy.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module


def output_array(xp, out, shape, dtype):
    """A fresh ``xp`` array, or ``out`` checked to fit (C-contiguous, shape, dtype)."""
    if out is None:
        return xp.empty(shape, dtype=dtype)
    if out.shape != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"im2col: out must be a C-contiguous {tuple(shape)} {dtype} array, got "
                         f"{out.shape} {out.dtype}")
    return out


def is_c_major(x):
    """Whether the (N, C, H, W) array ``x`` has the C-major plane order (its
    (C, N, H, W) transpose is C-contiguous; true of any contiguous x with N or
    C equal to 1, where both orders coincide)."""
    return x.ndim == 4 and x.transpose(1, 0, 2, 3).flags.c_contiguous


def plane_major(x):
    """``(planes, c_major)``: the (N, C, H, W) array ``x`` as a C-contiguous
    4-D array in memory order, (N, C, H, W) or, when ``c_major``, (C, N, H, W).
    No copy for either plane order; any other layout is copied to NCHW."""
    if x.flags.c_contiguous:
        return x, False
    if is_c_major(x):
        return x.transpose(1, 0, 2, 3), True
    return get_array_module(x).ascontiguousarray(x), False


def batch_range(batch, N):
    """``(n0, n1)``: the images ``batch`` (a (start, stop) pair or None for
    all N) names, checked."""
    n0, n1 = (0, N) if batch is None else (int(batch[0]), int(batch[1]))
    if not 0 <= n0 <= n1 <= N:
        raise ValueError(f"batch range {batch!r} is not within the {N} images")
    return n0, n1


def col2im_destination(col, channels_first, H, W, out, batch):
    """``(N, C, (n0, n1))`` for col2im: col's image and channel counts, and
    where its images go in ``out`` (None: a new array), checked."""
    N, C = (col.shape[3], col.shape[0]) if channels_first else col.shape[:2]
    if out is None:
        if batch is not None:
            raise ValueError("col2im: batch= needs out=")
        return N, C, None
    n0, n1 = batch_range(batch if batch is not None else (0, N), out.shape[0])
    if n1 - n0 != N or out.shape[1:] != (C, H, W) or out.dtype != col.dtype:
        raise ValueError(f"col2im: out {out.shape} {out.dtype} does not take {N} images of "
                         f"{(C, H, W)} {col.dtype} at {(n0, n1)}")
    return N, C, (n0, n1)


def maxpool2d_indices(argmax, H, W, KH, KW, SH, SW, PH, PW, DH, DW):
    """PyTorch's ``return_indices`` from ``maxpool2d_forward``'s argmax: for
    the NumPy and CuPy kernels they are already int64 indices into each H*W
    plane (the Numba kernels have a compact form of their own)."""
    return argmax


def relu_pooled(y, indices):
    """The fused ReLU after a max-pool that records int64 indices: y becomes
    max(y, 0) in place (a NaN stays NaN) and each window whose pick is <= 0
    gets index -1, which the backward kernels skip (PyTorch's ReLU gradient:
    none where the output is <= 0, a NaN output passes it)."""
    dead = y <= 0
    y[dead] = 0
    if indices is not None:
        indices[dead] = -1
    return y, indices


def gemm_to_nchw(y_t, b, N, OH, OW):
    """The conv GEMM's (Co, N*L) output -> a new (N, Co, OH, OW), adding the
    bias ``b`` (Co,) (or None) on the way: one pass instead of two."""
    xp = get_array_module(y_t)
    Co = y_t.shape[0]
    src = y_t.reshape(Co, N, OH * OW).transpose(1, 0, 2)
    y = xp.empty((N, Co, OH * OW), dtype=y_t.dtype)
    if b is None:
        y[...] = src
    else:
        xp.add(src, b.reshape(Co, 1), out=y)
    return y.reshape(N, Co, OH, OW)


def nchw_to_gemm(gy, bias_grad=False, out=None):
    """(N, Co, OH, OW) -> (Co, N*OH*OW) (the conv GEMM's layout) and, with
    ``bias_grad``, the per-channel sums gy.sum((0, 2, 3)) (else None).
    ``out``: a C-contiguous (Co, N, OH*OW) array of gy's dtype to fill."""
    xp = get_array_module(gy)
    N, Co = gy.shape[:2]
    L = gy.shape[2] * gy.shape[3]
    gy_t = output_array(xp, out, (Co, N, L), gy.dtype)
    gy_t[...] = gy.reshape(N, Co, L).transpose(1, 0, 2)
    gy_t = gy_t.reshape(Co, N * L)
    return gy_t, (gy_t.sum(axis=1) if bias_grad else None)


# ---------------------------------------------------------------- elementwise
# The NumPy and CuPy versions of :mod:`.cpu_elementwise`'s kernels (the same
# values; the Numba ones make them in one pass).

def relu(x):
    """max(x, 0), NaN kept (``np.maximum``'s rule, which the Numba kernel follows)."""
    return get_array_module(x).maximum(x, x.dtype.type(0))


def threshold_backward(gy, y):
    """PyTorch's threshold_backward(gy, y, 0): exactly 0 where y <= 0 (an inf
    or NaN gy there too, where a product would give NaN); a NaN y passes gy."""
    return get_array_module(gy).where(y <= 0, gy.dtype.type(0), gy)


_DROPOUT_CHUNK = 1 << 16   # elements hashed at a time: the temporaries stay in cache


def _mix32(xp, h):
    """Wellons' lowbias32 on a uint32 array, in place (as cpu_elementwise._mix32)."""
    h ^= h >> xp.uint32(16)
    h *= xp.uint32(0x21F0AAAD)
    h ^= h >> xp.uint32(15)
    h *= xp.uint32(0x735A2D97)
    h ^= h >> xp.uint32(15)
    return h


def dropout_apply(x, key, threshold, scale):
    """y = x * scale where element i (C order) is kept, else x * 0 (so inf and
    NaN give NaN, as PyTorch's x * mask): kept iff the
    top 24 bits of hash(i, key) are >= ``threshold``. The hash is two rounds
    of a 32-bit mix: of the index's low word xor the key's low word, then of
    that xor the index's high word xor the key's high word."""
    xp = get_array_module(x)
    xf = x.reshape(-1)
    y = xp.empty_like(xf)
    k0, k1 = xp.uint32(key & 0xFFFFFFFF), xp.uint32(key >> 32)
    zero, scale = x.dtype.type(0), x.dtype.type(scale)
    for a in range(0, xf.shape[0], _DROPOUT_CHUNK):
        # a chunk never crosses a multiple of 2**32: its indices share the high word
        lo = a & 0xFFFFFFFF
        h = xp.arange(lo, lo + min(xf.shape[0] - a, _DROPOUT_CHUNK), dtype=xp.uint32)
        h ^= k0
        h = _mix32(xp, h)
        h ^= xp.uint32(a >> 32) ^ k1
        h = _mix32(xp, h)
        factor = xp.where((h >> xp.uint32(8)) >= threshold, scale, zero)
        with np.errstate(invalid="ignore"):   # inf * 0 = NaN, as the Numba kernel (quiet)
            xp.multiply(xf[a:a + h.shape[0]], factor, out=y[a:a + h.shape[0]])
    return y.reshape(x.shape)
