"""``clip_grad_norm_``, as ``torch.nn.utils``."""
from __future__ import annotations

import math

from .. import backend
from ..tensor import Tensor


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the gradients so their joint ``norm_type`` norm is at most ``max_norm``.

    Returns the total norm before clipping (a 0-d tensor). The gradient
    arrays are replaced by scaled copies, never written in place (an array
    may be shared with a graph that still uses it)."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return Tensor(0.0)
    xp = backend.get_array_module(grads[0].grad.data)
    norm_type = float(norm_type)
    if math.isinf(norm_type):
        norms = [xp.abs(p.grad.data).max() for p in grads]
        total = max(float(n) for n in norms)
    else:
        total = sum(float((xp.abs(p.grad.data) ** norm_type).sum()) for p in grads) \
            ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the "
                           f"gradients is {total}; set error_if_nonfinite=False to clip anyway")
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0:
        for p in grads:
            g = p.grad.data
            p.grad = Tensor._wrap(g * g.dtype.type(coef))
    return Tensor(xp.asarray(total, dtype=grads[0].grad.data.dtype))
