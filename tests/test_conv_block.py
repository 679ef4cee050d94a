"""The fused CNN block relu(max_pool2d(conv2d(x, W, b, padding=1), 2)):
gradcheck, PyTorch parity, the three-op path it must equal, and its fallbacks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidl
from minidl import backend
from minidl.ops.conv import conv2d, max_pool2d_relu
from minidl.ops.conv_block import ConvPoolReLU, _fusable, conv_pool_relu
from minidl.testing import gradcheck
from test_conv import c_major, tie_free
from torch_helpers import check_vs_torch

pytestmark = pytest.mark.skipif(
    not (backend.numba_available() and __import__("minidl.kernels.cpu_blas",
                                                   fromlist=["available"]).available()),
    reason="the fused block needs the Numba kernels and NumPy's OpenBLAS")


def _inputs(rng, N, C, Co, H, W, dtype=np.float64):
    x = tie_free(rng, (N, C, H, W))
    w = rng.standard_normal((Co, C, 3, 3)) * 0.5
    b = rng.standard_normal(Co) * 0.1
    return x.astype(dtype), w.astype(dtype), b.astype(dtype)


def _three_ops(x, w, b):
    return max_pool2d_relu(conv2d(x, w, b, padding=1), 2)


@settings(max_examples=6, deadline=None)
@given(N=st.integers(1, 5), C=st.integers(1, 3), Co=st.integers(1, 4),
       H=st.sampled_from([2, 4, 6]), W=st.sampled_from([2, 4, 8]), seed=st.integers(0, 999))
def test_conv_pool_relu_gradcheck(N, C, Co, H, W, seed):
    x, w, b = _inputs(np.random.default_rng(seed), N, C, Co, H, W)
    ts = [minidl.tensor(a, requires_grad=True) for a in (x, w, b)]
    assert isinstance(conv_pool_relu(*ts).creator, ConvPoolReLU)
    gradcheck(conv_pool_relu, [x, w, b])


@pytest.mark.parametrize("layout", [np.ascontiguousarray, c_major])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("N, C, Co, H", [(64, 1, 8, 28), (9, 8, 16, 14), (3, 2, 5, 6)])
def test_fused_equals_the_three_ops(layout, threads, N, C, Co, H):
    """Values and every gradient, with and without an input gradient (the
    first conv's input is the images) or a weight gradient (frozen layers),
    on one thread and two (blocks of images split differently), float32 as in
    training."""
    rng = np.random.default_rng(N + C)
    x, w, b = _inputs(rng, N, C, Co, H, H, np.float32)
    x = layout(x)
    g = rng.standard_normal((N, Co, H // 2, H // 2)).astype(np.float32)
    before = minidl.get_num_threads()
    try:
        minidl.set_num_threads(threads)
        for x_grad, w_grad in ((True, True), (False, True), (True, False)):
            outs = []
            for fn in (conv_pool_relu, _three_ops):
                ts = [minidl.tensor(x, requires_grad=x_grad),
                      minidl.tensor(w, requires_grad=w_grad),
                      minidl.tensor(b, requires_grad=w_grad)]
                y = fn(*ts)
                y.backward(minidl.tensor(g))
                outs.append([y.numpy()] + [t.grad.numpy() if t.grad is not None else None
                                           for t in ts])
            assert [o is None for o in outs[0][1:]] == [not x_grad, not w_grad, not w_grad]
            for fused, plain in zip(*outs):
                if plain is not None:
                    np.testing.assert_allclose(fused, plain, rtol=1e-4, atol=1e-4)
    finally:
        minidl.set_num_threads(before)


def test_conv_pool_relu_matches_torch():
    F = pytest.importorskip("torch.nn.functional")
    x, w, b = _inputs(np.random.default_rng(0), 6, 3, 4, 8, 6, np.float32)
    check_vs_torch(lambda x, w, b: F.relu(F.max_pool2d(F.conv2d(x, w, b, padding=1), 2)),
                   [x, w, b], conv_pool_relu, dtype=np.float32, rtol=1e-4, atol=1e-5,
                   grad_atol=1e-4)


def test_inference_keeps_nothing_for_backward():
    x, w, b = _inputs(np.random.default_rng(1), 4, 2, 3, 6, 6, np.float32)
    with minidl.no_grad():
        y = conv_pool_relu(minidl.tensor(x), minidl.tensor(w), minidl.tensor(b))
    with minidl.no_grad():
        expected = _three_ops(minidl.tensor(x), minidl.tensor(w), minidl.tensor(b))
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert y.creator is None


def test_what_cannot_fuse_runs_the_three_ops(monkeypatch):
    """Odd sizes, no bias, another kernel size, an unfolded input past conv2d's
    chunk budget (conv2d then unfolds it in chunks), the NumPy kernels: the
    three ops."""
    from minidl.ops import conv_block
    x = minidl.tensor(np.ones((4, 2, 6, 6)))
    w, b = minidl.tensor(np.ones((3, 2, 3, 3))), minidl.tensor(np.ones(3))
    assert _fusable(x, w, b)
    monkeypatch.setattr(conv_block, "_COL_CHUNK_BYTES", 19 * 4 * 36 * 8 - 1)
    assert not _fusable(x, w, b)
    monkeypatch.undo()
    rng = np.random.default_rng(2)
    x, w, b = _inputs(rng, 2, 2, 3, 6, 6)
    odd = tie_free(rng, (2, 2, 5, 6))
    for args in [(odd, w, b), (x, w, None), (x, rng.standard_normal((3, 2, 5, 5)), b)]:
        ts = [None if a is None else minidl.tensor(a, requires_grad=True) for a in args]
        assert not _fusable(ts[0], ts[1], ts[2])
        y = conv_pool_relu(*ts)
        assert y.creator is not None and not isinstance(y.creator, ConvPoolReLU)
        np.testing.assert_allclose(y.numpy(), _three_ops(*args).numpy())
    with backend.use_numba(False):
        y = conv_pool_relu(*[minidl.tensor(a, requires_grad=True) for a in (x, w, b)])
        assert y.creator is not None and not isinstance(y.creator, ConvPoolReLU)
    np.testing.assert_allclose(y.numpy(), _three_ops(x, w, b).numpy(), rtol=1e-12)
