"""Adam and AdamW: one rule, ``decoupled`` weight decay being the only difference.

Per parameter, step t, with g the gradient::

    Adam:  g = g + weight_decay * p          AdamW:  p *= 1 - lr * weight_decay
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2        (amsgrad: vmax = max(vmax, v), used below)
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

as ``torch.optim.Adam``/``AdamW``; in place on preallocated arrays (with the
Numba kernels, one pass over each parameter: ``optimizer.fused_kernel``).
"""
from __future__ import annotations

import math

from .. import backend
from .optimizer import Optimizer, fused_kernel


class Adam(Optimizer):
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False):
        self.check_hyperparameters(type(self).__name__, lr=lr, eps=eps, weight_decay=weight_decay)
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: lr, eps and weight_decay must be >= 0")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _update(self, group, params, grads):
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        wd, amsgrad = group["weight_decay"], group["amsgrad"]
        for p, g in zip(params, grads):
            xp = backend.get_array_module(p._data)
            dt = p._data.dtype.type
            state = self.state.setdefault(p, {})
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = xp.zeros_like(p._data)
                state["exp_avg_sq"] = xp.zeros_like(p._data)
                if amsgrad:
                    state["max_exp_avg_sq"] = xp.zeros_like(p._data)
            state["step"] += 1
            t = state["step"]
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            fused = fused_kernel(p, g, "adam_update")
            arrays = [state[k] for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
                      if k in state]
            if fused is not None and all(a.flags.c_contiguous for a in arrays):
                # the same rule in one pass (the Numba kernels)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                vmax = state["max_exp_avg_sq"].reshape(-1) if amsgrad else None
                decoupled = wd and self._decoupled
                fused(p._data.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), vmax,
                      lr / bc1, b1, b2, eps, math.sqrt(bc2), 0 if self._decoupled else wd,
                      1 - lr * wd if decoupled else 1, group["maximize"])
                continue
            m, v = state["exp_avg"], state["exp_avg_sq"]
            s = self._buffer(p, "s")
            if wd and self._decoupled:
                p._data *= dt(1 - lr * wd)
            g = self._effective_grad(p, g, 0 if self._decoupled else wd, group["maximize"])
            m *= dt(b1)
            xp.multiply(g, dt(1 - b1), out=s)
            m += s
            v *= dt(b2)
            # (1 - b2) * g first, then * g, as PyTorch's addcmul: g * g would overflow
            # float32 for |g| > 1.8e19, and an inf in v freezes the parameter for good
            xp.multiply(g, dt(1 - b2), out=s)
            s *= g
            v += s
            if amsgrad:
                vmax = state["max_exp_avg_sq"]
                xp.maximum(vmax, v, out=vmax)
                v = vmax
            xp.sqrt(v, out=s)
            s /= dt(math.sqrt(bc2))
            s += dt(eps)
            xp.divide(m, s, out=s)
            s *= dt(lr / bc1)
            p._data -= s


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01, as PyTorch)."""
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)
