"""Fused activations and normalisations: gradcheck (float64), PyTorch parity, stability.

softmax/log_softmax/gelu/dropout/linear/layer_norm/batch_norm from ``F``.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import randn
from hypothesis import given
from hypothesis import strategies as st
from torch_helpers import check_vs_torch

import minidl
from minidl.nn import functional as F
from minidl.testing import assert_close, gradcheck


@given(st.integers(0, 2**16), st.integers(-3, 2))
def test_softmax_log_softmax_gradcheck(seed, dim):
    x = randn(seed, (2, 3, 4))
    gradcheck(lambda t: F.softmax(t, dim=dim), [x])
    gradcheck(lambda t: F.log_softmax(t, dim=dim), [x])


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_log_softmax_vs_torch(dim):
    tf = pytest.importorskip("torch.nn.functional")
    check_vs_torch(lambda x: tf.softmax(x, dim=dim), [(3, 4, 5)], lambda x: F.softmax(x, dim=dim))
    check_vs_torch(lambda x: tf.log_softmax(x, dim=dim), [(3, 4, 5)],
                   lambda x: F.log_softmax(x, dim=dim))
    check_vs_torch(lambda x: tf.softmax(x, dim=dim), [(3, 4, 5)], lambda x: F.softmax(x, dim=dim),
                   dtype=np.float32, rtol=1e-5, atol=1e-6)


def test_softmax_stable_at_large_magnitude():
    x = minidl.tensor(np.array([[1e4, -1e4, 0.0], [5e3, 5e3, -1e4]], np.float32),
                      requires_grad=True)
    for fn in (F.softmax, F.log_softmax):
        x.grad = None
        y = fn(x, dim=1)
        assert y.dtype == np.float32
        weights = minidl.tensor(np.array([[1.0, 2.0, 3.0], [1.0, -1.0, 2.0]], np.float32))
        (y * weights).sum().backward()
        assert np.isfinite(y.numpy()).all() and np.isfinite(x.grad.numpy()).all()
    assert_close(F.softmax(x, dim=1), np.array([[1, 0, 0], [0.5, 0.5, 0]], np.float32))
    assert_close(F.log_softmax(x, dim=1)[0], np.array([0, -2e4, -1e4], np.float32))


def test_softmax_fully_masked_row_gives_zeros():
    x = minidl.tensor(np.array([[-np.inf, -np.inf], [0.0, -np.inf]]), requires_grad=True)
    y = F.softmax(x, dim=-1)
    assert_close(y, np.array([[0.0, 0.0], [1.0, 0.0]]))
    y.backward(np.ones((2, 2)))
    assert np.isfinite(x.grad.numpy()).all()


def test_softmax_default_dim_and_bad_dim():
    x = minidl.randn(2, 3)
    assert_close(F.softmax(x), F.softmax(x, dim=1))
    assert_close(F.log_softmax(x), F.log_softmax(x, dim=-1))
    with pytest.raises(ValueError, match="out of range"):
        F.softmax(minidl.randn(2, 3), dim=2)


@pytest.mark.parametrize("slope", [0.01, 0.2, -0.5, 0.0])
def test_leaky_relu(slope):
    tf = pytest.importorskip("torch.nn.functional")
    x = randn(0, (3, 4), low=0.01)   # away from the kink, where the gradient jumps
    gradcheck(lambda t: F.leaky_relu(t, slope), [x])
    check_vs_torch(lambda t: tf.leaky_relu(t, slope), [x], lambda t: F.leaky_relu(t, slope))
    assert F.leaky_relu(minidl.randn(3)).dtype == np.float32
    assert F.leaky_relu(minidl.randn(3), 2).dtype == np.float32   # an int slope
    x0 = minidl.tensor([0.0, -2.0, 3.0], requires_grad=True)
    F.leaky_relu(x0, 0.1).sum().backward()
    assert_close(x0.grad, np.array([0.1, 0.1, 1.0], np.float32))   # PyTorch's slope at 0
    with pytest.raises(TypeError, match="negative_slope must be a number"):
        F.leaky_relu(x0, "0.1")


def test_silu():
    tf = pytest.importorskip("torch.nn.functional")
    gradcheck(F.silu, [randn(1, (3, 4)) * 4])
    check_vs_torch(tf.silu, [(3, 4)], F.silu)
    check_vs_torch(tf.silu, [np.array([-200.0, -30.0, 0.0, 30.0, 200.0])], F.silu,
                   dtype=np.float32)   # no overflow in either tail
    assert F.silu(minidl.randn(3)).dtype == np.float32


def test_one_hot_matches_torch_and_checks_its_input():
    torch = pytest.importorskip("torch")
    idx = np.array([[0, 3], [2, 1]])
    for n in (-1, 4, 6):
        ours = F.one_hot(minidl.tensor(idx), n)
        theirs = torch.nn.functional.one_hot(torch.tensor(idx), n)
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert F.one_hot(minidl.tensor(np.zeros(0, np.int64)), 3).shape == (0, 3)
    with pytest.raises(ValueError, match="cannot infer"):
        F.one_hot(minidl.tensor(np.zeros(0, np.int64)))
    with pytest.raises(ValueError, match="non-negative"):
        F.one_hot(minidl.tensor([1, -1]), 3)
    with pytest.raises(ValueError, match="class value 3 is not smaller than num_classes=3"):
        F.one_hot(minidl.tensor([1, 3]), 3)
    with pytest.raises(TypeError, match="integer class indices"):
        F.one_hot(minidl.tensor([1.0]), 3)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    tf = pytest.importorskip("torch.nn.functional")
    gradcheck(lambda t: F.gelu(t, approximate=approximate), [randn(0, (3, 4))])
    check_vs_torch(lambda x: tf.gelu(x, approximate=approximate), [(3, 4)],
                   lambda x: F.gelu(x, approximate=approximate))
    assert F.gelu(minidl.randn(3), approximate).dtype == np.float32


def test_dropout_inverted_and_seeded():
    x = minidl.ones(1000, 50, requires_grad=True)
    minidl.manual_seed(3)
    y = F.dropout(x, 0.2, training=True)
    minidl.manual_seed(3)
    y2 = F.dropout(x, 0.2, training=True)
    assert_close(y, y2)
    kept = y.numpy() != 0
    assert abs(kept.mean() - 0.8) < 0.01
    assert_close(y.numpy()[kept], np.full(kept.sum(), 1.25, np.float32))
    assert y.dtype == np.float32
    y.sum().backward()
    assert_close(x.grad, y.numpy())
    assert F.dropout(x, 0.2, training=False) is x
    assert not F.dropout(x, 1.0).numpy().any()


def test_dropout_gradcheck_with_a_fixed_mask():
    def dropout_with_seed(x):   # every call of gradcheck draws the same mask
        minidl.manual_seed(5)
        return F.dropout(x, 0.4, training=True)

    gradcheck(dropout_with_seed, [np.random.default_rng(0).standard_normal((4, 5))])


def test_linear_gradcheck_and_torch():
    tf = pytest.importorskip("torch.nn.functional")
    gradcheck(F.linear, [randn(0, (2, 3, 4)), randn(1, (5, 4)), randn(2, (5,))])
    gradcheck(F.linear, [randn(0, (4,)), randn(1, (5, 4))])
    check_vs_torch(tf.linear, [(2, 3, 4), (5, 4), (5,)], F.linear)


def test_layer_norm():
    tf = pytest.importorskip("torch.nn.functional")
    gradcheck(lambda x, w, b: F.layer_norm(x, (3, 4), w, b),
              [randn(0, (2, 3, 4)), randn(1, (3, 4)), randn(2, (3, 4))])
    gradcheck(lambda x: F.layer_norm(x, 4), [randn(0, (2, 4))])
    check_vs_torch(lambda x, w, b: tf.layer_norm(x, (4,), w, b), [(2, 3, 4), (4,), (4,)],
                   lambda x, w, b: F.layer_norm(x, (4,), w, b))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(training):
    torch = pytest.importorskip("torch")
    rm, rv = np.random.default_rng(5).random(3), 1 + np.random.default_rng(6).random(3)
    gradcheck(lambda x, w, b: F.batch_norm(x, rm.copy(), rv.copy(), w, b, training),
              [randn(0, (4, 3, 2, 2)), randn(1, (3,)), randn(2, (3,))])
    mrm, mrv = rm.copy(), rv.copy()
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    check_vs_torch(lambda x, w, b: torch.nn.functional.batch_norm(x, trm, trv, w, b, training, 0.1),
                   [(4, 3, 2, 2), (3,), (3,)],
                   lambda x, w, b: F.batch_norm(x, mrm, mrv, w, b, training, 0.1))
    assert_close(mrm, trm.numpy())
    assert_close(mrv, trv.numpy())


def test_pad_value_none_means_zero():
    x = minidl.tensor(np.arange(4, dtype=np.float32).reshape(2, 2))
    padded = F.pad(x, (1, 1), value=None)
    assert_close(padded, np.array([[0, 0, 1, 0], [0, 2, 3, 0]], np.float32))
    assert_close(F.pad(x, (1, 1)), padded)


def test_relu_inplace_changes_the_input_as_pytorch():
    x = minidl.tensor(np.array([-1.0, 2.0], np.float32))
    assert_close(F.relu(x), np.array([0.0, 2.0], np.float32))
    assert_close(x, np.array([-1.0, 2.0], np.float32))      # out of place by default
    assert F.relu(x, inplace=True) is x
    assert_close(x, np.array([0.0, 2.0], np.float32))       # PyTorch gives [0, 2] too


def test_softmax_dtype_casts_first_and_dim_none_is_refused():
    x = minidl.tensor(randn(0, (2, 3)).astype(np.float32), requires_grad=True)
    for fn in (F.softmax, F.log_softmax):
        y = fn(x, 1, dtype=np.float64)
        assert y.dtype == np.float64
        assert_close(y, fn(minidl.tensor(x.numpy().astype(np.float64)), 1))
        x.grad = None
        y.sum().backward()
        assert x.grad.dtype == np.float32
        with pytest.raises(TypeError, match="dim=None is not supported"):
            fn(x, None)
        with pytest.raises(TypeError, match="floating dtype"):
            fn(x, 1, dtype=np.int64)


def test_softmax_dtype_vs_torch():
    torch = pytest.importorskip("torch")
    for m_fn, t_fn in ((F.softmax, torch.softmax), (F.log_softmax, torch.log_softmax)):
        check_vs_torch(lambda x, t_fn=t_fn: t_fn(x, 1, dtype=torch.float64), [(3, 4)],
                       lambda x, m_fn=m_fn: m_fn(x, 1, dtype=np.float64), dtype=np.float32)


def test_linear_bias_of_another_dtype_is_refused():
    x, w = minidl.ones(2, 3), minidl.ones(4, 3)
    with pytest.raises(TypeError, match="bias dtype float64 differs .* float32"):
        F.linear(x, w, minidl.tensor(np.ones(4)))


def test_sdpa_fully_masked_row_matches_torch():
    # torch's scaled_dot_product_attention gives zeros there (not NaN), as ours
    tf = pytest.importorskip("torch.nn.functional")
    mask = np.array([[True, False, True], [False, False, False]])
    check_vs_torch(tf.scaled_dot_product_attention, [(2, 4), (3, 4), (3, 5), mask],
                   F.scaled_dot_product_attention)
