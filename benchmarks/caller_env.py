"""The environment the benchmarks were started with, for the PyTorch side.

Importing minidl sets thread-pool variables (``OPENBLAS_THREAD_TIMEOUT``,
and ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY=PASSIVE``; see ``minidl.backend``
and ``minidl.kernels.cpu_numba``). PyTorch's own OpenMP runtime reads the
OpenMP ones when torch loads, and a passive wait made PyTorch's training step
15-40 % slower here, so a benchmark that let them leak would flatter minidl.
Import this module before minidl; call :func:`restore_thread_settings` before
importing torch.
"""
from __future__ import annotations

import os

CALLER_ENV = dict(os.environ)
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")


def torch_worker_env():
    """The caller's environment for a PyTorch worker process, without
    ``MINIDL_NUM_THREADS``: the worker imports minidl (to read the initial
    weights), and with that variable set the import would start Numba's
    passive OpenMP pool in the PyTorch process, which PyTorch then shares
    (slower, and Numba's memory counted as PyTorch's). The thread count
    reaches the worker as ``--threads``."""
    env = dict(CALLER_ENV)
    env.pop("MINIDL_NUM_THREADS", None)
    return env


def restore_thread_settings():
    """Put the thread variables back as the caller had them (PyTorch as its users run it)."""
    for var in THREAD_VARIABLES:
        if var in CALLER_ENV:
            os.environ[var] = CALLER_ENV[var]
        else:
            os.environ.pop(var, None)
