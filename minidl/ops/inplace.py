"""In-place activations (``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``), as PyTorch's.

Without a graph being recorded the new values are written into ``x``'s own
array, so views of it see them. While recording, ``x`` itself becomes the
op's output in the graph (the Tensor object now holds the result and its
creator; arrays that earlier ops saved for their backward are untouched, so
gradients stay right); views taken before do not see the change then. A
leaf that requires grad is refused, with PyTorch's message.
"""
from __future__ import annotations

import weakref

from ..tensor import Tensor, is_grad_enabled, no_grad


def apply_inplace(op, fn, x):
    """``fn(x)`` stored in ``x``; returns ``x``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}(inplace=True): expects a Tensor, got {type(x).__name__}")
    if not (is_grad_enabled() and x.requires_grad):
        with no_grad():
            out = fn(x)
        x._data[...] = out._data
        return x
    if x.creator is None:
        raise RuntimeError(f"{op}(inplace=True): a leaf Variable that requires grad is being "
                           "used in an in-place operation.")
    before = Tensor._wrap(x._data)   # x as it was, for the graph below
    before.creator, before.generation = x.creator, x.generation
    before._out_index, before._requires_grad = x._out_index, True
    out = fn(before)
    x._data, x.creator, x.generation, x._out_index = (out._data, out.creator, out.generation,
                                                      out._out_index)
    x.grad = None
    out.creator.outputs[out._out_index] = weakref.ref(x)
    return x
