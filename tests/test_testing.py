"""gradcheck and assert_close themselves: they must catch what they claim to."""
from __future__ import annotations

import numpy as np
import pytest

import minidl
from minidl import Function
from minidl.testing import assert_close, gradcheck


class _WrongTranspose(Function):
    """y = x.T with a backward that forgets to transpose back."""

    def forward(self, x):
        return x.T

    def backward(self, gy):
        return gy  # wrong, but right whenever gy is symmetric (all-ones!)


class _Scaled(Function):
    """y = 2x; ``bad`` puts an error into chosen parts of the backward."""

    def __init__(self, bad=None):
        self.bad = bad

    def forward(self, x):
        return 2 * x

    def backward(self, gy):
        g = 2 * gy
        if self.bad == "one_element":
            g = g.copy()
            g[1, 2] += 0.5
        elif self.bad == "offset":
            g = g + 1e-8  # below the numeric tolerance, but not zero for a zero grad_output
        elif self.bad == "scale":
            g = g * 1.01
        return g


def test_passes_a_correct_op():
    x = np.random.default_rng(0).standard_normal((3, 4))
    assert gradcheck(lambda x: _Scaled()(x), [x])
    assert gradcheck(lambda x, y: (x @ y.T).tanh(), [x, x + 1])


def test_catches_a_transposition_error_that_all_ones_would_hide():
    x = np.random.default_rng(0).standard_normal((3, 3))
    # with grad_output = ones the wrong backward agrees with the truth ...
    t = minidl.tensor(x, requires_grad=True)
    _WrongTranspose()(t).backward(np.ones((3, 3)))
    np.testing.assert_array_equal(t.grad.numpy(), np.ones((3, 3)))
    # ... gradcheck's random grad_output does not
    with pytest.raises(AssertionError, match="analytic vs numeric"):
        gradcheck(lambda x: _WrongTranspose()(x), [x])
    with pytest.raises(AssertionError, match="directional"):
        gradcheck(lambda x: _WrongTranspose()(x), [x], directional=True)


def test_failure_names_the_worst_element_values_and_tolerance():
    x = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(AssertionError) as info:
        gradcheck(lambda x: _Scaled("one_element")(x), [x])
    msg = str(info.value)
    assert "input 0" in msg and "(3, 4)" in msg
    assert "1 of 12 elements differ" in msg
    assert "worst at index (1, 2)" in msg
    assert "rtol=0.001" in msg and "atol=1e-05" in msg
    assert "actual" in msg and "expected" in msg


def test_directional_mode():
    x = np.random.default_rng(1).standard_normal((20, 30))
    assert gradcheck(lambda x, w: (x @ w).sigmoid().sum(axis=0), [x, x.T.copy()],
                     directional=True)
    with pytest.raises(AssertionError, match=r"directional.*analytic.*numeric"):
        gradcheck(lambda x: _Scaled("scale")(x), [x], directional=True)


def test_structural_checks():
    x = np.random.default_rng(0).standard_normal((2, 3))
    with pytest.raises(AssertionError, match="zero grad_output"):
        gradcheck(lambda x: _Scaled("offset")(x), [x])
    assert gradcheck(lambda x: _Scaled("offset")(x), [x], structural=False)

    calls = []

    class Drifting(Function):
        def forward(self, x):
            return x * 1

        def backward(self, gy):
            calls.append(1)
            return gy * (1 + 1e-7 * len(calls))

    with pytest.raises(AssertionError, match="second backward disagrees"):
        gradcheck(lambda x: Drifting()(x), [x])


