"""Pieces every kernel module shares: written once against ``xp``.

The conv GEMM's layout changes (NCHW <-> (Co, N*L)) are plain array
expressions, so the NumPy and CuPy modules use these as they are; the Numba
module has compiled one-pass versions of its own and shares only the
``out=`` check.
"""
from __future__ import annotations

from ..backend import get_array_module


def output_array(xp, out, shape, dtype):
    """A fresh ``xp`` array, or ``out`` checked to fit (C-contiguous, shape, dtype)."""
    if out is None:
        return xp.empty(shape, dtype=dtype)
    if out.shape != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"im2col: out must be a C-contiguous {tuple(shape)} {dtype} array, got "
                         f"{out.shape} {out.dtype}")
    return out


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
