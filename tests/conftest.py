"""Shared test setup: the hypothesis profile, the ``gpu`` marker, a ``device``
fixture, and a few hypothesis strategies.

Other test files may import the strategies (``from conftest import shapes``);
keep this file small.
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cupy_standin  # noqa: E402

# Without the real CuPy, the strict stand-in plays it, so every gpu test runs
# (on the CPU: see tests/cupy_standin and the README's "GPU tests without a GPU").
CUPY_STANDIN = cupy_standin.install()

import minidl.backend  # noqa: E402

# Small, deterministic runs: the whole suite must stay fast on 2 cores, and a
# CI failure must reproduce. Tests raise max_examples where it pays.
settings.register_profile("minidl", max_examples=15, deadline=None, derandomize=True,
                          database=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("minidl")

# On a failure hypothesis imports its patch writer (libcst), which triggers a
# DeprecationWarning from mypy_extensions; under filterwarnings=error that
# replaces the real failure report by an INTERNALERROR. Import it once here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") and not minidl.backend.cuda_is_available():
        pytest.skip("needs CuPy and a CUDA GPU")


@pytest.fixture
def cupy_counters():
    """The stand-in's counters (device -> host transfers, kernel launches), reset;
    skips with the real CuPy, which has none."""
    if not CUPY_STANDIN:
        pytest.skip("counts transfers only through the CuPy stand-in")
    cupy_standin.reset_counters()
    return cupy_standin


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Run one test body on every backend (the cuda case skips without a GPU)."""
    return request.param


# ------------------------------------------------------------- strategies

def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    """Array shapes small enough for an element-by-element gradcheck."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcast_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3):
    """A tuple of ``num_shapes`` shapes that broadcast together."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, min_side=1,
        max_side=max_side).map(lambda bs: bs.input_shapes)


seeds = st.integers(0, 2**32 - 1)


def randn(seed, shape, low=None):
    """float64 normal samples; with ``low``, magnitudes kept at least ``low``
    (away from the kinks of abs/relu and from division by zero)."""
    x = np.random.default_rng(seed).standard_normal(shape)
    if low is not None:
        x = np.where(x >= 0, 1.0, -1.0) * (low + np.abs(x))
    return np.asarray(x)  # an array even for shape (): gradcheck treats floats as constants


def distinct(seed, shape, scale=0.1):
    """Shuffled distinct values ``scale`` apart: no ties for max/min/sort."""
    n = int(np.prod(shape, dtype=np.int64))
    values = (np.random.default_rng(seed).permutation(n) - n / 2) * scale
    return values.reshape(shape).astype(np.float64)