def test_never_mutates_the_callers_inputs():
    rng = np.random.default_rng(0)
    a32 = rng.standard_normal((3, 2)).astype(np.float32)
    a64 = np.asfortranarray(rng.standard_normal((2, 3)))   # F-ordered
    t = minidl.tensor(rng.standard_normal(2).astype(np.float32), requires_grad=True)
    idx = np.array([1, 0, 1])
    copies = [a32.copy(), a64.copy(), t._data.copy(), idx.copy()]
    gradcheck(lambda a, b, c, i: (a @ b)[i] * c.sum(), [a32, a64, t, idx])
    for before, after in zip(copies, [a32, a64, t._data, idx]):
        assert after.dtype == before.dtype
        np.testing.assert_array_equal(after, before)
    assert a64.flags.f_contiguous and t.grad is None and t.dtype == np.float32


def test_non_contiguous_and_zero_dim_inputs():
    x = np.random.default_rng(0).standard_normal((4, 3))
    gradcheck(lambda x: x * x, [x.T])          # F-ordered view
    gradcheck(lambda x: x.exp(), [x[::2, ::-1]])  # strided, negative step
    gradcheck(lambda x: x * 3, [np.float64(0.5)])  # a NumPy scalar is an input
    gradcheck(lambda x, c: x * c, [x, 2.0])      # a Python float is a constant


def test_which_inputs_are_checked():
    x = np.random.default_rng(0).standard_normal(3)
    frozen = minidl.tensor(x)  # requires_grad=False: a constant
    assert gradcheck(lambda a, b: a * b, [x, frozen])
    with pytest.raises(ValueError, match="no floating-point input"):
        gradcheck(lambda a: a * 2, [frozen])
    with pytest.raises(ValueError, match="no floating-point tensor"):
        gradcheck(lambda a: a > 0, [x])


def test_multiple_outputs():
    x = np.random.default_rng(0).standard_normal((2, 3))
    assert gradcheck(lambda x: (x.exp(), x.sum(axis=0)), [x])


def test_assert_close():
    assert_close(np.float32(1.0) + np.float32(1e-6), np.float32(1.0))  # float32 defaults
    with pytest.raises(AssertionError, match=r"rtol=1e-07, atol=1e-07"):
        assert_close(np.array([1.0 + 1e-6]), np.array([1.0]))
    with pytest.raises(AssertionError) as info:
        assert_close(minidl.tensor(np.array([[1.0, 2.0], [3.0, 4.0]])),
                     np.array([[1.0, 2.1], [3.0, 4.5]]), msg="check: ")
    msg = str(info.value)
    assert msg.startswith("check: 2 of 4 elements differ")
    assert "worst at index (1, 1)" in msg and "abs diff 0.5" in msg
    with pytest.raises(AssertionError, match="shape mismatch"):
        assert_close(np.ones(2), np.ones(3))
    with pytest.raises(AssertionError, match=r"1 of 2.*index \(1,\): actual np.float64\(nan\)"):
        assert_close(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(AssertionError, match="1 of 1"):  # NaN != NaN, as torch's default
        assert_close(np.array([np.nan]), np.array([np.nan]))


def test_assert_close_infinities_integers_and_float16():
    for actual, expected in [(1.0, np.inf), (-np.inf, np.inf), (np.nan, 1.0)]:
        with pytest.raises(AssertionError):
            assert_close(np.array([actual]), np.array([expected]))
    assert_close(np.array([np.inf, -np.inf]), np.array([np.inf, -np.inf]))
    with pytest.raises(AssertionError):   # integers compare exactly
        assert_close(np.array([10**9]), np.array([10**9 + 1]))
    assert_close(np.array([10**18 + 1]), np.array([10**18 + 1]))
    assert_close(np.array([1.0], np.float16), np.array([1.0005], np.float16))


def test_gradcheck_rejects_a_wrong_gradient_where_differences_overflow():
    class ExpWithZeroGradient(Function):
        def forward(self, x):
            return np.exp(x)

        def backward(self, gy):
            return gy * 0

    x = minidl.Tensor(np.array([np.log(np.finfo(np.float64).max)]), requires_grad=True)
    with pytest.raises(AssertionError), np.errstate(over="ignore"):
        gradcheck(lambda t: ExpWithZeroGradient()(t), [x])
