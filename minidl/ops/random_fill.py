"""PyTorch's in-place random fills: ``t.normal_()``, ``t.uniform_()``, ``t.bernoulli_()``,
``t.exponential_()``, ``t.random_()``.

Draws come from minidl's CPU generator (``minidl.manual_seed``) unless a
``generator`` is given, and are copied to the tensor's device, as
:mod:`minidl.nn.init` does. Like every in-place update, they refuse a
tensor that takes part in a graph being recorded (use ``minidl.no_grad()``
or ``p.data``), as PyTorch does for a leaf that requires grad.
"""
from __future__ import annotations

import numpy as np

from .. import backend


def _fill(op, tensor, draw, generator):
    from . import _check_inplace
    from ..random import default_generator
    _check_inplace(op, tensor)
    values = draw(generator or default_generator(), tensor.shape)
    xp = backend.get_array_module(tensor._data)
    tensor._data[...] = xp.asarray(np.asarray(values).astype(tensor._data.dtype, copy=False))
    return tensor


def normal_(self, mean=0.0, std=1.0, *, generator=None):
    if std < 0:
        raise ValueError(f"normal_: std must be >= 0, got {std}")
    return _fill("normal_", self, lambda g, s: g.normal(mean, std, s), generator)


def uniform_(self, from_=0.0, to=1.0, *, generator=None):
    if from_ > to:
        raise ValueError(f"uniform_: expects from <= to, got from={from_}, to={to}")
    return _fill("uniform_", self, lambda g, s: g.uniform(from_, to, s), generator)


def bernoulli_(self, p=0.5, *, generator=None):
    p = backend.as_numpy(getattr(p, "_data", p))
    if np.any((p < 0) | (p > 1)):
        raise ValueError("bernoulli_: p must be in [0, 1]")
    return _fill("bernoulli_", self, lambda g, s: g.random(s) < p, generator)


def exponential_(self, lambd=1.0, *, generator=None):
    if lambd <= 0:
        raise ValueError(f"exponential_: lambd must be > 0, got {lambd}")
    return _fill("exponential_", self, lambda g, s: g.exponential(1.0 / lambd, s), generator)


def random_(self, from_=0, to=None, *, generator=None):
    """Integers uniform in [from_, to - 1] (``random_(to)``: [0, to - 1])."""
    if to is None:
        from_, to = 0, from_ if from_ else 2 ** 24
    if to <= from_:
        raise ValueError(f"random_: expects from < to, got from={from_}, to={to}")
    return _fill("random_", self, lambda g, s: g.integers(from_, to, s), generator)


def install(tensor_class):
    for fn in (normal_, uniform_, bernoulli_, exponential_, random_):
        setattr(tensor_class, fn.__name__, fn)
