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
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..tensor import Tensor, as_tensor, raw
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


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, *, return_weights=False):
    """softmax(q k^T * scale + mask) v: q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev).

    Boolean ``attn_mask``: **True = takes part in attention**, False = masked
    out. Float ``attn_mask``: added to the scores. ``is_causal``: query i sees
    keys j <= i. A fully masked query row gives zeros, as PyTorch. ``dropout_p``
    drops attention weights (pass 0 in eval). ``return_weights=True`` (a
    minidl extra) also returns the (..., L, S) weights after dropout.
    """
    q, k, v = as_tensor(query), as_tensor(key), as_tensor(value)
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"scaled_dot_product_attention: expected q, k, v of at least 2 dims "
                         f"(..., L, E), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: q {tuple(q.shape)} and k "
                         f"{tuple(k.shape)} need the same E; k and v {tuple(v.shape)} the same S")
    weights = softmax(attention_scores(q, k, attn_mask, is_causal, scale), dim=-1)
    if dropout_p > 0.0:
        weights = dropout(weights, dropout_p, True)
    out = matmul(weights, v)
    return (out, weights) if return_weights else out
