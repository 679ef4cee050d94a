"""Module, Parameter and the containers (Sequential, ModuleList, ModuleDict), as PyTorch's.

A Module registers what is assigned to it: a :class:`Parameter` goes to
``_parameters``, a Module to ``_modules``, a tensor named by
:meth:`Module.register_buffer` to ``_buffers``. Names, traversal order and
the state-dict layout follow PyTorch, so a state dict converts one to one.

Every submodule knows its dotted path in the tree (``features.0``), so a
layer given bad input names itself: ``Linear 'classifier.1' (in_features=
784, ...) expected input (*, 784), got (64, 100)``.
"""
from __future__ import annotations

import operator
from collections import OrderedDict

import numpy as np

from .. import backend
from ..precision import HALF_DTYPES
from ..tensor import Tensor, clear_grad, raw


class Parameter(Tensor):
    """A Tensor that a Module registers as a learnable parameter (requires grad)."""

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            data = np.empty(0, dtype=np.float32)
        super().__init__(data, requires_grad=requires_grad)   # a Tensor's array is shared

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


def _pretty_shape(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


class Module:
    """Base class of every layer and model; subclasses define ``forward``."""

    training: bool

    def __init__(self):
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_path", "")

    # ------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(f"cannot assign {type(value).__name__} '{name}' before "
                                     f"Module.__init__() call (call super().__init__() first)")
            object.__setattr__(self, name, value)
            return
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            self._drop(name, keep=params)
            params[name] = value
        elif name in params:   # before modules, as PyTorch: a layer cannot replace a weight
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter '{name}' "
                                "(nn.Parameter or None expected)")
            params[name] = None
        elif isinstance(value, Module):
            self._drop(name, keep=modules)
            modules[name] = value
            value._set_path(self._child_path(name))
        elif name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer '{name}' "
                                "(Tensor or None expected)")
            buffers[name] = value
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module "
                                f"'{name}' (Module or None expected)")
            modules[name] = None
        else:
            self._drop(name)
            object.__setattr__(self, name, value)

    def _drop(self, name, keep=None):
        """Forget ``name`` in every registry but ``keep`` (and as a plain attribute).

        The registry being assigned to is left alone: assigning to an existing
        key of an ordered dict keeps the key's position, so replacing a
        parameter, buffer or submodule does not move it to the end of
        ``parameters()``, ``state_dict()`` or a container, as in PyTorch."""
        for registry in (self._parameters, self._buffers, self._modules):
            if registry is not keep:
                registry.pop(name, None)
        if keep is not self._buffers:
            self._non_persistent.discard(name)
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        # Only called when normal lookup fails.
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            if key in d and name in d[key]:
                return d[key][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        if name in self._parameters or name in self._buffers or name in self._modules:
            self._drop(name)
        else:
            object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    def _child_path(self, name):
        return f"{self._path}.{name}" if self._path else name

    def _set_path(self, path):
        object.__setattr__(self, "_path", path)
        for name, child in self._modules.items():
            if child is not None:
                child._set_path(f"{path}.{name}")

    def _check_new_name(self, method, name, registry):
        """PyTorch's checks on a name registered by ``method`` into ``registry``."""
        if not isinstance(name, str):
            raise TypeError(f"{method}: the name must be a str, got {type(name).__name__}")
        if not name or "." in name:
            raise KeyError(f"{method}: the name {name!r} must be non-empty and contain no "
                           "'.' (dots separate the levels of state_dict keys)")
        if name not in registry and hasattr(self, name):
            # e.g. a buffer named like a parameter would take it out of parameters()
            raise KeyError(f"{method}: attribute '{name}' already exists")

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: '{name}' must be a Parameter or None, got "
                            f"{type(param).__name__}")
        self._check_new_name("register_parameter", name, self._parameters)
        self._drop(name, keep=self._parameters)
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """A tensor that is state but not learnable (running statistics)."""
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(tensor)
        self._check_new_name("register_buffer", name, self._buffers)
        self._drop(name, keep=self._buffers)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: '{name}' must be a Module, got {type(module).__name__}")
        self._check_new_name("add_module", name, self._modules)
        self._drop(name, keep=self._modules)
        self._modules[name] = module
        if module is not None:
            module._set_path(self._child_path(name))

    register_module = add_module

    # --------------------------------------------------------- traversal
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """(dotted name, module) for self and every descendant, depth first.

        A module registered under several names is yielded once, under its
        first name, unless ``remove_duplicate=False`` (what ``state_dict`` uses,
        so a shared submodule is saved under every name, as in PyTorch)."""
        if remove_duplicate:
            memo = set() if memo is None else memo
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name,
                                               remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        for _, child in self.named_children():
            yield child

    def _named_members(self, attr, recurse=True):
        seen = set()
        modules = self.named_modules() if recurse else [("", self)]
        for prefix, module in modules:
            for name, value in getattr(module, attr).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{prefix}.{name}" if prefix else name), value

    def named_parameters(self, prefix="", recurse=True):
        for name, p in self._named_members("_parameters", recurse):
            yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        for name, b in self._named_members("_buffers", recurse):
            yield (f"{prefix}.{name}" if prefix else name), b

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # -------------------------------------------------------------- modes
    def train(self, mode=True):
        # Each child's own train() is called (not its flag set directly), so a
        # subclass that overrides train(), such as a frozen BatchNorm, is respected.
        object.__setattr__(self, "training", bool(mode))
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            clear_grad(p, set_to_none)

    # ------------------------------------------------------------ devices
    def to(self, device=None, dtype=None):
        """Move (and/or cast) parameters and buffers in place, returning self.

        The Parameter objects stay the same, only their arrays change, so an
        optimizer built before ``to()`` keeps working."""
        if isinstance(device, (type, np.dtype)):
            device, dtype = None, device
        if dtype is not None and np.dtype(dtype).kind not in "fc" and \
                np.dtype(dtype) not in HALF_DTYPES:
            raise TypeError(f"{type(self).__name__}.to: only floating dtypes are accepted, got "
                            f"{np.dtype(dtype)} (parameters must stay differentiable)")
        if device is not None:
            backend.parse_device(device)
        for t in list(self.parameters()) + list(self.buffers()):
            data = t._data
            if device is not None:
                data = backend.to_device(data, device)
            if dtype is not None and (data.dtype.kind == "f" or data.dtype in HALF_DTYPES):
                data = data.astype(dtype, copy=False)
            t._data = data
            if t.grad is not None:
                g = t.grad._data
                if device is not None:
                    g = backend.to_device(g, device)
                t.grad = Tensor._wrap(g.astype(data.dtype, copy=False))
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    # -------------------------------------------------------- state dicts
    def state_dict(self, destination=None, prefix="", keep_vars=False):
        """name -> Tensor for every parameter and persistent buffer (arrays shared)."""
        out = OrderedDict() if destination is None else destination
        modules = self.named_modules(prefix=prefix.rstrip("."), remove_duplicate=False)
        for mod_prefix, module in modules:
            p = f"{mod_prefix}." if mod_prefix else ""
            for name, param in module._parameters.items():
                if param is not None:
                    out[p + name] = param if keep_vars else Tensor._wrap(param._data)
            for name, buf in module._buffers.items():
                if buf is not None and name not in module._non_persistent:
                    out[p + name] = buf if keep_vars else Tensor._wrap(buf._data)
        return out

    def _state_targets(self):
        targets = OrderedDict()
        for mod_prefix, module in self.named_modules(remove_duplicate=False):
            p = f"{mod_prefix}." if mod_prefix else ""
            for name, param in module._parameters.items():
                if param is not None:
                    targets[p + name] = param
            for name, buf in module._buffers.items():
                if buf is not None and name not in module._non_persistent:
                    targets[p + name] = buf
        return targets

    def load_state_dict(self, state_dict, strict=True):
        """Copy ``state_dict`` (name -> Tensor or array) into this module in place.

        Missing, unexpected and wrong-shaped keys are all named. With
        ``strict=True`` any of them raises RuntimeError and nothing is
        changed. With ``strict=False`` the keys that match are loaded and the
        rest reported: the result is ``(missing_keys, unexpected_keys)`` as in
        PyTorch, plus ``result.mismatched_keys`` listing the wrong-shaped ones
        (skipped; PyTorch raises for those even when not strict).
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict: expected a dict of name -> tensor, got "
                            f"{type(state_dict).__name__}")
        targets = self._state_targets()
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        wrong = []
        arrays = {}
        for key, target in targets.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            array = raw(value)
            if not hasattr(array, "shape"):
                array = np.asarray(array)
            if tuple(array.shape) != tuple(target._data.shape) and array.size == 1 == \
                    target._data.size and len(array.shape) + len(target._data.shape) == 1:
                array = array.reshape(target._data.shape)   # () vs (1,): a scalar either way
            if tuple(array.shape) != tuple(target._data.shape):
                wrong.append(f"{key}: checkpoint shape {_pretty_shape(array.shape)}, model shape "
                             f"{_pretty_shape(target._data.shape)}")
                continue
            arrays[key] = array
        name = type(self).__name__
        if strict and (missing or unexpected or wrong):
            lines = []
            if missing:
                lines.append("missing keys: " + ", ".join(missing))
            if unexpected:
                lines.append("unexpected keys: " + ", ".join(unexpected))
            if wrong:
                lines.append("wrong shapes: " + "; ".join(wrong))
            raise RuntimeError(f"Error(s) in loading state_dict for {name} (the model was not "
                               "changed):\n  " + "\n  ".join(lines))
        for key, array in arrays.items():
            target = targets[key]
            xp = backend.get_array_module(target._data)
            src = backend.to_device(array, target.device)
            if getattr(getattr(target._data, "flags", None), "writeable", True):
                xp.copyto(target._data, src.astype(target._data.dtype, copy=False))
            else:
                target._data = src.astype(target._data.dtype, copy=True)
        return _IncompatibleKeys(missing, unexpected, [w.split(":")[0] for w in wrong])

    # ------------------------------------------------------------ calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---------------------------------------------------------- messages
    def _label(self):
        """'Linear 'fc1' (in_features=3, ...)' for error messages."""
        where = f" '{self._path}'" if self._path else ""
        extra = self.extra_repr()
        return f"{type(self).__name__}{where}" + (f" ({extra})" if extra else "")

    def _bad_input(self, expected, x):
        shape = _pretty_shape(x.shape) if hasattr(x, "shape") else type(x).__name__
        return ValueError(f"{self._label()}: expected input {expected}, got {shape}")

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = []
        extra = self.extra_repr()
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        if not lines:
            return f"{type(self).__name__}({extra})"
        if extra:
            lines.insert(0, extra)
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


class _IncompatibleKeys(tuple):
    """(missing_keys, unexpected_keys), also as attributes."""

    def __new__(cls, missing, unexpected, mismatched=()):
        self = super().__new__(cls, (missing, unexpected))
        self.mismatched_keys = list(mismatched)
        return self

    missing_keys = property(lambda self: self[0])
    unexpected_keys = property(lambda self: self[1])

    def __repr__(self):
        if not self[0] and not self[1] and not self.mismatched_keys:
            return "<All keys matched successfully>"
        return (f"_IncompatibleKeys(missing_keys={self[0]}, unexpected_keys={self[1]}, "
                f"mismatched_keys={self.mismatched_keys})")


class _ModuleSequence(Module):
    """What Sequential and ModuleList share: children kept in order, added by
    ``append``/``extend``/``insert`` and taken out by ``pop``; children added this
    way are named "0", "1", ... by position and renumbered as PyTorch's."""

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def _position(self, op, index, inserting=False):
        """``index`` (negative counts from the end) as a position, as PyTorch's:
        inserting, -len <= index <= len (len appends)."""
        n = len(self)
        index = operator.index(index)
        if not -n <= index < n + inserting:
            raise IndexError(f"{type(self).__name__}.{op}: index {index} is out of range for "
                             f"{n} modules")
        return index + n if index < 0 else index

    def __setitem__(self, idx, module):
        """Replace the child at position ``idx`` (negative counts from the end),
        keeping its name, as PyTorch's ``seq[i] = module``."""
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: expected a Module to assign, got "
                            f"{type(module).__name__}")
        key = list(self._modules)[self._position("__setitem__", idx)]
        self.add_module(key, module)

    def _renumber(self, modules):
        """Make ``modules`` the children "0", "1", ... in that order."""
        for key in list(self._modules):
            self._drop(key)
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def _insert(self, index, module):
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.insert: expected a Module, got "
                            f"{type(module).__name__}")
        modules = list(self._modules.values())
        modules.insert(self._position("insert", index, inserting=True), module)
        self._renumber(modules)

    def pop(self, index=-1):
        modules = list(self._modules.values())
        module = modules.pop(self._position("pop", index))
        self._renumber(modules)
        return module

    def __delitem__(self, index):
        """``del seq[i]`` or ``del seq[a:b]``; the rest are renumbered, as PyTorch's."""
        modules = list(self._modules.values())
        if isinstance(index, slice):
            del modules[index]
        else:
            del modules[self._position("__delitem__", index)]
        self._renumber(modules)


