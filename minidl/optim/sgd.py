"""SGD with momentum, dampening, Nesterov and (coupled) weight decay, as ``torch.optim.SGD``.

Per parameter, with g the gradient::

    d = g + weight_decay * p
    buf = d                                   (first step)
    buf = momentum * buf + (1 - dampening) * d
    d = d + momentum * buf  (nesterov)   or   d = buf
    p -= lr * d

All in place on preallocated arrays (``maximize`` negates g); with the
Numba kernels, one pass over each parameter (:func:`fused_kernel`).
"""
from __future__ import annotations

from .. import backend
from .optimizer import Optimizer, fused_kernel


class SGD(Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False):
        self.check_hyperparameters("SGD", lr=lr, momentum=momentum, weight_decay=weight_decay)
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _update(self, group, params, grads):
        lr, mom, damp = group["lr"], group["momentum"], group["dampening"]
        wd, nesterov, maximize = group["weight_decay"], group["nesterov"], group["maximize"]
        for p, g in zip(params, grads):
            fused = fused_kernel(p, g, "sgd_update")
            if fused is not None:   # the same rule in one pass (the Numba kernels)
                buf, first = None, False
                if mom:
                    state = self.state.setdefault(p, {})
                    buf = state.get("momentum_buffer")
                    first = buf is None
                    if first or not buf.flags.c_contiguous:   # the kernel writes it flat
                        xp = backend.get_array_module(p._data)
                        buf = state["momentum_buffer"] = \
                            xp.empty_like(p._data) if first else xp.ascontiguousarray(buf)
                fused(p._data.reshape(-1), g.reshape(-1), None if buf is None else buf.reshape(-1),
                      lr, mom, damp, wd, nesterov, maximize, first)
                continue
            xp = backend.get_array_module(p._data)
            dt = p._data.dtype.type
            d = self._effective_grad(p, g, wd, maximize)   # g is read only
            if mom:
                state = self.state.setdefault(p, {})
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.copy()
                else:
                    buf *= dt(mom)
                    if damp:
                        t = self._buffer(p, "t")
                        xp.multiply(d, dt(1 - damp), out=t)
                        buf += t
                    else:
                        buf += d
                if nesterov:
                    t = self._buffer(p, "t")
                    xp.multiply(buf, dt(mom), out=t)
                    t += d
                    d = t
                else:
                    d = buf
            step = self._buffer(p, "t")
            xp.multiply(d, dt(lr), out=step)   # d may be step itself (nesterov): fine
            p._data -= step
