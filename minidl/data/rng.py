"""Which ``numpy.random.Generator`` a data draw uses.

* an explicit ``generator=`` (or ``seed=``) given to the object wins;
* inside a DataLoader batch, random transforms draw from the loader's
  per-epoch augmentation stream (set thread-locally by :func:`using`), so a
  seeded run gives the same batches with or without background prefetch;
* otherwise the framework generator that ``minidl.manual_seed`` seeds: the
  shared one for orders, the per-rank one for augmentation (the same
  generator on one process; see :mod:`minidl.random`).
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

_local = threading.local()


def _framework(name) -> np.random.Generator:
    try:
        from .. import random
    except ImportError:  # minidl.random not there: an unseeded stream
        return np.random.default_rng()
    return getattr(random, name)()


def default_generator() -> np.random.Generator:
    """The framework generator (``minidl.random.default_generator()``)."""
    return _framework("default_generator")


def rank_generator() -> np.random.Generator:
    """The framework's per-rank stream (``minidl.random.rank_generator()``)."""
    return _framework("rank_generator")


def make_generator(generator=None, seed=None, where="") -> np.random.Generator | None:
    """``generator``, or a new one from ``seed``, or None (use the default)."""
    if generator is not None and seed is not None:
        raise ValueError(f"{where}: give generator= or seed=, not both")
    if seed is not None:
        return np.random.default_rng(seed)
    if generator is not None and not isinstance(generator, np.random.Generator):
        raise TypeError(f"{where}: generator must be a numpy.random.Generator, "
                        f"got {type(generator).__name__}")
    return generator


def current_generator() -> np.random.Generator:
    """The loader's augmentation stream inside a batch, else the rank stream."""
    return getattr(_local, "generator", None) or rank_generator()


@contextlib.contextmanager
def using(generator):
    """Make ``generator`` the :func:`current_generator` of this thread."""
    old = getattr(_local, "generator", None)
    _local.generator = generator
    try:
        yield generator
    finally:
        _local.generator = old
