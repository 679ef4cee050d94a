"""The framework's own random state, seeded by :func:`manual_seed`.

Every random draw in minidl (initialisation, dropout, shuffling, augmentation,
Numba kernels that draw) comes from here, never from NumPy's global state,
so ``manual_seed(n)`` makes a run reproducible without touching the user's
own use of ``numpy.random``.

Two streams: the default generator (initialisation, shuffles, ``rand``) and
:func:`rank_generator` (dropout, augmentation). On one process they are the
same generator. In a data-parallel run (:func:`minidl.distributed.init` with
N > 1 processes) the rank stream is a generator of its own, seeded from the
seed and the rank: every rank initialises and shuffles alike, while each
draws its own dropout masks and augmentations, as N processes on N shards of
one big batch would.
"""
from __future__ import annotations

import numpy as np

_seed = None
_generator = np.random.default_rng()
_cuda_generator = None
_cuda_module = None     # the array module (CuPy) _cuda_generator belongs to
_cuda_seed = None       # what _cuda_generator was last (re)seeded with by get/set_rng_state
_rank = None            # this process's rank in a data-parallel run (set by minidl.distributed)
_rank_generator = None  # its own stream; None on one process (then the default generator)


def _rank_state(seed, rank):
    """The rank stream's state for ``seed`` (None: fresh entropy) and ``rank``."""
    return np.random.PCG64(_rank_seed_sequence(seed, rank)).state


def _rank_seed_sequence(seed, rank):
    """Child ``rank`` of ``seed``'s SeedSequence (``SeedSequence.spawn``'s
    streams): independent of the shared stream, which is the parent's own.
    (Not ``SeedSequence([seed, rank])``: rank 0's trailing zero would give the
    parent's stream.)"""
    return np.random.SeedSequence(seed, spawn_key=(rank,))


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
    if _rank_generator is not None:
        _rank_generator.bit_generator.state = _rank_state(seed, _rank)
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


def rank_generator() -> np.random.Generator:
    """The CPU generator of per-rank draws (dropout, augmentation): the default
    generator on one process, a stream of this rank's own in a data-parallel run."""
    return _rank_generator or _generator


def set_rank(rank: int) -> None:
    """Give this process the rank stream of ``rank`` (``minidl.distributed.init``
    calls it in runs of several processes), seeded from the current seed."""
    global _rank, _rank_generator, _cuda_generator, _cuda_seed
    _rank = int(rank)
    _rank_generator = np.random.Generator(np.random.PCG64())
    _rank_generator.bit_generator.state = _rank_state(_seed, _rank)
    _cuda_generator = _cuda_seed = None   # re-created for this rank on first use


def generator_for(xp, per_rank=False):
    """A generator for the array module ``xp`` (NumPy's, or CuPy's on GPU);
    ``per_rank``: the stream of per-rank draws (see :func:`rank_generator`).

    On the GPU one generator serves both (its state cannot be read, so one seed
    is its state): in a data-parallel run it is seeded from the seed and the
    rank. Initialisation draws on the CPU, so it stays shared."""
    global _cuda_generator, _cuda_module
    if xp is np:
        return rank_generator() if per_rank else _generator
    if _cuda_generator is None:
        seed = _cuda_seed
        if seed is None:
            seed = _seed if _seed is not None else int(_generator.integers(2**63))
            if _rank is not None:
                seed = int(_rank_seed_sequence(seed, _rank).generate_state(1, np.uint64)[0])
        _cuda_generator, _cuda_module = xp.random.default_rng(seed), xp
    return _cuda_generator


def get_rng_state() -> dict:
    """The generator state, as a JSON-able dict (for checkpoints).

    CuPy's generator state cannot be read out; when it is in use, it is
    reseeded here from its own next draw, and that seed is the state: the run
    that goes on and a run resumed from this state draw the same numbers."""
    global _cuda_generator, _cuda_seed
    state = {"seed": _seed, "bit_generator": _generator.bit_generator.state}
    if _rank_generator is not None:
        state["rank"] = _rank
        state["rank_bit_generator"] = _rank_generator.bit_generator.state
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
    if _rank_generator is not None:
        if state.get("rank") == _rank and "rank_bit_generator" in state:
            _rank_generator.bit_generator.state = state["rank_bit_generator"]
        else:   # a state of another rank or of one process: this rank's stream of that seed
            _rank_generator.bit_generator.state = _rank_state(_seed, _rank)
    _cuda_seed = state.get("cuda_seed")
    _cuda_generator = None   # re-created from cuda_seed (or the seed) on first use
