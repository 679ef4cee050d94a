"""RMSprop, Adagrad and Adadelta, with ``torch.optim``'s update rules and defaults.

Per parameter, with g the gradient (``weight_decay``: g + wd * p; ``maximize``: -g)::

    RMSprop   v = alpha v + (1 - alpha) g^2
              centered: m = alpha m + (1 - alpha) g;  a = sqrt(v - m^2) + eps
              else a = sqrt(v) + eps
              momentum: b = momentum b + g / a;  p -= lr b      else p -= lr g / a
    Adagrad   s += g^2;  p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps)
    Adadelta  v = rho v + (1 - rho) g^2
              d = sqrt(u + eps) / sqrt(v + eps) * g;  u = rho u + (1 - rho) d^2
              p -= lr d

State arrays have PyTorch's names (``square_avg``, ``grad_avg``,
``momentum_buffer``, ``sum``, ``acc_delta``) and are updated in place.
"""
from __future__ import annotations

from .. import backend
from .optimizer import Optimizer


def _state(opt, p, names, fill=0.0):
    """``opt.state[p]`` with a ``step`` count and arrays ``names`` filled with ``fill``."""
    state = opt.state.setdefault(p, {})
    if "step" not in state:
        state["step"] = 0
        xp = backend.get_array_module(p._data)
        for name in names:
            state[name] = xp.full_like(p._data, fill)
    return state


class RMSprop(Optimizer):
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False):
        self.check_hyperparameters("RMSprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                              momentum=momentum)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))

    def _update(self, group, params, grads):
        lr, alpha, eps, mom = group["lr"], group["alpha"], group["eps"], group["momentum"]
        for p, g in zip(params, grads):
            xp, dt = backend.get_array_module(p._data), p._data.dtype.type
            g = self._effective_grad(p, g, group["weight_decay"], group["maximize"])
            names = ["square_avg"] + (["momentum_buffer"] if mom > 0 else []) + \
                (["grad_avg"] if group["centered"] else [])
            state = _state(self, p, names)
            state["step"] += 1
            v = state["square_avg"]
            v *= dt(alpha)
            v += dt(1 - alpha) * g * g
            if group["centered"]:
                m = state["grad_avg"]
                m += dt(1 - alpha) * (g - m)   # PyTorch's lerp
                avg = xp.sqrt(v - m * m) + dt(eps)
            else:
                avg = xp.sqrt(v) + dt(eps)
            if mom > 0:
                b = state["momentum_buffer"]
                b *= dt(mom)
                b += g / avg
                p._data -= dt(lr) * b
            else:
                p._data -= dt(lr) * g / avg


class Adagrad(Optimizer):
    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False):
        self.check_hyperparameters("Adagrad", lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                              initial_accumulator_value=initial_accumulator_value, eps=eps)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize))

    def _update(self, group, params, grads):
        for p, g in zip(params, grads):
            xp, dt = backend.get_array_module(p._data), p._data.dtype.type
            g = self._effective_grad(p, g, group["weight_decay"], group["maximize"])
            state = _state(self, p, ["sum"], group["initial_accumulator_value"])
            state["step"] += 1
            clr = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
            s = state["sum"]
            s += g * g
            p._data -= dt(clr) * g / (xp.sqrt(s) + dt(group["eps"]))


class Adadelta(Optimizer):
    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False):
        self.check_hyperparameters("Adadelta", lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)
        if rho > 1:
            raise ValueError(f"Adadelta: rho must be in [0, 1], got {rho}")
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))

    def _update(self, group, params, grads):
        rho, eps = group["rho"], group["eps"]
        for p, g in zip(params, grads):
            xp, dt = backend.get_array_module(p._data), p._data.dtype.type
            g = self._effective_grad(p, g, group["weight_decay"], group["maximize"])
            state = _state(self, p, ["square_avg", "acc_delta"])
            state["step"] += 1
            v, u = state["square_avg"], state["acc_delta"]
            v *= dt(rho)
            v += dt(1 - rho) * g * g
            delta = xp.sqrt(u + dt(eps)) / xp.sqrt(v + dt(eps)) * g
            u *= dt(rho)
            u += dt(1 - rho) * delta * delta
            p._data -= dt(group["lr"]) * delta
