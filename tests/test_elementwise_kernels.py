"""The one-pass elementwise kernels (ReLU, dropout, the optimizers' updates)
against the NumPy rules they replace: equal to the last bit, in every layout,
below and above the size where they go parallel."""
from __future__ import annotations

import numpy as np
import pytest

import minidl
from minidl import backend, optim
from minidl.kernels import common, cpu_elementwise, cpu_numba
from minidl.nn import functional as F

SIZES = [1, 1000, cpu_elementwise._PARALLEL_MIN + 4099]   # serial, serial, parallel


def _specials(rng, n, dtype):
    x = rng.standard_normal(n).astype(dtype)
    x[::7] = np.nan
    x[1::11] = -0.0
    x[2::13] = np.inf
    x[3::17] = -np.inf
    return x


def _same(a, b):
    """Equal bit for bit (NaN where NaN, the sign of zeros too)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_and_threshold_backward_equal_numpy(n, dtype):
    rng = np.random.default_rng(n)
    x = _specials(rng, n, dtype)
    _same(cpu_numba.relu(x), common.relu(x))
    y = common.relu(x)
    gy = _specials(rng, n, dtype)[::-1].copy()
    _same(cpu_numba.threshold_backward(gy, y), common.threshold_backward(gy, y))


def test_relu_keeps_a_c_major_layout_and_takes_any_other():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32).transpose(1, 0, 2, 3)  # C-major
    y = cpu_numba.relu(x)
    assert y.strides == x.strides
    _same(y, np.maximum(x, 0))
    gy = rng.standard_normal(x.shape).astype(np.float32)   # N-major: another layout than y
    _same(cpu_numba.threshold_backward(gy, y), np.where(y <= 0, np.float32(0), gy))
    strided = rng.standard_normal((6, 8)).astype(np.float32)[:, ::2]   # not dense: NumPy's
    _same(cpu_numba.relu(strided), np.maximum(strided, 0))
    ints = np.arange(-3, 3)
    _same(cpu_numba.relu(ints), np.maximum(ints, 0))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_kernels_equal_numpy_and_keep_one_minus_p(n, p):
    rng = np.random.default_rng(n)
    x = _specials(rng, n, np.float32)
    key, threshold = int(rng.integers(2**63)), int(np.ceil(p * 2**24))
    a = cpu_numba.dropout_apply(x, key, threshold, 1 / (1 - p))
    _same(a, common.dropout_apply(x, key, threshold, 1 / (1 - p)))
    if n > 10000:
        ones = np.ones(n, np.float32)
        kept = cpu_numba.dropout_apply(ones, key, threshold, 1.0).mean()
        assert abs(kept - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n)
        other = cpu_numba.dropout_apply(ones, key + 1, threshold, 1.0)
        both = (other * cpu_numba.dropout_apply(ones, key, threshold, 1.0)).mean()
        assert abs(both - (1 - p) ** 2) < 0.02   # masks of two keys are independent


def test_dropout_op_is_the_same_on_both_cpu_backends_and_reproducible():
    x = minidl.randn(33, 17, 40, requires_grad=True)   # above the parallel size
    results = []
    for numba in (True, False):
        with backend.use_numba(numba):
            minidl.manual_seed(7)
            y = F.dropout(x, 0.3)
            x.grad = None
            (y * 2).sum().backward()
            results.append((y.numpy(), x.grad.numpy()))
    _same(results[0][0], results[1][0])
    _same(results[0][1], results[1][1])
    y = results[0][0]
    scale = np.float32(1 / 0.7)
    _same(results[0][1], np.where(y != 0, 2 * scale, 0).astype(np.float32))
    # a C-major input (a conv's output) gives the mask of its logical order
    xc = x.numpy().reshape(33, 17, 40, 1)
    xc = minidl.tensor(np.ascontiguousarray(xc.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3))
    minidl.manual_seed(7)
    _same(F.dropout(xc, 0.3).numpy().reshape(33, 17, 40), y)
    assert F.dropout(minidl.tensor(2.0), 0.5).shape == ()


OPTIMIZERS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.5, maximize=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, amsgrad=True)),
]


@pytest.mark.parametrize("kind,kwargs", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_optimizer_steps_equal_the_array_rule(kind, kwargs, dtype):
    rng = np.random.default_rng(0)
    shapes = [(7, 5), (cpu_elementwise._PARALLEL_MIN + 333,)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(5)]
    finals = []
    for numba in (True, False):
        with backend.use_numba(numba):
            params = [minidl.tensor(a.copy(), requires_grad=True) for a in init]
            opt = getattr(optim, kind)(params, **kwargs)
            for step in grads:
                for p, g in zip(params, step):
                    p.grad = minidl.tensor(g)
                opt.step()
            finals.append([p.numpy() for p in params] +
                          [v for p in params for v in opt.state.get(p, {}).values()
                           if isinstance(v, np.ndarray)])
    for a, b in zip(*finals):
        _same(a, b)


@pytest.mark.gpu
def test_cupy_elementwise_kernels_match_cpu():
    import cupy as cp

    from minidl.kernels import cuda_cupy
    rng = np.random.default_rng(0)
    x = _specials(rng, 70001, np.float32)
    _same(cp.asnumpy(cuda_cupy.relu(cp.asarray(x))), common.relu(x))
    y, gy = common.relu(x), x[::-1].copy()
    _same(cp.asnumpy(cuda_cupy.threshold_backward(cp.asarray(gy), cp.asarray(y))),
          common.threshold_backward(gy, y))
    _same(cp.asnumpy(cuda_cupy.dropout_apply(cp.asarray(x), 12345, 2**23, 2.0)),
          cpu_numba.dropout_apply(x, 12345, 2**23, 2.0))
