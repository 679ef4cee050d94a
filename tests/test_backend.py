"""The array-module shim: devices, CUDA detection and its errors, Numba toggling.

GPU tests are marked ``gpu`` and skip unless ``minidl.backend.cuda_is_available()``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest

import minidl
from minidl import backend
from minidl.testing import gradcheck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, **env):
    """Run ``code`` in a fresh interpreter (import-time behaviour, env knobs; a
    variable given as None is removed)."""
    full_env = {**os.environ, "PYTHONPATH": ROOT, **env}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def fresh_cuda_state(monkeypatch):
    """Forget what the shim learnt about CUDA (restored after the test)."""
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cuda_error", None)
    return monkeypatch


def test_cuda_without_cupy_raises_device_error_with_install_hint(fresh_cuda_state):
    fresh_cuda_state.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    assert not backend.cuda_is_available()
    for make in (lambda: minidl.tensor([1.0]).to("cuda"),
                 lambda: minidl.zeros(2, device="cuda"),
                 lambda: minidl.tensor([1.0], device="cuda:0"),
                 lambda: minidl.randn(2, device="cuda")):
        with pytest.raises(backend.DeviceError, match=r"CuPy.*not installed.*pip install"):
            make()


def test_cupy_without_a_gpu_is_not_cuda(fresh_cuda_state):
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 0)))
    fresh_cuda_state.setitem(sys.modules, "cupy", fake)
    assert not backend.cuda_is_available()
    with pytest.raises(backend.DeviceError, match=r"CuPy is installed but no CUDA GPU"):
        minidl.ones(2).to("cuda")

    def broken():
        raise RuntimeError("cudaErrorInsufficientDriver")

    fresh_cuda_state.setattr(backend, "_cuda_error", None)
    fake.cuda.runtime.getDeviceCount = broken
    with pytest.raises(backend.DeviceError, match=r"no CUDA GPU.*InsufficientDriver"):
        backend.xp_for("cuda")


def test_device_names_and_dispatch():
    assert backend.parse_device("cuda:1") == "cuda"
    assert backend.parse_device(None) == "cpu"
    with pytest.raises(ValueError, match=r"unknown device.*'tpu'"):
        minidl.tensor([1.0]).to("tpu")
    assert backend.get_array_module(np.ones(2), None, 3.0) is np
    assert backend.device_of(np.ones(2)) == "cpu"
    assert backend.xp_for("cpu") is np


def test_importing_minidl_compiles_nothing_and_never_imports_cupy_or_torch():
    out = _python(
        "import sys, minidl\n"
        "compiled = [n for n, m in list(sys.modules.items()) if n.startswith('minidl')\n"
        "            for v in vars(m).values() if getattr(v, 'signatures', None)]\n"
        "print(compiled, 'cupy' in sys.modules, 'torch' in sys.modules)")
    assert out == "[] False False"


def test_minidl_numba_env_toggle():
    assert _python("import minidl.backend as b; print(b.numba_enabled())",
                   MINIDL_NUMBA="0") == "False"
    expected = str(backend.numba_available())
    assert _python("import minidl.backend as b; print(b.numba_enabled())",
                   MINIDL_NUMBA="1") == expected


@pytest.mark.skipif(not backend.numba_available(), reason="needs Numba")
def test_minidl_num_threads_is_applied_at_import():
    pytest.importorskip("threadpoolctl")
    out = _python("import minidl, numba, threadpoolctl\n"
                  "blas = {d['num_threads'] for d in threadpoolctl.threadpool_info()}\n"
                  "print(minidl.get_num_threads(), numba.get_num_threads(), sorted(blas))",
                  MINIDL_NUM_THREADS="1")
    assert out == "1 1 [1]"


@pytest.mark.skipif(not backend.numba_available(), reason="needs Numba")
def test_numba_kernels_hold_numpys_blas_to_one_thread():
    """With the GEMMs split over Numba's threads, NumPy's OpenBLAS runs one
    thread per call, through set_num_threads too; and the OpenMP workers spin
    briefly instead of sleeping at once (unless the user chose)."""
    pytest.importorskip("threadpoolctl")
    script = ("import os, minidl, numpy, threadpoolctl\n"
              "from minidl.kernels import cpu_blas, cpu_numba\n"
              "minidl.set_num_threads(2)\n"
              "blas = [d['num_threads'] for d in threadpoolctl.threadpool_info()\n"
              "        if d['user_api'] == 'blas']\n"
              "print(cpu_blas.available(), blas, os.environ.get('GOMP_SPINCOUNT'),\n"
              "      os.environ.get('OMP_WAIT_POLICY'))")
    out = _python(script, OMP_WAIT_POLICY=None, GOMP_SPINCOUNT=None)
    available = out.split()[0] == "True"
    assert out == ("True [1] 30000 None" if available else "False [2] None PASSIVE")
    out = _python(script, OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT=None)
    assert out.endswith("None PASSIVE")   # the user's choice stands


@pytest.mark.skipif(not backend.numba_available(), reason="needs Numba")
def test_omp_num_threads_alone_sizes_numbas_pool_too():
    # Regression: OMP_NUM_THREADS=1 gave BLAS 1 thread and get_num_threads() 1, while
    # Numba's kernels still ran on every core.
    out = _python("import minidl, numba\n"
                  "print(minidl.get_num_threads(), numba.get_num_threads())",
                  OMP_NUM_THREADS="1", MINIDL_NUM_THREADS=None, NUMBA_NUM_THREADS=None)
    assert out == "1 1"


def test_set_num_threads_beyond_numbas_pool_warns():
    if not backend.numba_available():
        pytest.skip("needs Numba")
    import numba
    before = minidl.get_num_threads()
    try:
        with pytest.warns(RuntimeWarning, match="Numba's pool started with"):
            minidl.set_num_threads(numba.config.NUMBA_NUM_THREADS + 1)
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        minidl.set_num_threads(before)


def test_use_numba_selects_the_kernel_module():
    from minidl.kernels import cpu_numpy
    with backend.use_numba(False):
        assert not backend.numba_enabled()
        assert backend.kernels_for(np) is cpu_numpy
    if not backend.numba_available():
        return
    with backend.use_numba(True):
        assert backend.numba_enabled()
        from minidl.kernels import cpu_numba   # with Numba present, it must import
        assert backend.kernels_for(np) is cpu_numba


def test_scatter_add_accumulates_repeated_indices():
    target = np.zeros(3)
    backend.scatter_add(target, np.array([0, 0, 2]), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(target, [3.0, 0.0, 3.0])


# ------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_cuda_round_trip_and_gradients():
    x = minidl.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True).to("cuda")
    assert x.device == "cuda" and x.requires_grad
    y = ((x * 2).exp().sum(axis=1) @ minidl.ones(2, dtype=np.float64, device="cuda"))
    y.backward()
    assert x.grad.device == "cuda"
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.exp(2 * np.arange(6.0).reshape(2, 3)))
    back = x.to("cpu")
    assert back.device == "cpu" and isinstance(back._data, np.ndarray)


@pytest.mark.gpu
def test_mixing_devices_names_both():
    a, b = minidl.ones(2, device="cuda"), minidl.ones(2)
    with pytest.raises(backend.DeviceError, match=r"Add.*'cuda'.*'cpu'"):
        a + b


@pytest.mark.gpu
def test_gradcheck_on_cuda():
    import cupy
    a = cupy.asarray(np.random.default_rng(0).standard_normal((2, 3)))
    b = cupy.asarray(np.random.default_rng(1).standard_normal((3, 2)))
    gradcheck(lambda a, b: (a @ b).tanh()[[0, 0, 1]].sum(axis=0), [a, b])


def test_one_body_for_every_backend(device):
    x = minidl.tensor(np.array([[1.0, -2.0], [3.0, 0.5]]), requires_grad=True)
    x = x.to(device) if device != "cpu" else x
    (x.relu() * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[2.0, 0.0], [6.0, 1.0]])
