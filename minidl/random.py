"""The framework's own random state, seeded by :func:`manual_seed`.

Every random draw in minidl (initialisation, dropout, shuffling, augmentation,
Numba kernels that draw) comes from here, never from NumPy's global state,
so ``manual_seed(n)`` makes a run reproducible without touching the user's
own use of ``numpy.random``.
"""
from __future__ import annotations

import numpy as np

_seed = None
_generator = np.random.default_rng()
_cuda_generator = None
_cuda_module = None     # the array module (CuPy) _cuda_generator belongs to
_cuda_seed = None       # what _cuda_generator was last (re)seeded with by get/set_rng_state


def manual_seed(seed: int) -> np.random.Generator:
    """Seed every random source minidl uses; returns the CPU generator."""
    global _seed, _generator, _cuda_generator, _cuda_seed
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"manual_seed: expected a non-negative seed, got {seed}")
    _seed = seed
    # Reseed the generator in place: a handle taken earlier (default_generator(),
    # a DataLoader's generator=) follows the new seed too.
    _generator.bit_generator.state = np.random.PCG64(seed).state
    _cuda_generator = _cuda_seed = None  # re-created from the new seed on first use
    from . import backend
    if backend.numba_enabled():
        # Numba keeps its own per-thread state for np.random inside kernels.
        # The Numba kernels may be absent or still unimportable (they are
        # optional); seeding must never fail because of them.
        try:
            from .kernels import cpu_numba
        except ImportError:
            cpu_numba = None
        if hasattr(cpu_numba, "seed"):
            cpu_numba.seed(seed)
    return _generator


def default_generator() -> np.random.Generator:
    """The CPU generator every minidl random draw uses."""
    return _generator


def generator_for(xp):
    """A generator for the array module ``xp`` (NumPy's, or CuPy's on GPU)."""
    global _cuda_generator, _cuda_module
    if xp is np:
        return _generator
    if _cuda_generator is None:
        seed = _cuda_seed
        if seed is None:
            seed = _seed if _seed is not None else int(_generator.integers(2**63))
        _cuda_generator, _cuda_module = xp.random.default_rng(seed), xp
    return _cuda_generator


def get_rng_state() -> dict:
    """The generator state, as a JSON-able dict (for checkpoints).

    CuPy's generator state cannot be read out; when it is in use, it is
    reseeded here from its own next draw, and that seed is the state: the run
    that goes on and a run resumed from this state draw the same numbers."""
    global _cuda_generator, _cuda_seed
    state = {"seed": _seed, "bit_generator": _generator.bit_generator.state}
    if _cuda_generator is not None:
        _cuda_seed = int(_cuda_generator.integers(0, 2**63 - 1, size=1)[0])
        _cuda_generator = _cuda_module.random.default_rng(_cuda_seed)
    if _cuda_seed is not None:
        state["cuda_seed"] = _cuda_seed
    return state


def set_rng_state(state: dict) -> None:
    """Restore a state from :func:`get_rng_state`."""
    global _seed, _cuda_generator, _cuda_seed
    _seed = state.get("seed")
    _generator.bit_generator.state = state["bit_generator"]
    _cuda_seed = state.get("cuda_seed")
    _cuda_generator = None   # re-created from cuda_seed (or the seed) on first use
