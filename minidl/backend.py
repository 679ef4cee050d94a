"""The array-module shim: every op is written once against ``xp``.

``xp`` is NumPy on the CPU and CuPy on the GPU. Nothing here imports CuPy
until a CUDA device is asked for, so a machine without it never pays for it.

Kernels (im2col, pooling, ...) are picked per array module by
:func:`kernels_for`, so op code never branches on ``xp is cupy``:

* ``xp is numpy`` and Numba usable -> ``minidl.kernels.cpu_numba``
* ``xp is numpy`` otherwise        -> ``minidl.kernels.cpu_numpy``
* ``xp is cupy``                   -> ``minidl.kernels.cuda_cupy``

Environment knobs: ``MINIDL_NUMBA=0`` forces the plain NumPy kernels;
``MINIDL_NUMBA_CACHE=0`` turns off Numba's on-disk cache (kernel development);
``MINIDL_NUM_THREADS=n`` calls ``set_num_threads(n)`` when minidl is imported.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import sys
import warnings

# Numba's OpenMP wait policy is chosen in minidl.kernels.cpu_numba, before its
# first parallel kernel. OpenBLAS's workers, when it runs threaded (minidl holds
# NumPy's OpenBLAS to one thread when it can split the GEMMs itself, see
# minidl.kernels.cpu_blas), spin for 2**28 cycles (about 0.1 s) after each GEMM,
# and the im2col or pooling kernel that follows then shares its cores with
# them: 2**4 makes them sleep at once (A/B on 2 cores: a training step 15-20 %
# faster, inference 1.5x). OpenBLAS reads it once, when NumPy loads it, so it
# applies only when minidl is imported before NumPy (or when the variable is
# set in the environment); a user's setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# Numba sizes its pool from NUMBA_NUM_THREADS alone: with only OMP_NUM_THREADS set
# (which BLAS follows, and get_num_threads() reports), Numba's kernels would still
# run on every core. Numba is imported lazily, after this; a user's setting wins.
def _env_threads(var):
    """A positive thread count from the environment variable ``var``, or None."""
    value = os.environ.get(var, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


if (_omp_threads := _env_threads("OMP_NUM_THREADS")) and "NUMBA_NUM_THREADS" not in os.environ:
    os.environ["NUMBA_NUM_THREADS"] = str(_omp_threads)

import numpy as np  # noqa: E402


def _tune_glibc_malloc():
    """Keep large temporaries on the heap rather than in fresh mmaps.

    glibc serves big allocations (above an adaptive threshold, 128 KiB at
    start) with mmap and unmaps them on free, so each step's multi-megabyte
    activations fault their pages in again; and the threshold adapts to the
    history, so a run's speed depended on which batch size came first (seed
    model, batch 64: 8,400 img/s after a batch-32 run, 10,300 before one).
    Fixing the thresholds (32 MiB, glibc's largest, and a 256 MiB trim) made
    every batch size 20-50 % faster and did not raise peak memory.
    ``MINIDL_MALLOC_TUNING=0``, or the user's own ``MALLOC_*_THRESHOLD_``, keeps
    glibc's defaults; other platforms are left alone.
    """
    if os.environ.get("MINIDL_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):   # not glibc (musl, ...)
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    mallopt(M_TRIM_THRESHOLD, 256 * 2**20)


_tune_glibc_malloc()

_cupy = None            # the cupy module once imported and checked
_MODULES = sys.modules  # "cupy" in it: someone imported CuPy (a dict lookup, no attribute)
_cuda_error = None      # why CUDA is unusable, once known
_use_numba = os.environ.get("MINIDL_NUMBA", "1") != "0"
_numba_ok = None        # whether numba imports (checked lazily)

DEVICES = ("cpu", "cuda")


class DeviceError(RuntimeError):
    """Raised when a device is unavailable or tensors of two devices meet."""


# --------------------------------------------------------------------- CUDA

def _load_cupy():
    """Import CuPy and check a GPU really exists; raise a DeviceError if not."""
    global _cupy, _cuda_error
    if _cupy is not None:
        return _cupy
    if _cuda_error is not None:
        raise DeviceError(_cuda_error)
    try:
        import cupy
    except ImportError as exc:
        _cuda_error = (
            f"device 'cuda' needs CuPy, which is not installed ({exc}). "
            "Install it with: pip install 'minidl[gpu]'  (CuPy for CUDA 12)")
        raise DeviceError(_cuda_error) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        count, why = 0, f" ({type(exc).__name__}: {exc})"
    else:
        why = ""
    if count == 0:
        _cuda_error = ("device 'cuda' was asked for: CuPy is installed but no "
                       f"CUDA GPU is visible{why}. Use device='cpu', or check "
                       "the NVIDIA driver and CUDA_VISIBLE_DEVICES.")
        raise DeviceError(_cuda_error)
    _cupy = cupy
    return cupy


def cuda_is_available() -> bool:
    """True when CuPy imports and at least one GPU is visible."""
    try:
        _load_cupy()
    except DeviceError:
        return False
    return True


def cupy_module():
    """The CuPy module if minidl or the user has loaded it, else None (never
    imports it). A CuPy array made by the user's own ``import cupy`` before
    minidl asked for CUDA is recognised too: minidl then takes CuPy up."""
    if _cupy is not None:
        return _cupy
    mod = _MODULES.get("cupy")
    if mod is not None and _cuda_error is None and isinstance(getattr(mod, "ndarray", None), type):
        try:
            return _load_cupy()
        except DeviceError:
            return None
    return None


def _cupy_array_type():
    """CuPy's ndarray class, or None while nobody has imported CuPy (the CPU
    path's cost: one dict lookup)."""
    if _cupy is not None:
        return _cupy.ndarray
    if "cupy" not in _MODULES:
        return None
    cp = cupy_module()
    return None if cp is None else cp.ndarray


def is_cuda_array(array) -> bool:
    """Whether ``array`` is a CuPy array (False without CuPy; never imports it)."""
    if _cupy is not None:
        return isinstance(array, _cupy.ndarray)
    t = _cupy_array_type()
    return t is not None and isinstance(array, t)


_constants = {}


def device_constant(xp, key, build):
    """A device copy of the host array ``build()`` made once per (GPU, ``key``)
    and kept: constants used every step (a Python scalar operand, a pooling
    divisor) then cost no host-to-device copy after the first. The array is
    shared: callers never write into it. On the CPU, ``build()`` itself."""
    if xp is np:
        return build()
    full_key = (xp.cuda.runtime.getDevice(), key)
    array = _constants.get(full_key)
    if array is None:
        if len(_constants) > 4096:   # bounded: keys that never repeat (NaN) cannot grow it
            _constants.clear()
        array = _constants[full_key] = xp.asarray(build())
    return array


# ----------------------------------------------------------------- dispatch

def get_array_module(*arrays):
    """``numpy`` or ``cupy``: the module that owns the given arrays.

    Raises DeviceError when CPU and GPU arrays are mixed.
    """
    if _cupy is None and "cupy" not in _MODULES:    # the CPU path
        return np
    cp_array = _cupy_array_type()
    if cp_array is None:
        return np
    xp = None
    for a in arrays:
        if a is None or np.isscalar(a):
            continue
        m = _cupy if isinstance(a, cp_array) else np
        if xp is None:
            xp = m
        elif m is not xp:
            raise DeviceError("arrays on two devices were mixed: 'cpu' and 'cuda'")
    return xp or np


def device_of(array) -> str:
    """'cpu' or 'cuda' for a raw array."""
    if _cupy is None and "cupy" not in _MODULES:
        return "cpu"
    return "cuda" if is_cuda_array(array) else "cpu"


class Device(str):
    """PyTorch's ``torch.device(...)``: the device name ('cpu' or 'cuda', which every
    ``to()`` and factory takes) with ``.type`` and ``.index`` ('cuda:1' -> 'cuda', 1)."""

    def __new__(cls, spec="cpu"):
        self = super().__new__(cls, parse_device(spec))
        if isinstance(spec, Device):
            self.index = spec.index
        else:
            tail = str(spec).partition(":")[2]
            self.index = int(tail) if tail.isdigit() else None
        return self

    @property
    def type(self):
        return str(self)


def parse_device(device) -> str:
    """Normalise 'cpu', 'cuda', 'cuda:0' or a Device to 'cpu' or 'cuda'."""
    name = str(device).split(":")[0] if device is not None else "cpu"
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {DEVICES}")
    return name


def to_device(array, device):
    """Return ``array`` on ``device`` ('cpu', 'cuda' or 'cuda:i'), copying only if
    needed (an array on another GPU than 'cuda:i' is copied there; plain 'cuda'
    means the current GPU, and takes an array on any GPU as it is)."""
    if parse_device(device) == "cuda":
        index = Device(device).index
        cp = _load_cupy()
        if isinstance(array, cp.ndarray) and (index is None or array.device.id == index):
            return array
        if index is not None and not 0 <= index < cp.cuda.runtime.getDeviceCount():
            raise DeviceError(f"device 'cuda:{index}' was asked for, but only "
                              f"{cp.cuda.runtime.getDeviceCount()} GPU(s) are visible")
        with cp.cuda.Device(index if index is not None else cp.cuda.runtime.getDevice()):
            if isinstance(array, cp.ndarray):
                return array.copy()    # CuPy copies across GPUs (peer access or the host)
            return cp.asarray(array)
    return as_numpy(array)


_deferred = []   # [device bool flag, message]: an error found on the GPU, not yet read


def defer_error(flag, message):
    """Note a device-side 0-d bool ``flag`` whose truth is an IndexError(message),
    without waiting for the GPU; flags of later steps are or-ed in (one tiny
    kernel). :func:`raise_deferred` reads it when a value is read back anyway."""
    if _deferred:
        _deferred[0] = _deferred[0] | flag
    else:
        _deferred[:] = [flag, message]


def raise_deferred():
    """Raise the error :func:`defer_error` noted, if its flag is true."""
    if _deferred:
        flag, message = _deferred
        _deferred.clear()
        if bool(flag):
            raise IndexError(message)


def as_numpy(array):
    """A NumPy view or copy of a raw array from any device."""
    if is_cuda_array(array):
        raise_deferred()
        return cupy_module().asnumpy(array)
    return np.asarray(array)


def xp_for(device):
    """The array module of a device name."""
    return _load_cupy() if parse_device(device) == "cuda" else np


# ------------------------------------------------------------------ kernels

def numba_available() -> bool:
    global _numba_ok
    if _numba_ok is None:
        _numba_ok = importlib.util.find_spec("numba") is not None
    return _numba_ok


def numba_enabled() -> bool:
    """Whether CPU ops use the Numba kernels (MINIDL_NUMBA=0 turns them off)."""
    return _use_numba and numba_available()


def set_numba_enabled(flag: bool) -> None:
    global _use_numba
    _use_numba = bool(flag)


@contextlib.contextmanager
def use_numba(flag: bool):
    """Temporarily select the Numba (True) or plain NumPy (False) CPU kernels."""
    old = _use_numba
    set_numba_enabled(flag)
    try:
        yield
    finally:
        set_numba_enabled(old)


def kernels_for(xp):
    """The kernel module for an array module (see the module docstring)."""
    if xp is np:
        if numba_enabled():
            from .kernels import cpu_numba
            return cpu_numba
        from .kernels import cpu_numpy
        return cpu_numpy
    from .kernels import cuda_cupy
    return cuda_cupy


# ------------------------------------------------------------------ threads

_num_threads = None


def _default_threads() -> int:
    for var in ("MINIDL_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        if (n := _env_threads(var)):
            return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def get_num_threads() -> int:
    return _num_threads or _default_threads()


def set_num_threads(n: int | None = None) -> int:
    """Set the threads of Numba kernels and, where threadpoolctl is present, BLAS.

    One knob for both so they never oversubscribe the cores. ``None`` means
    the default: ``MINIDL_NUM_THREADS``, ``NUMBA_NUM_THREADS`` or
    ``OMP_NUM_THREADS`` (the first set), else the usable cores. Numba's pool
    cannot grow past the size it started with (``NUMBA_NUM_THREADS``, by
    default the cores): asking for more warns, and Numba keeps that size.
    """
    global _num_threads
    n = _default_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: expected a positive count, got {n}")
    _num_threads = n
    if numba_available():
        import numba
        limit = numba.config.NUMBA_NUM_THREADS
        if n > limit:
            warnings.warn(f"set_num_threads({n}): Numba's pool started with {limit} threads "
                          f"(NUMBA_NUM_THREADS, read when Numba is imported); its kernels "
                          f"use {limit}, BLAS {n}", RuntimeWarning, stacklevel=2)
        numba.set_num_threads(min(n, limit))
    try:
        import threadpoolctl
    except ImportError:
        pass
    else:
        threadpoolctl.threadpool_limits(n)
    if numba_enabled():   # the Numba kernels split the GEMMs: BLAS on one thread each
        from .kernels import cpu_blas
        cpu_blas.limit_blas_threads()
    return n


if os.environ.get("MINIDL_NUM_THREADS"):
    # Applied now: read only by get_num_threads(), it would report a count
    # the pools are not using.
    try:
        set_num_threads(int(os.environ["MINIDL_NUM_THREADS"]))
    except ValueError:
        raise ValueError(f"MINIDL_NUM_THREADS must be a positive integer, got "
                         f"{os.environ['MINIDL_NUM_THREADS']!r}") from None


def scatter_add(target, key, values):
    """``target[key] += values`` in place, repeated indices accumulating."""
    if is_cuda_array(target):
        import cupyx
        cupyx.scatter_add(target, key, values)
    else:
        np.add.at(target, key, values)
