"""Scaled dot-product attention, with PyTorch's mask semantics.

Notation: q (..., L, E), k (..., S, E), v (..., S, Ev); the leading dims
(batch, heads) broadcast. ``attention(q, k, v) = softmax(q k^T * scale + M) v``
with scale = 1/sqrt(E) by default and M the mask as an additive bias.

Mask polarity (the same as ``torch.nn.functional.scaled_dot_product_attention``):

* a **boolean** ``attn_mask``: **True = this query/key pair takes part**;
  False is masked out (becomes -inf before the softmax);
* a **float** ``attn_mask`` is **added** to the scores (use -inf to mask);
* ``is_causal=True``: query i sees keys j <= i (the top-left causal mask).

``nn.MultiheadAttention`` uses the *opposite* boolean polarity, as PyTorch
does: there True in ``key_padding_mask``/``attn_mask`` means masked OUT.

A query whose keys are all masked out gets all-zero attention weights and a
zero output, as PyTorch's scaled_dot_product_attention gives (a plain
``torch.softmax`` over an all -inf row gives NaN; minidl's softmax gives zeros).

On the CPU (Numba with NumPy's cblas) the whole attention is one fused op,
:class:`ScaledDotProductAttention` over :mod:`minidl.kernels.cpu_attention`:
per (batch, head) block, scores, mask, online softmax over key tiles,
dropout and the product with V, and a backward that recomputes the weights.
Elsewhere (CuPy, no cblas) it is the
composed reference :func:`reference_attention` (batched matmuls, softmax,
dropout), which the tests use as the oracle. The mask is a constant: no
gradient flows into a float ``attn_mask``.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..random import generator_for
from ..tensor import Function, Tensor, as_tensor, raw
from .activation import dropout, softmax
from .arith import matmul, where



def causal_mask(L, S, xp=np):
    """Boolean (L, S) mask, True where key j <= query i (takes part)."""
    return xp.tril(xp.ones((L, S), dtype=bool))


def attention_scores(q, k, attn_mask=None, is_causal=False, scale=None):
    """Masked scores ``q k^T * scale + M`` (before the softmax); masks as the module docstring."""
    E, L, S = q.shape[-1], q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    scores = matmul(q * scale, k.mT)
    xp = backend.get_array_module(scores._data)
    allowed = None
    if is_causal:
        if attn_mask is not None:
            raise ValueError("scaled_dot_product_attention: pass attn_mask or is_causal, not both")
        allowed = causal_mask(L, S, xp)
    elif attn_mask is not None:
        m = raw(attn_mask)
        m = m if backend.device_of(m) == backend.device_of(scores._data) else \
            backend.to_device(m, scores.device)
        if m.dtype == bool:
            allowed = m
        else:
            scores = scores + Tensor._wrap(m.astype(scores.dtype, copy=False))
    if allowed is not None:
        scores = where(allowed, scores, float("-inf"))
    return scores


def _check_qkv(q, k, v):
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"scaled_dot_product_attention: expected q, k, v of at least 2 dims "
                         f"(..., L, E), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: q {tuple(q.shape)} and k "
                         f"{tuple(k.shape)} need the same E; k and v {tuple(v.shape)} the same S")


def reference_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """The composed (unfused) attention: ``(output, weights after dropout)``."""
    weights = softmax(attention_scores(q, k, attn_mask, is_causal, scale), dim=-1)
    if dropout_p > 0.0:
        weights = dropout(weights, dropout_p, True)
    return matmul(weights, v), weights


class ScaledDotProductAttention(Function):
    """The fused CPU attention (see the module docstring); q, k, v broadcast over their
    leading dims; ``mask`` None or an additive float (Nm, L, S) array, Nm 1 or the
    number of blocks; ``causal`` may join a mask (MultiheadAttention's is_causal)."""

    def __init__(self, lead, mask, causal, scale, dropout_p, seed, want_weights=False):
        self.lead, self.mask, self.causal = lead, mask, causal
        self.scale, self.dropout_p, self.seed = scale, dropout_p, seed
        self.want_weights = want_weights

    def forward(self, q, k, v):
        from ..kernels import cpu_attention
        o, self.lse, w = cpu_attention.sdpa_forward(q, k, v, self.lead, self.mask, self.causal,
                                                    self.scale, self.dropout_p, self.seed,
                                                    self.want_weights)
        self.q, self.k, self.v = q, k, v
        if self.want_weights:
            return o, w.reshape(self.lead + w.shape[1:])
        return o

    def backward(self, gy, gw=None):
        from ..kernels import cpu_attention
        q, k, v, lead = self.q, self.k, self.v, self.lead
        if gw is not None and not gw.any():   # the engine's zeros for unused weights
            gw = None
        dq, dk, dv = cpu_attention.sdpa_backward(q, k, v, gy, self.lse, lead, self.mask,
                                                 self.causal, self.scale, self.dropout_p,
                                                 self.seed, gw)
        return (dq.reshape(lead + dq.shape[1:]), dk.reshape(lead + dk.shape[1:]),
                dv.reshape(lead + dv.shape[1:]))


def fusable(q, k, v):
    """Whether the fused CPU op takes tensors q, k, v (NumPy with Numba and cblas, one
    float dtype, nothing empty)."""
    if not (backend.get_array_module(q._data) is np and backend.numba_enabled()):
        return False
    from ..kernels import cpu_attention
    dtype = q._data.dtype
    return (cpu_attention.available() and dtype in (np.float32, np.float64)
            and k._data.dtype == dtype and v._data.dtype == dtype and 0 not in q.shape
            and 0 not in k.shape and 0 not in v.shape)


def _block_mask(m, dtype, lead, L, S):
    """A boolean (True = takes part) or float mask broadcasting to (*lead, L, S) ->
    an additive C-contiguous (Nm, L, S) array of ``dtype``, Nm 1 or prod(lead)."""
    m = np.asarray(m)
    if m.dtype == bool:
        m = np.where(m, dtype.type(0), dtype.type(-np.inf))
    elif m.dtype.kind not in "fiu":
        raise TypeError(f"scaled_dot_product_attention: attn_mask must be bool or float, "
                        f"got {m.dtype}")
    try:
        full = np.broadcast_shapes(m.shape, tuple(lead) + (L, S))
    except ValueError:
        full = None
    if full != tuple(lead) + (L, S):
        raise ValueError(f"scaled_dot_product_attention: attn_mask {m.shape} does not "
                         f"broadcast to the scores' shape {tuple(lead) + (L, S)}")
    m = m.astype(dtype, copy=False)
    if m.ndim <= 2 or all(n == 1 for n in m.shape[:-2]):
        return np.ascontiguousarray(np.broadcast_to(m.reshape(m.shape[-2:]) if m.ndim >= 2
                                                    else m, (L, S))).reshape(1, L, S)
    return np.ascontiguousarray(np.broadcast_to(m, full)).reshape(-1, L, S)


def _is_causal_pattern(m):
    """Whether the additive (L, S) mask is 0 where key j <= query i and -inf after."""
    L, S = m.shape
    allowed = np.tri(L, S, dtype=bool)
    return bool((m[allowed] == 0).all() and np.isneginf(m[~allowed]).all())


def fused_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    return_weights=False):
    """:class:`ScaledDotProductAttention` on tensors q, k, v (checked, fusable); a mask
    and ``is_causal`` may come together (both apply). ``return_weights``: also the
    (*lead, L, S) weights after dropout (a differentiable output)."""
    lead = tuple(np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    L, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    mask = None if attn_mask is None else _block_mask(raw(attn_mask), q._data.dtype, lead, L, S)
    if mask is not None and mask.shape[0] == 1 and _is_causal_pattern(mask[0]):
        # the usual causal mask given as a mask (minGPT's, MultiheadAttention's): the
        # kernel's causal cut gives the same result and skips the keys past each query
        mask, is_causal = None, True
    seed = int(generator_for(np).integers(2**63)) if dropout_p > 0.0 else 0
    fn = ScaledDotProductAttention(lead, mask, bool(is_causal), scale, float(dropout_p), seed,
                                   bool(return_weights))
    return fn(q, k, v)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, *, return_weights=False):
    """softmax(q k^T * scale + mask) v: q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev).

    Boolean ``attn_mask``: **True = takes part in attention**, False = masked
    out. Float ``attn_mask``: added to the scores. ``is_causal``: query i sees
    keys j <= i. A fully masked query row gives zeros, as PyTorch. ``dropout_p``
    drops attention weights (pass 0 in eval). ``return_weights=True`` (a
    minidl extra) also returns the (..., L, S) weights after dropout (the
    fused CPU op then takes each row of keys as one tile).
    """
    q, k, v = as_tensor(query), as_tensor(key), as_tensor(value)
    _check_qkv(q, k, v)
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"scaled_dot_product_attention: dropout_p must be in [0, 1], got "
                         f"{dropout_p}")
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: pass attn_mask or is_causal, not both")
    if not fusable(q, k, v):
        out, weights = reference_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)
        return (out, weights) if return_weights else out
    return fused_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, return_weights)
