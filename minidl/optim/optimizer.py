"""The Optimizer base: param groups, per-parameter state, zero_grad, state dicts.

Subclasses implement ``_update(group, params, grads)``, one rule for the
whole family, applied in place to the parameter arrays. Per-parameter
state (momentum, moments) lives in ``self.state[param]`` and is allocated
on the first step; scratch arrays (``self._scratch``) likewise, so a step
allocates nothing after the first. Gradient arrays are only read.

``state_dict()`` has PyTorch's layout: ``{'state': {index: {...}},
'param_groups': [{..., 'params': [indices]}]}``.
"""
from __future__ import annotations

import copy
import math
import numbers

from .. import backend
from ..tensor import Tensor, clear_grad, no_grad, raw


def check_hyperparameters(op, **values):
    """Each of ``values`` (lr, eps, momentum...) a finite real number >= 0, else a
    ValueError naming it (a string lr, NaN or a negative value never reach a step)."""
    for name, value in values.items():
        if isinstance(value, Tensor):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__} "
                            f"{value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{op}: {name} must be a finite number >= 0, got {value!r}")


class Optimizer:
    # subclasses check their arguments with it before comparing them
    check_hyperparameters = staticmethod(check_hyperparameters)

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}
        self._scratch = {}
        self.param_groups = []
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    def add_param_group(self, group):
        group = dict(group)
        ps = group["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        for p in ps:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: parameters must be Tensors, got "
                                f"{type(p).__name__}")
        # Frozen parameters (requires_grad=False) are accepted, as in PyTorch: they never
        # get a gradient, and step() skips every parameter whose grad is None.
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in ps):
            raise ValueError(f"{type(self).__name__}: a parameter appears in two param groups")
        group["params"] = ps
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        # a group's own lr="0.1" or nan is as wrong as a default one
        check_hyperparameters(type(self).__name__, **{
            k: group[k] for k in ("lr", "eps", "weight_decay", "momentum") if k in group})
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        for group in self.param_groups:
            for p in group["params"]:
                clear_grad(p, set_to_none)

    @no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            from ..tensor import enable_grad
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params, [p.grad._data for p in params])
        return loss

    def _update(self, group, params, grads):
        raise NotImplementedError

    def _buffer(self, p, name, like=None):
        """Per-parameter scratch array (not saved), allocated once."""
        slot = self._scratch.setdefault(id(p), {})
        buf = slot.get(name)
        data = p._data if like is None else like
        if buf is None or buf.shape != data.shape or buf.dtype != data.dtype or \
                backend.device_of(buf) != backend.device_of(data):
            buf = slot[name] = backend.get_array_module(data).empty_like(data)
        return buf

    def _effective_grad(self, p, g, weight_decay, maximize):
        """The gradient the update uses: ``g`` itself, or ``weight_decay * p + g``
        (``- g`` when maximizing) in a scratch array; ``g`` is never written.
        Built in one array in one pass: negating into it first and then writing
        the decay term there would discard the gradient."""
        if not (weight_decay or maximize):
            return g
        xp, dt = backend.get_array_module(p._data), p._data.dtype.type
        out = self._buffer(p, "effective_grad")
        if weight_decay:
            xp.multiply(p._data, dt(weight_decay), out=out)
            (xp.subtract if maximize else xp.add)(out, g, out=out)
        else:
            xp.negative(g, out=out)
        return out

    # ------------------------------------------------------ state dicts
    def state_dict(self):
        index = {}
        groups = []
        for group in self.param_groups:
            g = {k: v for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            g["params"] = ids
            groups.append(g)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {k: (Tensor._wrap(v) if _is_array(v) else v)
                                           for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state has "
                             f"{len(groups)} param groups, the optimizer {len(self.param_groups)}")
        params = {}
        for saved, group in zip(groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{type(self).__name__}.load_state_dict: a param group has "
                                 f"{len(saved['params'])} parameters in the state but "
                                 f"{len(group['params'])} in the optimizer")
            for i, p in zip(saved["params"], group["params"]):
                params[int(i)] = p
        new_state = {}
        for key, values in state_dict["state"].items():
            p = params[int(key)]
            entry = {}
            for k, v in values.items():
                if isinstance(v, Tensor) or _is_array(v):
                    array = raw(v)
                    if k != "step" and tuple(array.shape) != tuple(p._data.shape):
                        raise ValueError(f"{type(self).__name__}.load_state_dict: state '{k}' of "
                                         f"parameter {key} has shape {tuple(array.shape)}, the "
                                         f"parameter {tuple(p._data.shape)}")
                    array = backend.to_device(array, p.device)
                    dtype = p._data.dtype if array.dtype.kind == "f" else array.dtype
                    v = array.astype(dtype, copy=True)
                entry[k] = v
            new_state[p] = entry
        self.state = new_state
        for saved, group in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    group[k] = copy.deepcopy(v)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(group):
                if k != "params":
                    lines.append(f"    {k}: {group[k]}")
        return "\n".join(lines) + "\n)"


def fused_kernel(p, g, name):
    """The backend's one-pass update kernel ``name`` for parameter p and its
    gradient array g, or None where the rule's array ops run instead (no such
    kernel: NumPy or CuPy; p, g or the state not contiguous in one dtype)."""
    kernel = getattr(backend.kernels_for(backend.get_array_module(p._data)), name, None)
    if kernel is None or g.dtype != p._data.dtype or p._data.dtype.kind != "f" or \
            not (p._data.flags.c_contiguous and g.flags.c_contiguous) or g.shape != p._data.shape:
        return None
    return kernel


def _is_array(v):
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, Tensor)
