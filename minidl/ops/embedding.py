"""Embedding lookup with PyTorch's options, as one op with a deterministic backward.

Notation: weight (V, D) (V embeddings of D values), indices (*) of integers
in [0, V) -> output (*, D), ``output[..., :] = weight[indices[...]]``.
Backward scatters the output gradient back onto the rows it came from:
``gweight[v] = sum over positions p with indices[p] == v of gy[p]``, added
in a fixed order (NumPy's ``add.at`` goes through the positions in order; on
CuPy the positions are sorted by index, stably, and each row's sum is a
difference of float64 prefix sums, with no atomics), so two runs give the
same bits. The row of ``padding_idx`` gets no gradient; with
``scale_grad_by_freq`` each row's gradient is divided by how often its index
occurs in the batch.
"""
from __future__ import annotations

import operator

import numpy as np

from .. import backend
from ..tensor import Function, as_tensor, no_grad, raw


class EmbeddingFunction(Function):
    def __init__(self, indices, padding_idx, scale_grad_by_freq):
        self.indices, self.padding_idx = indices, padding_idx
        self.scale_grad_by_freq = scale_grad_by_freq

    def forward(self, weight):
        xp = backend.get_array_module(weight)
        self.shape = weight.shape
        return xp.take(weight, self.indices, axis=0)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        V, D = self.shape
        idx = self.indices.reshape(-1)
        rows = gy.reshape(-1, D)
        if self.scale_grad_by_freq:
            counts = xp.bincount(idx, minlength=V)
            rows = rows / counts[idx].astype(rows.dtype)[:, None]
        if xp is np:
            gw = np.zeros((V, D), dtype=gy.dtype)
            np.add.at(gw, idx, rows)
        else:
            gw = _scatter_rows_sorted(xp, idx, rows, V)
        if self.padding_idx is not None:
            gw[self.padding_idx] = 0
        return gw


def _scatter_rows_sorted(xp, idx, rows, V):
    """Deterministic row scatter-add (CuPy): sort positions by index (stably), take
    float64 prefix sums, and give each present index its segment's sum."""
    gw = xp.zeros((V, rows.shape[1]), dtype=rows.dtype)
    if idx.size == 0:
        return gw
    order = xp.argsort(idx, kind="stable")
    s = idx[order]
    prefix = xp.cumsum(rows[order].astype(xp.float64), axis=0)
    last = xp.nonzero(xp.concatenate([s[1:] != s[:-1], xp.ones(1, dtype=bool)]))[0]
    sums = prefix[last]
    sums[1:] -= prefix[last[:-1]]
    gw[s[last]] = sums.astype(rows.dtype)
    return gw


def _renorm_(weight, indices, max_norm, norm_type):
    """PyTorch's max_norm: each looked-up row whose ``norm_type``-norm exceeds
    ``max_norm`` is scaled in place to max_norm / (norm + 1e-7), without gradient."""
    w = raw(weight)
    xp = backend.get_array_module(w)
    rows = xp.unique(indices.reshape(-1))
    norms = xp.linalg.norm(w[rows].astype(xp.float64), ord=norm_type, axis=1)
    big = norms > max_norm
    if bool(big.any()):
        scale = (max_norm / (norms[big] + 1e-7)).astype(w.dtype)
        with no_grad():
            w[rows[big]] *= scale[:, None]


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0,
              scale_grad_by_freq=False, sparse=False):
    """``weight[input]`` as ``torch.nn.functional.embedding``: input (*) integer
    indices, weight (V, D) -> (*, D). ``padding_idx``: that row gets no gradient
    (negative counts from V). ``max_norm``: looked-up rows longer than it (in
    the ``norm_type`` norm) are renormalised in place first."""
    w = as_tensor(weight)
    if w.ndim != 2:
        raise ValueError(f"embedding: weight must be (num_embeddings, embedding_dim), got shape "
                         f"{tuple(w.shape)}")
    if sparse:
        raise NotImplementedError("embedding: sparse gradients are not supported; pass "
                                  "sparse=False")
    idx = raw(input)
    xp = backend.get_array_module(w._data)
    idx = xp.asarray(idx) if backend.device_of(idx) == backend.device_of(w._data) else \
        backend.to_device(np.asarray(idx), w.device)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: input must hold integer indices, got dtype {idx.dtype}")
    V = w.shape[0]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= V):
        raise IndexError(f"embedding: indices must be in [0, {V}), got values from "
                         f"{int(idx.min())} to {int(idx.max())}")
    if padding_idx is not None:
        padding_idx = operator.index(padding_idx)
        if not -V <= padding_idx < V:
            raise ValueError(f"embedding: padding_idx must be within [-{V}, {V}), got "
                             f"{padding_idx}")
        padding_idx %= V
    if max_norm is not None:
        _renorm_(w, idx, float(max_norm), float(norm_type))
    return EmbeddingFunction(idx.astype(np.int64, copy=False), padding_idx,
                             bool(scale_grad_by_freq))(w)
