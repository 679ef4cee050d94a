"""nn.Embedding with PyTorch's signature, parameter name and initialisation."""
from __future__ import annotations

import numpy as np

from ..ops.embedding import embedding
from ..tensor import as_tensor, no_grad
from . import init
from .module import Module, Parameter


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of ``embedding_dim`` values, looked up by
    index: input (*) integers -> (*, embedding_dim). ``weight`` (V, D) starts N(0, 1)
    with the ``padding_idx`` row zero, as PyTorch; options as :func:`minidl.nn.functional.embedding`."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
                 norm_type=2.0, scale_grad_by_freq=False, sparse=False, _weight=None,
                 _freeze=False, device=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        if padding_idx is not None:
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"Embedding: padding_idx must be within [-{num_embeddings}, "
                                 f"{num_embeddings}), got {padding_idx}")
            padding_idx %= self.num_embeddings
        self.padding_idx, self.max_norm, self.norm_type = padding_idx, max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        dtype = np.dtype(dtype or np.float32)
        if _weight is None:
            self.weight = Parameter(np.empty((self.num_embeddings, self.embedding_dim), dtype),
                                    requires_grad=not _freeze)
            self.reset_parameters()
        else:
            w = as_tensor(_weight)
            if tuple(w.shape) != (self.num_embeddings, self.embedding_dim):
                raise ValueError(f"Embedding: _weight must be {(num_embeddings, embedding_dim)}, "
                                 f"got {tuple(w.shape)}")
            self.weight = Parameter(w.numpy().astype(dtype, copy=True),
                                    requires_grad=not _freeze)
        if device is not None:
            self.to(device)

    def reset_parameters(self):
        init.normal_(self.weight)
        if self.padding_idx is not None:
            with no_grad():
                self.weight._data[self.padding_idx] = 0

    def forward(self, input):
        return embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                         self.scale_grad_by_freq, self.sparse)

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None, max_norm=None,
                        norm_type=2.0, scale_grad_by_freq=False, sparse=False):
        """An Embedding holding a copy of the 2-D ``embeddings``; frozen unless ``freeze=False``."""
        e = as_tensor(embeddings)
        if e.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: embeddings must be 2-D, got shape "
                             f"{tuple(e.shape)}")
        return cls(e.shape[0], e.shape[1], padding_idx, max_norm, norm_type, scale_grad_by_freq,
                   sparse, _weight=e, _freeze=freeze, dtype=e.dtype)

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        return s