class Sequential(_ModuleSequence):
    """Modules applied in order; ``Sequential(a, b)`` or ``Sequential(OrderedDict(...))``."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        keys = list(self._modules)
        return self._modules[keys[idx]]

    def insert(self, index, module):
        self._insert(index, module)
        return self


class ModuleList(_ModuleSequence):
    """A list of modules, registered so their parameters are found."""

    def __init__(self, modules=None):
        super().__init__()
        for m in modules or []:
            self.append(m)

    def insert(self, index, module):
        self._insert(index, module)

    def __getitem__(self, idx):
        values = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(values[idx])
        return values[idx]


class ModuleDict(Module):
    """Modules by name, registered so their parameters are found; ordered by
    insertion, as ``torch.nn.ModuleDict``. Keys are the child names, so they
    follow :meth:`Module.add_module`'s rules (non-empty str, no '.')."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        if key not in self._modules:
            raise KeyError(f"ModuleDict: no module named {key!r}; it has {list(self._modules)}")
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __delitem__(self, key):
        self[key]   # a clear KeyError for a missing key
        self._drop(key)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key):
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

    def pop(self, key):
        module = self[key]
        del self[key]
        return module

    def clear(self):
        for key in list(self._modules):
            del self[key]

    def update(self, modules):
        """Add (or replace) modules from a mapping or an iterable of (name, module) pairs."""
        if hasattr(modules, "items"):
            pairs = modules.items()
        else:
            pairs = []
            for i, pair in enumerate(modules):
                if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                    raise TypeError(f"ModuleDict.update: element {i} should be a (name, "
                                    f"module) pair, got {pair!r}")
                pairs.append(pair)
        for key, module in pairs:
            self[key] = module
