"""Fused scaled dot-product attention on Numba's threads (the GEMMs' pool, see :mod:`.cpu_blas`).

Notation: N blocks (the flattened leading dims, e.g. batch x heads), each
with q (L, E), k (S, E), v (S, Ev) -> o (L, Ev); scale s; M the additive
mask (L, S) of the block (0 or -inf for a boolean one); P = softmax(s q k^T + M).

**Forward.** ``prange`` over the N blocks; per block, the keys are taken in
tiles of ``_KEY_TILE``: a tile's scores are one single-threaded cblas GEMM
into a per-block scratch (L, tile), the mask, causal cut and exponentials are
one pass over it with the running row maxima and sums of the *online softmax*
(earlier partial outputs are rescaled when a row's maximum grows), dropout
zeroes weights in place, and the tile's product with V is a second GEMM
accumulated into the output. So the (L, S) matrix never exists whole, and
the only thing saved for backward is the log-sum-exp of each row (N, L).
With ``is_causal`` tiles past the last query are skipped.

**Backward** recomputes P from the saved row log-sum-exp (one GEMM and one
exp per score, cheaper than storing and re-reading a (N, L, S) array at these
sizes), then per block::

    dV = Pd^T dO,  dPd = dO V^T,  dP = dPd * keep / (1 - p)
    dS = P * (dP - rowsum(P * dP)),  dQ = s dS K,  dK = s dS^T Q

with Pd the weights after dropout. **Dropout** keeps weight (n, i, j) when a
counter-based hash (splitmix64) of (seed, n*L*S + i*S + j) is at or above
p * 2^64, so backward regenerates the same mask from the seed, nothing is
stored, and the draws do not depend on the thread count.

Inputs are given as (base address, per-block element offsets, row stride):
any layout with a unit-stride last dim works without a copy (the heads of
MultiheadAttention's (B, L, 3E) projection are read in place). A fully masked
row gives a zero output and zero gradients.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import cpu_blas
from .cpu_blas import NO_TRANS, TRANS, _gemm
from .cpu_rowwise import exp_row

_CACHE = cpu_blas._CACHE
_KEY_TILE = 256


def available():
    """Whether the fused kernels can run (they call NumPy's cblas)."""
    return cpu_blas.available()


@njit(inline="always", cache=_CACHE)
def _keep(seed, index, threshold):
    """splitmix64 of seed + index, compared with p * 2^64: True keeps the weight."""
    z = np.uint64(seed) + np.uint64(index) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return z >= np.uint64(threshold)


@njit(cache=_CACHE, error_model="numpy")
def _scores(row, limit, scale, bias, has_mask):
    """row[:limit] = row * scale (+ bias) (one vectorised pass), row[limit:] = -inf (the
    causal cut); returns the maximum of row[:limit] (-inf when limit is 0)."""
    s = row.dtype.type(scale)
    if has_mask:
        for j in range(limit):
            row[j] = row[j] * s + bias[j]
    else:
        for j in range(limit):
            row[j] = row[j] * s
    mx = -np.inf
    for j in range(limit):
        if row[j] > mx:
            mx = row[j]
    row[limit:] = -np.inf
    return mx


@njit(cache=_CACHE, error_model="numpy")
def _softmax_grad(p, dp, scale):
    """dp = scale * p * (dp - sum(p * dp)) (the softmax backward of one row, in place)."""
    d = 0.0
    for j in range(p.shape[0]):
        d += p[j] * dp[j]
    t = p.dtype.type
    dd, s = t(d), t(scale)
    for j in range(p.shape[0]):
        dp[j] = p[j] * (dp[j] - dd) * s


@njit(cache=_CACHE)
def _forward_block(n, qa, qoff, ldq, ka, koff, ldk, va, voff, ldv, o, ooff, ldo, lse, mask,
             mask_per_block, has_mask, causal, scale, seed, threshold, keep_scale, dropout,
             weights, want_weights, L, S, E, Ev):
    """One block of :func:`_forward` (a plain function: Numba compiles the loops
    inside a prange body far worse)."""
    N = lse.shape[0]
    size = o.itemsize
    dt = o.dtype.type
    tile = S if want_weights else min(S, _KEY_TILE)   # weights: the whole row at once
    sc = np.empty((L, tile), dtype=o.dtype)
    bits = np.empty(tile, dtype=np.int32)
    m = np.full(L, -np.inf)
    ssum = np.zeros(L)
    base = ooff[n]
    for i in range(L):
        o[base + i * ldo:base + i * ldo + Ev] = 0
    mb = np.int64(n) if mask_per_block else np.int64(0)
    for s0 in range(0, S, tile):
        if causal and s0 > L - 1:
            break
        w = min(S, s0 + tile) - s0
        _gemm(o, NO_TRANS, TRANS, L, w, E, qa + size * qoff[n], ldq,
              ka + size * (koff[n] + s0 * ldk), ldk, sc.ctypes.data, tile, 0.0)
        for i in range(L):
            row = sc[i, :w]
            limit = min(w, max(0, i + 1 - s0)) if causal else w
            mx = _scores(row, limit, scale, mask[mb, i, s0:s0 + w] if has_mask else row,
                         has_mask)
            mnew = max(m[i], mx)
            if mnew == -np.inf:   # nothing seen yet in this row
                row[:] = 0
                continue
            alpha = math.exp(m[i] - mnew)
            exp_row(row[:limit], row[:limit], mnew, bits)
            row[limit:] = 0
            total = 0.0
            for j in range(limit):
                total += row[j]
            if dropout:
                for j in range(w):
                    if not _keep(seed, (n * L + i) * S + s0 + j, threshold):
                        row[j] = 0
            ssum[i] = ssum[i] * alpha + total
            if alpha != 1.0 and m[i] != -np.inf:   # (before any key the row is 0)
                for c in range(base + i * ldo, base + i * ldo + Ev):
                    o[c] *= alpha
            m[i] = mnew
        if dropout:
            sc *= dt(keep_scale)
        _gemm(o, NO_TRANS, NO_TRANS, L, Ev, w, sc.ctypes.data, tile,
              va + size * (voff[n] + s0 * ldv), ldv, o.ctypes.data + size * base, ldo, 1.0)
    for i in range(L):
        if ssum[i] > 0:
            inv = 1.0 / ssum[i]
            for c in range(base + i * ldo, base + i * ldo + Ev):
                o[c] *= inv
            lse[n, i] = m[i] + math.log(ssum[i])
            if want_weights:
                for j in range(S):
                    weights[n, i, j] = sc[i, j] * inv
        else:
            lse[n, i] = -np.inf
            if want_weights:
                weights[n, i, :] = 0


@njit(parallel=True, cache=_CACHE)
def _forward(qa, qoff, ldq, ka, koff, ldk, va, voff, ldv, o, ooff, ldo, lse, mask,
             mask_per_block, has_mask, causal, scale, seed, threshold, keep_scale, dropout,
             weights, want_weights, L, S, E, Ev):
    for n in prange(lse.shape[0]):
        _forward_block(n, qa, qoff, ldq, ka, koff, ldk, va, voff, ldv, o, ooff, ldo, lse, mask, mask_per_block, has_mask, causal, scale, seed, threshold, keep_scale, dropout, weights, want_weights, L, S, E, Ev)


@njit(cache=_CACHE)
def _backward_block(n, qa, qoff, ldq, ka, koff, ldk, va, voff, ldv, ga, goff, ldg, lse, mask,
              mask_per_block, has_mask, causal, scale, seed, threshold, keep_scale, dropout,
              gw, has_gw, dq, dk, dv, L, S, E, Ev):
    """One block of :func:`_backward` (a plain function: Numba compiles the loops
    inside a prange body far worse)."""
    N = dq.shape[0]
    size = dq.itemsize
    p = np.empty((L, S), dtype=dq.dtype)
    dp = np.empty((L, S), dtype=dq.dtype)
    bits = np.empty(S, dtype=np.int32)
    mb = np.int64(n) if mask_per_block else np.int64(0)
    _gemm(dq, NO_TRANS, TRANS, L, S, E, qa + size * qoff[n], ldq, ka + size * koff[n], ldk,
          p.ctypes.data, S, 0.0)
    for i in range(L):
        row = p[i]
        li = lse[n, i]
        if li == -np.inf:
            row[:] = 0
            continue
        limit = min(S, i + 1) if causal else S
        _scores(row, limit, scale, mask[mb, i] if has_mask else row, has_mask)
        exp_row(row[:limit], row[:limit], li, bits)
        row[limit:] = 0
    # dP (before the dropout mask) = dO V^T
    _gemm(dq, NO_TRANS, TRANS, L, S, Ev, ga + size * goff[n], ldg, va + size * voff[n], ldv,
          dp.ctypes.data, S, 0.0)
    if has_gw:   # the gradient of the returned weights (after dropout) joins dPd
        dp += gw[n]
    if dropout:
        # dV needs the dropped weights; dp gets the mask; p stays the softmax
        pd = np.empty((L, S), dtype=dq.dtype)
        for i in range(L):
            for j in range(S):
                if _keep(seed, (n * L + i) * S + j, threshold):
                    pd[i, j] = p[i, j] * keep_scale
                    dp[i, j] *= keep_scale
                else:
                    pd[i, j] = 0
                    dp[i, j] = 0
        _gemm(dq, TRANS, NO_TRANS, S, Ev, L, pd.ctypes.data, S, ga + size * goff[n], ldg,
              dv[n].ctypes.data, Ev, 0.0)
    else:
        _gemm(dq, TRANS, NO_TRANS, S, Ev, L, p.ctypes.data, S, ga + size * goff[n], ldg,
              dv[n].ctypes.data, Ev, 0.0)
    for i in range(L):
        _softmax_grad(p[i], dp[i], scale)
    _gemm(dq, NO_TRANS, NO_TRANS, L, E, S, dp.ctypes.data, S, ka + size * koff[n], ldk,
          dq[n].ctypes.data, E, 0.0)
    _gemm(dq, TRANS, NO_TRANS, S, E, L, dp.ctypes.data, S, qa + size * qoff[n], ldq,
          dk[n].ctypes.data, E, 0.0)


@njit(parallel=True, cache=_CACHE)
def _backward(qa, qoff, ldq, ka, koff, ldk, va, voff, ldv, ga, goff, ldg, lse, mask,
              mask_per_block, has_mask, causal, scale, seed, threshold, keep_scale, dropout,
              gw, has_gw, dq, dk, dv, L, S, E, Ev):
    for n in prange(dq.shape[0]):
        _backward_block(n, qa, qoff, ldq, ka, koff, ldk, va, voff, ldv, ga, goff, ldg, lse, mask, mask_per_block, has_mask, causal, scale, seed, threshold, keep_scale, dropout, gw, has_gw, dq, dk, dv, L, S, E, Ev)


def _rows(x, lead):
    """:func:`cpu_blas.blocks` with rows of unit stride (the kernels' GEMMs take
    every operand untransposed): ``(x, address, offsets, row stride)``."""
    x, address, offsets, trans, ld = cpu_blas.blocks(x, lead)
    if trans != NO_TRANS:
        x = np.ascontiguousarray(x)
        x, address, offsets, trans, ld = cpu_blas.blocks(x, lead)
    return x, address, offsets, ld


def _dropout_args(dropout_p, seed):
    threshold = min(int(dropout_p * 2.0 ** 64), 2 ** 64 - 1)
    keep_scale = 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0
    return np.uint64(seed), np.uint64(threshold), keep_scale, dropout_p > 0.0


def sdpa_forward(q, k, v, lead, mask, causal, scale, dropout_p, seed, want_weights=False):
    """q (*lead, L, E), k (*lead, S, E), v (*lead, S, Ev) (broadcast to ``lead``),
    ``mask`` None or a float (Nm, L, S) array with Nm 1 or prod(lead) -> (o (*lead, L,
    Ev), a view of a (*lead[:-1], L, lead[-1], Ev) array, lse (N, L), and with
    ``want_weights`` the weights after dropout (N, L, S), else None), N = prod(lead)."""
    L, E = q.shape[-2:]
    S, Ev = v.shape[-2:]
    N = int(np.prod(lead, dtype=np.int64))
    qb, qa, qoff, ldq = _rows(q, lead)   # qb, kb, vb: alive while the kernel reads them
    kb, ka, koff, ldk = _rows(k, lead)
    vb, va, voff, ldv = _rows(v, lead)
    # o is stored (*lead[:-1], L, lead[-1], Ev): the heads of a token side by side, so
    # the usual o.transpose(1, 2).reshape(B, L, H * Ev) afterwards needs no copy
    store = np.empty(tuple(lead[:-1]) + (L, lead[-1], Ev) if lead else (L, 1, Ev), q.dtype)
    o = np.moveaxis(store, -3, -2) if lead else store[:, 0]
    _, _, ooff, ldo = _rows(o, lead)
    lse = np.empty((N, L), dtype=np.float64)
    has_mask = mask is not None
    m = mask if has_mask else np.zeros((1, 1, 1), dtype=q.dtype)
    seed_, threshold, keep_scale, dropout = _dropout_args(dropout_p, seed)
    w = np.empty((N, L, S) if want_weights else (1, 1, 1), dtype=q.dtype)
    _forward(qa, qoff, ldq, ka, koff, ldk, va, voff, ldv, store.reshape(-1), ooff, ldo, lse, m,
             m.shape[0] > 1, has_mask, bool(causal), float(scale), seed_, threshold, keep_scale,
             dropout, w, bool(want_weights), L, S, E, Ev)
    del qb, kb, vb
    return o, lse, (w if want_weights else None)


def sdpa_backward(q, k, v, gy, lse, lead, mask, causal, scale, dropout_p, seed, gw=None):
    """Gradients (dq, dk, dv) as (N, L, E), (N, S, E), (N, S, Ev) arrays; ``gw`` (N, L, S):
    the gradient of the returned weights, if any."""
    L, E = q.shape[-2:]
    S, Ev = v.shape[-2:]
    N = lse.shape[0]
    qb, qa, qoff, ldq = _rows(q, lead)
    kb, ka, koff, ldk = _rows(k, lead)
    vb, va, voff, ldv = _rows(v, lead)
    gyb, ga, goff, ldg = _rows(gy, lead)
    dq = np.empty((N, L, E), dtype=q.dtype)
    dk = np.empty((N, S, E), dtype=q.dtype)
    dv = np.empty((N, S, Ev), dtype=q.dtype)
    has_mask = mask is not None
    m = mask if has_mask else np.zeros((1, 1, 1), dtype=q.dtype)
    seed_, threshold, keep_scale, dropout = _dropout_args(dropout_p, seed)
    _backward(qa, qoff, ldq, ka, koff, ldk, va, voff, ldv, ga, goff, ldg, lse, m,
              m.shape[0] > 1, has_mask, bool(causal), float(scale), seed_, threshold,
              keep_scale, dropout, np.zeros((1, 1, 1), q.dtype) if gw is None
              else np.ascontiguousarray(gw, dtype=q.dtype).reshape(N, L, S), gw is not None,
              dq, dk, dv, L, S, E, Ev)
    del qb, kb, vb, gyb
    return dq, dk, dv
