"""Attention layers: MultiheadAttention (PyTorch's), ChannelAttention (the article's
AttentionNet made to work) and AttentionPool2d (attention pooling of a feature map).

Notation: B batch, C channels, H x W a feature map, P = H * W positions;
L query length, S key length, E embedding dim, h heads, D = E / h.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..ops.activation import softmax
from ..ops.attention import (causal_mask, fusable, fused_attention,
                             scaled_dot_product_attention)
from ..ops.linear import linear
from ..tensor import raw
from . import init
from .layers import Dropout, Linear, ReLU, factory_dtype, to_factory_device
from .module import Module, Parameter, Sequential


def _additive(mask, dtype, what):
    """MultiheadAttention's mask -> additive float array (True = masked OUT -> -inf)."""
    m = raw(mask)
    if m.dtype == bool:
        xp = backend.get_array_module(m)
        return xp.where(m, dtype.type(-np.inf), dtype.type(0))
    if m.dtype.kind != "f":
        raise TypeError(f"MultiheadAttention: {what} must be bool or float, got {m.dtype}")
    return m.astype(dtype, copy=False)


class MultiheadAttention(Module):
    """Multi-head attention with PyTorch's parameters, so a state dict converts one to one:
    ``in_proj_weight`` (3E, E) and ``in_proj_bias`` (3E) (or ``q_proj_weight``,
    ``k_proj_weight``, ``v_proj_weight`` when kdim/vdim differ from E) and
    ``out_proj`` (a Linear E -> E).

    ``forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False)`` returns
    ``(output, weights)``; inputs (L, B, E) or, with ``batch_first``, (B, L, E),
    or unbatched (L, E).

    **Mask polarity (as PyTorch's MultiheadAttention, and the opposite of
    ``F.scaled_dot_product_attention``):** in a boolean ``key_padding_mask``
    (B, S) or ``attn_mask`` (L, S) / (B*h, L, S), **True means masked OUT**
    (that key is not attended to). Float masks are added to the scores.
    Weights are (B, L, S) averaged over heads, or (B, h, L, S) with
    ``average_attn_weights=False``; None unless ``need_weights``.

    ``is_causal=True`` masks every key after its query (query i sees keys
    j <= i), together with any ``attn_mask``/``key_padding_mask``. Unlike
    PyTorch, where it is only a hint, no causal ``attn_mask`` is needed.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None,
                 dtype=np.float32):
        super().__init__()
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError("MultiheadAttention: add_bias_kv/add_zero_attn are not "
                                      "supported")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} must be divisible by "
                             f"num_heads {num_heads}")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.head_dim = embed_dim // num_heads
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.dropout, self.batch_first = float(dropout), batch_first
        E = embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(np.empty((3 * E, E), dtype))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.q_proj_weight = Parameter(np.empty((E, E), dtype))
            self.k_proj_weight = Parameter(np.empty((E, self.kdim), dtype))
            self.v_proj_weight = Parameter(np.empty((E, self.vdim), dtype))
        if bias:
            self.in_proj_bias = Parameter(np.zeros(3 * E, dtype))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(E, E, bias=bias, dtype=dtype)
        self._reset_parameters()
        if device is not None:
            self.to(device)

    def _reset_parameters(self):
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)

    def _projections(self):
        E = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:E], b[E:2 * E], b[2 * E:])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            return (w[:E], bq), (w[E:2 * E], bk), (w[2 * E:], bv)
        return (self.q_proj_weight, bq), (self.k_proj_weight, bk), (self.v_proj_weight, bv)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        E, h, D = self.embed_dim, self.num_heads, self.head_dim
        unbatched = query.ndim == 2
        for name, t, dim in (("query", query, E), ("key", key, self.kdim),
                             ("value", value, self.vdim)):
            if t.ndim != query.ndim or t.ndim not in (2, 3) or t.shape[-1] != dim:
                layout = "(L, E)" if unbatched else ("(B, L, E)" if self.batch_first
                                                     else "(L, B, E)")
                raise self._bad_input(f"{name} {layout} with E = {dim}", t)
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = raw(key_padding_mask)[None]
        elif self.batch_first:  # work in (B, L, E)
            pass
        if not self.batch_first or unbatched:
            query, key, value = (t.swapaxes(0, 1) for t in (query, key, value))
        B, L, S = query.shape[0], query.shape[1], key.shape[1]
        if key.shape[0] != B or value.shape[0] != B or value.shape[1] != S:
            raise ValueError(
                f"{self._label()}: query, key and value must share the batch size, and key "
                f"and value the length; got (B, L) = {(B, L)} for query, {tuple(key.shape[:2])} "
                f"for key and {tuple(value.shape[:2])} for value (in (B, L) order)")
        (wq, bq), (wk, bk), (wv, bv) = self._projections()
        q = linear(query, wq, bq).reshape(B, L, h, D).swapaxes(1, 2)
        k = linear(key, wk, bk).reshape(B, S, h, D).swapaxes(1, 2)
        v = linear(value, wv, bv).reshape(B, S, h, D).swapaxes(1, 2)
        dtype = q._data.dtype
        mask = None
        if attn_mask is not None:
            m = _additive(attn_mask, dtype, "attn_mask")
            if m.ndim == 3:
                if m.shape != (B * h, L, S):
                    raise ValueError(f"{self._label()}: a 3-D attn_mask must be (B*num_heads, L, "
                                     f"S) = {(B * h, L, S)}, got {m.shape}")
                m = m.reshape(B, h, L, S)
            elif m.shape != (L, S):
                raise ValueError(f"{self._label()}: attn_mask must be (L, S) = {(L, S)}, got "
                                 f"{m.shape}")
            mask = m
        if key_padding_mask is not None:
            m = _additive(key_padding_mask, dtype, "key_padding_mask")
            if m.shape != (B, S):
                raise ValueError(f"{self._label()}: key_padding_mask must be (B, S) = {(B, S)}, "
                                 f"got {m.shape}")
            m = m.reshape(B, 1, 1, S)
            mask = m if mask is None else mask + m
        dropout_p = self.dropout if self.training else 0.0
        if fusable(q, k, v):   # one fused op; a mask and is_causal both apply there
            out = fused_attention(q, k, v, mask, dropout_p, is_causal,
                                  return_weights=need_weights)
            out, weights = out if need_weights else (out, None)
        else:
            if is_causal and mask is not None:
                # scaled_dot_product_attention takes is_causal or a mask, not both, so the
                # causal part joins the other masks here: a key is attended to only if
                # it is at or before the query AND not masked by attn_mask/key_padding_mask.
                xp = backend.get_array_module(mask)
                mask = mask + xp.where(causal_mask(L, S, xp), dtype.type(0),
                                       dtype.type(-np.inf))
            out, weights = scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p,
                is_causal=is_causal and mask is None, return_weights=True)
        out = out.swapaxes(1, 2).reshape(B, L, E)
        out = self.out_proj(out)
        if unbatched:
            out = out.reshape(L, E)
        elif not self.batch_first:
            out = out.swapaxes(0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(axis=1)
        if unbatched:
            weights = weights.reshape(*weights.shape[1:])
        return out, weights

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, " \
               f"batch_first={self.batch_first}"


class ChannelAttention(Module):
    """The article's AttentionNet, made to work: one attention weight per channel.

    The article flattens the (B, C, H, W) feature maps (C=16, 7x7: 784
    values), runs an MLP 784 -> 128 -> 64 (ReLU, Dropout(0.2) after each) and
    a scoring layer 64 -> 1 with a sigmoid, then a softmax over that axis of
    size 1, so every weight is exactly 1 and the attention does nothing. Here
    the scoring Linear gives **one score per channel** (hidden[-1] -> C) and
    the softmax runs **across channels**, so the weights (B, C) sum to 1::

        scores  = score(mlp(x.flatten(1)))           # (B, C)
        weights = softmax(scores, dim=1)             # (B, C)

    ``fusion`` picks what is returned with the weights:

    * ``'sum'`` (as printed in the article): ``sum_c weights[:, c] * x[:, c]``,
      the attention-weighted sum over channels, shape (B, H, W);
    * ``'reweight'``: each channel scaled by its weight times C,
      ``x * (C * weights)[:, :, None, None]``, shape (B, C, H, W). The factor C
      makes uniform weights (1/C each) the identity, so the features keep
      their scale and the next layer's initialisation still fits.

    Returns ``(fused, weights)``. Submodules: ``mlp`` (Sequential of
    Linear/ReLU/Dropout per hidden size) and ``score`` (Linear -> C).
    """

    FUSIONS = ("sum", "reweight")

    def __init__(self, channels, height, width, hidden=(128, 64), dropout=0.2,
                 fusion="reweight", device=None, dtype=None):
        super().__init__()
        if fusion not in self.FUSIONS:
            raise ValueError(f"ChannelAttention: fusion must be one of {self.FUSIONS}, got "
                             f"{fusion!r}")
        self.channels, self.height, self.width = int(channels), int(height), int(width)
        self.hidden, self.fusion = tuple(int(n) for n in hidden), fusion
        layers, size = [], self.channels * self.height * self.width
        for n in self.hidden:
            layers += [Linear(size, n, device=device, dtype=dtype), ReLU(), Dropout(dropout)]
            size = n
        self.mlp = Sequential(*layers)
        self.score = Linear(size, self.channels, device=device, dtype=dtype)

    def forward(self, x):
        C, H, W = self.channels, self.height, self.width
        if getattr(x, "ndim", 0) != 4 or tuple(x.shape[1:]) != (C, H, W):
            raise self._bad_input(f"(B, {C}, {H}, {W})", x)
        B = x.shape[0]
        weights = softmax(self.score(self.mlp(x.reshape(B, C * H * W))), dim=1)
        if self.fusion == "sum":
            fused = (x * weights.reshape(B, C, 1, 1)).sum(axis=1)
        else:
            fused = x * (weights * float(C)).reshape(B, C, 1, 1)
        return fused, weights

    def extra_repr(self):
        return (f"channels={self.channels}, height={self.height}, width={self.width}, "
                f"fusion='{self.fusion}'")


class AttentionPool2d(Module):
    """Attention pooling of a feature map: a learned query attends over the H*W positions.

    The map (B, C, H, W) becomes P = H*W tokens of C dims plus a learned
    position embedding ``pos_embedding`` (P, C); a learned ``query`` (C,)
    attends over them through ``attn`` (a MultiheadAttention with
    ``num_heads`` heads). Returns ``(pooled, attention)``: pooled (B, C) and
    the attention map (B, H, W) averaged over heads, for visualisation (each
    map sums to 1, except in training with ``dropout`` > 0: the map is then
    the one the pooling used, after dropout, as PyTorch's attention weights).
    """

    def __init__(self, channels, height, width, num_heads=1, dropout=0.0, device=None,
                 dtype=None):
        super().__init__()
        dtype = factory_dtype("AttentionPool2d", dtype)
        self.channels, self.height, self.width = int(channels), int(height), int(width)
        P = self.height * self.width
        self.query = Parameter(np.empty(self.channels, dtype))
        self.pos_embedding = Parameter(np.empty((P, self.channels), dtype))
        self._reset_embeddings()
        self.attn = MultiheadAttention(self.channels, num_heads, dropout=dropout,
                                       batch_first=True, dtype=dtype)
        to_factory_device(self, device)

    def _reset_embeddings(self):
        init.normal_(self.query, 0.0, self.channels ** -0.5)
        init.normal_(self.pos_embedding, 0.0, self.channels ** -0.5)

    def reset_parameters(self):
        """The query, the position embedding and the attention's weights drawn anew."""
        self._reset_embeddings()
        self.attn.out_proj.reset_parameters()   # as built; _reset_parameters zeroes its bias
        self.attn._reset_parameters()

    def forward(self, x):
        C, H, W = self.channels, self.height, self.width
        if getattr(x, "ndim", 0) != 4 or tuple(x.shape[1:]) != (C, H, W):
            raise self._bad_input(f"(B, {C}, {H}, {W})", x)
        B = x.shape[0]
        tokens = x.reshape(B, C, H * W).swapaxes(1, 2) + self.pos_embedding   # (B, P, C)
        q = self.query.reshape(1, 1, C).broadcast_to(B, 1, C)
        pooled, weights = self.attn(q, tokens, tokens, need_weights=True,
                                    average_attn_weights=True)
        return pooled.reshape(B, C), weights.reshape(B, H, W)

    def extra_repr(self):
        return f"channels={self.channels}, height={self.height}, width={self.width}"
