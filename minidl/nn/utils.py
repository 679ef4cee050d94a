"""``clip_grad_norm_``, as ``torch.nn.utils``."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..tensor import Tensor


def _vector_norm(a, norm_type, xp):
    """The ``norm_type`` norm of ``a`` seen as one vector, as ``torch.linalg.vector_norm``:
    inf -> max |a|, -inf -> min |a|, 0 -> the number of non-zeros, p -> (sum |a|^p)^(1/p).
    A 0-d array of ``a``'s dtype; NaN anywhere gives NaN."""
    if a.size == 0 and (norm_type < 0 or math.isinf(norm_type)):
        raise ValueError(f"clip_grad_norm_: the {norm_type} norm of an empty gradient is "
                         "undefined (max/min/negative powers have no identity)")
    # a negative p meets |0|^p = inf on purpose (the norm is then 0, as PyTorch's)
    with np.errstate(divide="ignore"):
        return xp.linalg.norm(a.reshape(-1), norm_type)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the gradients so their joint ``norm_type`` norm is at most ``max_norm``.

    As PyTorch: the total is the ``norm_type`` norm of the per-parameter norms
    (so for ``norm_type=0`` it counts the parameters with a non-zero gradient,
    not the non-zero entries), and every gradient is multiplied by
    ``min(max_norm / (total + 1e-6), 1)``: a NaN total makes the gradients NaN
    unless ``error_if_nonfinite`` raises first, an inf total zeroes them.

    Returns the total norm before clipping (a 0-d tensor of the gradients'
    dtype). The gradient arrays are replaced by scaled copies, never written
    in place (an array may be shared with a graph that still uses it)."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return Tensor(0.0)
    xp = backend.get_array_module(grads[0].grad._data)
    dtype = grads[0].grad._data.dtype
    norm_type = float(norm_type)
    norms = [_vector_norm(p.grad._data, norm_type, xp) for p in grads]
    total = _vector_norm(xp.stack(norms).astype(dtype, copy=False), norm_type, xp)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the "
                           f"gradients is {float(total)}; set error_if_nonfinite=False to clip "
                           "anyway")
    coef = float(max_norm) / (float(total) + 1e-6)
    # PyTorch always multiplies by the clamped coefficient; multiplying by 1 changes
    # nothing, so skip that copy. `not coef >= 1` also catches a NaN coefficient.
    if not coef >= 1.0:
        for p in grads:
            g = p.grad._data
            p.grad = Tensor._wrap(g * g.dtype.type(coef))
    return Tensor._wrap(xp.asarray(total, dtype=dtype))
