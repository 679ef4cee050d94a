"""Every differentiable op, gradchecked in float64 (hypothesis draws shapes,
broadcasting pairs, axes and index patterns), a few composite expressions
compared with PyTorch, and the float32 dtype discipline of every op."""
from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import broadcast_shapes, distinct, randn, seeds, shapes
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch_helpers import check_vs_torch

import minidl
from minidl import ops
from minidl.testing import gradcheck

# ------------------------------------------------------------- arithmetic


@given(broadcast_shapes(), seeds, st.sampled_from(["add", "sub", "mul", "div"]))
def test_binary_broadcasting(pair, seed, op):
    a = randn(seed, pair[0])
    b = randn(seed + 1, pair[1], low=0.5)  # a divisor away from zero
    fn = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y,
          "mul": lambda x, y: x * y, "div": lambda x, y: x / y}[op]
    gradcheck(fn, [a, b])


@given(shapes(), seeds)
def test_binary_with_python_scalars(shape, seed):
    x = randn(seed, shape, low=0.5)
    gradcheck(lambda x: 2.5 - x * 3.0 + 1.5 / x - x / 4.0 + (1 + x), [x])


@given(broadcast_shapes(), seeds)
def test_pow_tensor_tensor(pair, seed):
    a = 0.5 + np.abs(randn(seed, pair[0]))  # positive base: log(a) exists
    b = randn(seed + 1, pair[1])
    gradcheck(lambda a, b: a ** b, [a, b])


@given(shapes(), seeds, st.sampled_from([2, 3, 0.5, -1.5, 1 / 3, 1, -2]))
def test_pow_scalar(shape, seed, c):
    x = 0.5 + np.abs(randn(seed, shape))
    gradcheck(lambda x: x ** c, [x])


def test_pow_zero_exponent_has_zero_gradient_even_at_zero():
    x = minidl.tensor([0.0, 2.0], requires_grad=True)
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])


@given(shapes(), seeds)
def test_rpow_and_neg(shape, seed):
    x = randn(seed, shape)
    gradcheck(lambda x: 2.0 ** x, [x])
    gradcheck(lambda x: -x, [x])


# ----------------------------------------------------------------- matmul

@st.composite
def matmul_shapes(draw):
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    kind = draw(st.sampled_from(["mm", "vec_left", "vec_right", "dot"]))
    if kind == "dot":
        return (k,), (k,)
    batch_a, batch_b = draw(broadcast_shapes(min_dims=0, max_dims=2, max_side=2))
    if kind == "vec_left":
        return (k,), batch_b + (k, m)
    if kind == "vec_right":
        return batch_a + (n, k), (k,)
    return batch_a + (n, k), batch_b + (k, m)


@given(matmul_shapes(), seeds)
@settings(max_examples=25)
def test_matmul(shapes_ab, seed):
    a, b = randn(seed, shapes_ab[0]), randn(seed + 1, shapes_ab[1])
    gradcheck(lambda a, b: a @ b, [a, b])


@pytest.mark.parametrize("sa, sb", [
    ((3,), (3,)), ((3,), (2, 3, 4)), ((2, 4, 3), (3,)), ((2, 1, 2, 3), (3, 3, 4)),
    ((2, 5, 3), (3, 4)),          # a shared weight under a batch (the one-GEMM path)
    ((5, 3), (2, 3, 4)), ((1, 2, 3), (3, 2)),
])
def test_matmul_cases(sa, sb):
    a, b = randn(1, sa), randn(2, sb)
    gradcheck(lambda a, b: a @ b, [a, b])
    gradcheck(lambda a, b: minidl.matmul(a, b), [a, b])


def test_matmul_non_contiguous():
    a = randn(3, (3, 4)).T   # a transposed (F-ordered) operand, (4, 3)
    b = randn(4, (2, 5, 3))[:, ::2]   # strided, (2, 3, 3)
    gradcheck(lambda a, b: a @ b, [a, b])
    gradcheck(lambda a, b: b @ a.mT, [a, b])


# ------------------------------------------------------------------ unary

UNARY = {
    "exp": (lambda x: x.exp(), None),
    "log": (lambda x: minidl.log(x), "positive"),
    "sqrt": (lambda x: x.sqrt(), "positive"),
    "abs": (lambda x: abs(x), "away"),
    "tanh": (lambda x: x.tanh(), None),
    "sigmoid": (lambda x: minidl.sigmoid(x), None),
    "relu": (lambda x: x.relu(), "away"),
}


def test_relu_gradient_at_nonfinite_values_is_pytorchs():
    """ReLU's backward is PyTorch's threshold_backward: exactly 0 where the output
    is <= 0, even for an infinite or NaN incoming gradient (a product would give
    NaN), and a NaN output passes its gradient."""
    torch = pytest.importorskip("torch")
    values = np.array([np.nan, -1.0, 2.0, 0.0, -np.inf, np.inf])
    grads = np.array([1.0, np.inf, 1.0, np.nan, -np.inf, 2.0])
    x = minidl.tensor(values, requires_grad=True)
    x.relu().backward(minidl.tensor(grads))
    tx = torch.tensor(values, requires_grad=True)
    tx.relu().backward(torch.tensor(grads))
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


@given(shapes(), seeds, st.sampled_from(sorted(UNARY)))
@settings(max_examples=25)
def test_unary(shape, seed, name):
    fn, domain = UNARY[name]
    x = randn(seed, shape, low=0.1 if domain else None)
    if domain == "positive":
        x = np.abs(x)
    gradcheck(fn, [x])


def test_unary_large_magnitudes_stay_finite():
    x = minidl.tensor(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0]), requires_grad=True)
    y = x.sigmoid()
    y.sum().backward()
    assert np.isfinite(y.numpy()).all() and np.isfinite(x.grad.numpy()).all()
    np.testing.assert_allclose(y.numpy()[[0, -1]], [0.0, 1.0])


@st.composite
def tie_free_pair(draw):
    """Operands on interleaved grids (even and odd multiples of 0.1): no ties."""
    sa, sb = draw(broadcast_shapes())
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    return 0.2 * rng.integers(-5, 5, sa), 0.2 * rng.integers(-5, 5, sb) + 0.1


@given(tie_free_pair(), st.booleans())
def test_maximum_minimum(pair, use_max):
    fn = minidl.maximum if use_max else minidl.minimum
    gradcheck(fn, list(pair))
    gradcheck(lambda a: fn(a, 0.05), [pair[0]])


def test_maximum_ties_split_the_gradient_as_torch():
    a = np.array([1.0, 2.0, 3.0, 2.0])
    b = np.array([1.0, 0.0, 3.5, 2.0])
    check_vs_torch(lambda x, y: x.maximum(y) * 2 + x.minimum(y), [a, b],
                   lambda x, y: minidl.maximum(x, y) * 2 + minidl.minimum(x, y))


@given(shapes(), seeds, st.sampled_from([(-0.45, 0.55), (None, 0.15), (-0.25, None)]))
def test_clip(shape, seed, bounds):
    # Values on a 0.2 grid + 0.1 never meet the bounds (kinks).
    x = 0.2 * np.random.default_rng(seed).integers(-5, 5, shape) + 0.1
    gradcheck(lambda x: x.clip(*bounds), [x])
    gradcheck(lambda x: minidl.clamp(x, min=bounds[0], max=bounds[1]), [x])


# ------------------------------------------------------------- reductions

@st.composite
def shape_and_axes(draw, min_dims=0):
    shape = draw(shapes(min_dims=min_dims))
    ndim = len(shape)
    if ndim == 0 or draw(st.booleans()):
        axis = draw(st.sampled_from([None] + ([0, -1] if ndim else [])))
    else:
        picked = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim,
                               unique=True))
        # negative spellings too
        axis = tuple(a - ndim if draw(st.booleans()) else a for a in picked)
        if len(axis) == 1 and draw(st.booleans()):
            axis = axis[0]
    return shape, axis, draw(st.booleans()), draw(st.booleans())


def _reduce(name, x, axis, keepdims, torch_spelling, **kw):
    """NumPy's reduction ``name`` (var/std by N, max/min as values) in either spelling."""
    if torch_spelling:
        if name in ("max", "min"):   # PyTorch's max(dim) gives (values, indices): amax
            name = "a" + name
        if name in ("var", "std"):
            kw.setdefault("correction", 0)
        return getattr(x, name)(dim=axis, keepdim=keepdims, **kw)
    if name in ("var", "std"):
        kw.setdefault("ddof", 0)
    return getattr(x, name)(axis=axis, keepdims=keepdims, **kw)


@given(shape_and_axes(), seeds, st.sampled_from(["sum", "mean", "var", "std", "max", "min"]))
@settings(max_examples=30)
def test_reductions(case, seed, name):
    shape, axis, keepdims, torch_spelling = case
    x = distinct(seed, shape) if name in ("max", "min") else randn(seed, shape)
    gradcheck(lambda x: _reduce(name, x, axis, keepdims, torch_spelling), [x])
    expected = getattr(np, name)(x, axis=axis, keepdims=keepdims)
    got = _reduce(name, minidl.tensor(x), axis, keepdims, torch_spelling)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


@given(shape_and_axes(min_dims=1), seeds)
def test_var_std_unbiased(case, seed):
    shape, axis, keepdims, _ = case
    x = randn(seed, shape)
    count = x.size if axis is None else np.prod([shape[a] for a in np.atleast_1d(axis)])
    assume(count >= 2)   # n - 1 == 0 has no unbiased variance
    gradcheck(lambda x: x.var(axis, keepdim=keepdims, ddof=1), [x])
    gradcheck(lambda x: x.std(dim=axis, keepdim=keepdims, correction=1), [x])
    gradcheck(lambda x: minidl.var(x, axis, unbiased=True), [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_std_of_a_constant_has_zero_gradient_as_torch(dtype):
    rows = np.array([[1.0, 2.0, 4.0], [5.0, 5.0, 5.0]])   # the second row is constant
    check_vs_torch(lambda x: x.std(dim=1, correction=0), [rows],
                   lambda x: x.std(dim=1, ddof=0), dtype=dtype)
    check_vs_torch(lambda x: x.std(dim=1), [rows], dtype=dtype)   # both N - 1 by default
    check_vs_torch(lambda x: x.std(), [np.full((2, 3), 0.5)], dtype=dtype)
    gradcheck(lambda x: x.std(axis=1, ddof=1), [rows])   # numeric: 0 there too


def test_max_min_ties_share_gradient_as_torch_amax():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    check_vs_torch(lambda x: x.amax(dim=1), [x], lambda x: x.amax(dim=1))
    check_vs_torch(lambda x: x.amax(dim=1), [x], lambda x: x.max(axis=1))   # NumPy's max
    check_vs_torch(lambda x: x.amin(), [x], lambda x: x.min())


@pytest.mark.parametrize("name", ["sum", "mean", "var", "std", "max", "min", "argmax"])
def test_reductions_of_a_0d_tensor_over_dim_0_or_minus_1_reduce_nothing(name):
    x = minidl.tensor(np.float64(3.0), requires_grad=name != "argmax")
    name = {"max": "amax", "min": "amin"}.get(name, name)   # max(dim) is (values, indices)
    extra = {"correction": 0} if name in ("var", "std") else {}
    for dim in (0, -1, (0,)):
        y = getattr(x, name)(dim=dim, **extra)
        assert y.shape == ()
        expected = {"var": 0.0, "std": 0.0, "argmax": 0}.get(name, 3.0)
        assert y.item() == expected
    if name != "argmax":
        gradcheck(lambda x: getattr(x, name)(dim=-1, keepdim=True, **extra), [x])
    with pytest.raises(IndexError, match=r"dim 1 is out of range .*\[-1, 0\]"):
        getattr(x, name)(dim=1)


def test_max_over_a_nonempty_dim_of_an_empty_tensor():
    x = minidl.zeros(0, 3, requires_grad=True)
    y = x.max(axis=1)
    assert y.shape == (0,)
    y.sum().backward()
    assert x.grad.shape == (0, 3)
    assert minidl.zeros(3, 0).min(dim=0).values.shape == (0,)
    for axis in (0, None):
        with pytest.raises(ValueError, match=r"max: cannot reduce over dim 0 of size 0"):
            x.max(axis=axis)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_of_0d_and_over_an_empty_dim(name):
    fn = getattr(minidl.nn.functional, name)
    x = minidl.tensor(np.float64(3.0), requires_grad=True)
    y = fn(x, 0)
    assert y.shape == () and y.item() == (1.0 if name == "softmax" else 0.0)
    gradcheck(lambda t: fn(t, -1), [x])
    for shape, dim in (((3, 0), -1), ((0, 3), 1), ((3, 0), 0)):
        e = minidl.zeros(*shape, requires_grad=True)
        y = fn(e, dim)
        assert y.shape == shape and y.dtype == np.float32
        y.sum().backward()
        assert e.grad.shape == shape


def test_reduction_axis_accepts_numpy_integers():
    x = minidl.tensor(np.arange(6.0).reshape(2, 3))
    assert x.sum(axis=np.int64(1)).shape == (2,)
    with pytest.raises(ValueError, match=r"dim 2 is out of range .*\[-2, 1\]"):
        x.sum(axis=2)
    with pytest.raises(IndexError):  # PyTorch's type for it
        x.sum(axis=-3)
    with pytest.raises(ValueError, match="repeated axis"):
        x.sum(axis=(0, -2))


# ------------------------------------------------------------------ shape

@given(shapes(), seeds)
def test_reshape_view_flatten(shape, seed):
    x = randn(seed, shape)
    gradcheck(lambda x: x.reshape(-1), [x])
    gradcheck(lambda x: x.view(tuple(reversed(shape))) * 1.0, [x])
    gradcheck(lambda x: minidl.reshape(x, (1,) + shape + (1,)), [x])
    gradcheck(lambda x: x.flatten(), [x])
    if len(shape) >= 2:
        gradcheck(lambda x: x.flatten(1) * 2, [x])
        gradcheck(lambda x: minidl.flatten(x, 0, -2) * 2, [x])


@given(st.data(), shapes(min_dims=1), seeds)
def test_transpose_permute_swapaxes(data, shape, seed):
    x = randn(seed, shape)
    ndim = len(shape)
    perm = data.draw(st.permutations(range(ndim)))
    a, b = data.draw(st.integers(-ndim, ndim - 1)), data.draw(st.integers(-ndim, ndim - 1))
    gradcheck(lambda x: x.permute(*perm), [x])
    if ndim != 2:  # two axes mean a swap (PyTorch), tested below
        gradcheck(lambda x: x.transpose(perm), [x])
    gradcheck(lambda x: x.swapaxes(a, b), [x])
    gradcheck(lambda x: x.T, [x])
    if ndim >= 2:
        gradcheck(lambda x: x.mT, [x])
        gradcheck(lambda x: x.transpose(a, b), [x])


@given(st.data(), shapes(min_dims=1), seeds)
@settings(max_examples=25)
def test_getitem_basic(data, shape, seed):
    key = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    x = randn(seed, shape)
    gradcheck(lambda x: x[key], [x])
    np.testing.assert_array_equal(minidl.tensor(x)[key].numpy(), x[key])


@given(st.data(), shapes(min_dims=1), seeds)
def test_getitem_integer_arrays(data, shape, seed):
    # Small index arrays over small dims: repeated indices are the common case.
    key = data.draw(hnp.integer_array_indices(
        shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5)))
    x = randn(seed, shape)
    gradcheck(lambda x: x[key], [x])
    gradcheck(lambda x: x[tuple(minidl.tensor(k) for k in key)], [x])


def test_getitem_repeated_indices_accumulate():
    x = minidl.tensor(np.arange(4.0), requires_grad=True)
    x[[0, 0, 2, 0]].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 0.0, 1.0, 0.0])
    gradcheck(lambda x: x[np.array([[1, 1], [0, 2]]), 1:], [randn(0, (3, 4))])
    gradcheck(lambda x: x[:, [2, 2, 0]], [randn(1, (2, 3))])


@given(shapes(min_dims=1), seeds)
def test_getitem_boolean_mask(shape, seed):
    x = randn(seed, shape)
    mask = np.random.default_rng(seed + 1).random(shape) > 0.4
    gradcheck(lambda x: x[mask], [x])
    gradcheck(lambda x: x[minidl.tensor(mask)] * 2, [x])
    row_mask = np.random.default_rng(seed + 2).random(shape[0]) > 0.5
    gradcheck(lambda x: x[row_mask], [x])


@given(st.data(), shapes(min_dims=1, max_dims=3, max_side=3), seeds)
def test_concat_stack(data, shape, seed):
    count = data.draw(st.integers(1, 3))
    ndim = len(shape)
    axis = data.draw(st.integers(-ndim, ndim - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=count, max_size=count))
    parts = []
    for i, n in enumerate(sizes):
        s = list(shape)
        s[axis] = n
        parts.append(randn(seed + i, tuple(s)))
    gradcheck(lambda *xs: minidl.concat(xs, axis=axis), parts)
    gradcheck(lambda *xs: minidl.cat(list(xs), dim=axis), parts)
    same = [randn(seed + i, shape) for i in range(count)]
    stack_axis = data.draw(st.integers(-ndim - 1, ndim))
    gradcheck(lambda *xs: minidl.stack(xs, axis=stack_axis), same)


@given(broadcast_shapes(num_shapes=3), seeds)
def test_where(shape3, seed):
    cond = np.random.default_rng(seed).random(shape3[0]) > 0.5
    a, b = randn(seed, shape3[1]), randn(seed + 1, shape3[2])
    gradcheck(lambda a, b: minidl.where(cond, a, b), [a, b])
    gradcheck(lambda a: minidl.where(minidl.tensor(cond), a, 0.5), [a])
    gradcheck(lambda b: minidl.where(cond, -1.0, b), [b])


@given(shapes(), seeds, st.data())
def test_masked_fill(shape, seed, data):
    # a mask of a shape that broadcasts to x's (a trailing part of it, some sides 1)
    keep = data.draw(st.integers(0, len(shape)))
    mask_shape = tuple(s if data.draw(st.booleans()) else 1 for s in shape[len(shape) - keep:])
    mask = np.random.default_rng(seed).random(mask_shape) > 0.5
    x = randn(seed, shape)
    gradcheck(lambda x: x.masked_fill(minidl.tensor(mask), -2.5), [x])
    gradcheck(lambda x, v: minidl.masked_fill(x, mask, v), [x, randn(seed + 1, ())])
    y = minidl.tensor(x.astype(np.float32)).masked_fill(minidl.tensor(mask), 7.0)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y.numpy(), np.where(mask, np.float32(7.0), x.astype(np.float32)))


def test_masked_fill_matches_torch_and_checks_the_mask():
    torch = pytest.importorskip("torch")
    x = np.arange(6).reshape(2, 3)
    mask = np.array([True, False, True])
    for value in (9, 1.7, -3):   # an int tensor takes int(value), as PyTorch
        ours = minidl.tensor(x).masked_fill(minidl.tensor(mask), value)
        theirs = torch.tensor(x).masked_fill(torch.tensor(mask), value)
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    with pytest.raises(TypeError, match="boolean"):
        minidl.randn(2, 3).masked_fill(minidl.tensor([1, 0, 1]), 0.0)
    with pytest.raises(ValueError, match=r"mask's shape \(2, 1, 3\) does not broadcast to the "
                                         r"input's \(2, 3\)"):
        minidl.randn(2, 3).masked_fill(minidl.tensor(np.ones((2, 1, 3), bool)), 0.0)
    with pytest.raises(ValueError, match="0-d tensor"):
        minidl.randn(2, 3).masked_fill(minidl.tensor(mask), minidl.ones(3))


@given(shapes(min_dims=1), seeds, st.data())
def test_split_chunk_flip_repeat_gradcheck_and_match_torch(shape, seed, data):
    x = randn(seed, shape)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    step = data.draw(st.integers(1, 4))
    chunks = data.draw(st.integers(1, 4))
    flips = data.draw(st.sets(st.integers(0, len(shape) - 1)))
    reps = tuple(data.draw(st.lists(st.integers(0, 3), min_size=len(shape),
                                    max_size=len(shape) + 1)))
    cases = [lambda t: t.split(step, dim), lambda t: t.chunk(chunks, dim),
             lambda t: (t.flip(tuple(flips)),), lambda t: (t.repeat(*reps),)]
    for fn in cases:
        gradcheck(lambda t: minidl.cat([p.reshape(-1) for p in fn(t)]), [x])
        check_vs_torch(fn, [x])


@given(shapes(min_dims=1, max_dims=3), seeds, st.data())
def test_gather_gradcheck_and_torch(shape, seed, data):
    dim = data.draw(st.integers(0, len(shape) - 1))
    rng = np.random.default_rng(seed)
    idx_shape = tuple(data.draw(st.integers(1, 4)) if d == dim else
                      data.draw(st.integers(1, s)) for d, s in enumerate(shape))
    index = rng.integers(0, shape[dim], idx_shape)   # repeats too: their gradients add up
    x = randn(seed, shape)
    gradcheck(lambda t: minidl.gather(t, dim, index), [x])
    check_vs_torch(lambda t, i: t.gather(dim, i), [x, index])


def test_split_gather_repeat_bad_input():
    x = minidl.randn(4, 3)
    with pytest.raises(ValueError, match=r"sections \[1, 2\] must be non-negative and add up to 4"):
        x.split([1, 2])
    with pytest.raises(ValueError, match="split_size must be positive"):
        x.split(0)
    with pytest.raises(ValueError, match="chunks must be positive"):
        x.chunk(0)
    with pytest.raises(ValueError, match="name a dim twice"):
        x.flip(0, -2)
    with pytest.raises(ValueError, match=r"1 repeat counts \(2,\) for a tensor of 2 dimensions"):
        x.repeat(2)
    with pytest.raises(IndexError, match="index 4 is out of bounds for dim 0 of size 4"):
        x.gather(0, minidl.tensor([[4, 0, 0]]))
    with pytest.raises(IndexError, match="index -1 is out of bounds"):
        x.gather(0, minidl.tensor([[-1, 0, 0]]))
    with pytest.raises(ValueError, match=r"larger than the input \(4, 3\) outside dim 0"):
        x.gather(0, minidl.tensor(np.zeros((1, 4), np.int64)))
    with pytest.raises(ValueError, match="as many dims"):
        x.gather(0, minidl.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer tensor"):
        x.gather(0, minidl.tensor([[0.0]]))


@st.composite
def expandable(draw):
    """(shape, target, expand sizes with -1s) with shape broadcastable to target."""
    target = draw(shapes(max_dims=4, max_side=3))
    keep = draw(st.integers(0, len(target)))
    tail = target[len(target) - keep:]
    shape = tuple(s if draw(st.booleans()) else 1 for s in tail)
    lead = len(target) - len(shape)
    sizes = tuple(-1 if i >= lead and shape[i - lead] == t and draw(st.booleans()) else t
                  for i, t in enumerate(target))
    return shape, target, sizes


@given(expandable(), seeds)
def test_expand_broadcast_to(case, seed):
    shape, target, sizes = case
    x = randn(seed, shape)
    gradcheck(lambda x: ops.broadcast_to(x, target) * 1.0, [x])
    gradcheck(lambda x: x.broadcast_to(target) * 1.0, [x])
    gradcheck(lambda x: x.expand(*sizes) * 1.0, [x])


@given(st.data(), shapes(min_dims=1), seeds)
def test_pad(data, shape, seed):
    dims = data.draw(st.integers(1, len(shape)))
    widths = data.draw(st.lists(st.integers(0, 2), min_size=2 * dims, max_size=2 * dims))
    value = data.draw(st.sampled_from([0.0, -1.5]))
    x = randn(seed, shape)
    gradcheck(lambda x: ops.pad(x, widths, value=value), [x])
    torch_f = pytest.importorskip("torch.nn.functional")
    check_vs_torch(lambda x: torch_f.pad(x, widths, value=value), [x],
                   lambda x: ops.pad(x, widths, value=value))


def test_out_of_range_dims_raise_index_error_naming_the_range():
    a = minidl.ones(2, 3)
    cases = [  # (call, dim, valid range)
        (lambda: a.permute(3, 0), 3, "[-2, 1]"),
        (lambda: a.transpose(0, 3), 3, "[-2, 1]"),
        (lambda: a.swapaxes(-3, 0), -3, "[-2, 1]"),
        (lambda: a.unsqueeze(4), 4, "[-3, 2]"),
        (lambda: a.unsqueeze(-4), -4, "[-3, 2]"),
        (lambda: minidl.ones(1, 3).squeeze(5), 5, "[-2, 1]"),
        (lambda: a.squeeze((0, 2)), 2, "[-2, 1]"),
        (lambda: a.flatten(3), 3, "[-2, 1]"),
        (lambda: a.flatten(0, -3), -3, "[-2, 1]"),
        (lambda: minidl.cat([a, a], dim=2), 2, "[-2, 1]"),
        (lambda: minidl.stack([a, a], dim=3), 3, "[-3, 2]"),
        (lambda: minidl.tensor(1.0).squeeze(1), 1, "[-1, 0]"),
        (lambda: minidl.nn.functional.softmax(a, 2), 2, "[-2, 1]"),
    ]
    for call, dim, valid in cases:
        with pytest.raises(IndexError, match=rf"dim {dim} is out of range .*{re.escape(valid)}"):
            call()
    # the ends of the ranges are fine
    assert a.unsqueeze(2).shape == (2, 3, 1) and a.unsqueeze(-3).shape == (1, 2, 3)
    assert minidl.stack([a, a], dim=-3).shape == (2, 2, 3)
    assert minidl.cat([a, a], dim=-2).shape == (4, 3)
    with pytest.raises(ValueError, match="permute.*repeats a dim"):
        a.permute(1, -1)
    with pytest.raises(ValueError, match="permute.*expected a permutation of its 2 dims"):
        a.permute(1, 0, 2)


def test_shape_ops_on_a_0d_tensor():
    s = minidl.tensor(np.float64(3.0), requires_grad=True)
    for y in (s.squeeze(0), s.squeeze(-1), s.squeeze(), s.transpose(0, -1), s.T,
              s.permute(), s.swapaxes(-1, 0)):
        assert y.shape == () and y.item() == 3.0
    assert s.unsqueeze(0).shape == (1,) and s.unsqueeze(-1).shape == (1,)
    assert s.flatten().shape == (1,) and s.flatten(0, -1).shape == (1,)
    assert minidl.stack([s, s], dim=-1).shape == (2,)
    gradcheck(lambda t: t.transpose(0, -1).unsqueeze(0).squeeze(-1) * 2, [s])
    with pytest.raises(ValueError, match="concat: cannot concatenate 0-d tensors"):
        minidl.cat([s, s])


def test_empty_list_index_is_an_integer_index():
    x = minidl.tensor(np.ones((4, 3)), requires_grad=True)
    y = x[[]]
    assert y.shape == (0, 3)
    assert x[:, []].shape == (4, 0)
    (y.sum() + x[[1, 1]].sum()).backward()
    np.testing.assert_array_equal(x.grad.numpy()[1], [2.0, 2.0, 2.0])
    check_vs_torch(lambda t: t[[]], [np.ones((4, 3))])


def test_squeeze_unsqueeze_cast():
    x = randn(0, (2, 1, 3))
    gradcheck(lambda x: x.squeeze(1).unsqueeze(0), [x])
    gradcheck(lambda x: ops.squeeze(x) * 2, [x])
    gradcheck(lambda x: x.astype(np.float64) * 2, [x])


# --------------------------------------------------- composites vs torch

def test_torch_parity_mlp_cross_entropy():
    labels = np.array([0, 2, 1, 2])

    def loss(x, w1, b1, w2, fw):
        h = (x @ w1 + b1).relu()
        logits = h @ w2
        z = logits - logits.amax(dim=1, keepdim=True) if fw == "t" else \
            logits - logits.max(axis=1, keepdims=True)
        logp = z - z.exp().sum(dim=1, keepdim=True).log()
        return -logp[np.arange(4), labels].mean()

    check_vs_torch(lambda *a: loss(*a, "t"), [(4, 5), (5, 6), (6,), (6, 3)],
                   lambda *a: loss(*a, "m"))


def test_torch_parity_attention_layernorm():
    def attention(q, k, v, g):
        scores = q @ k.swapaxes(-1, -2) * (1 / np.sqrt(4))
        e = (scores - scores.detach().amax(dim=-1, keepdim=True) if hasattr(scores, "amax")
             else scores - scores.detach().max(axis=-1, keepdims=True)).exp()
        out = (e / e.sum(dim=-1, keepdim=True)) @ v
        mu = out.mean(dim=-1, keepdim=True)
        var = ((out - mu) ** 2).mean(dim=-1, keepdim=True)
        return ((out - mu) / (var + 1e-5).sqrt() * g).tanh()

    check_vs_torch(attention, [(2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 5, 4), (4,)])


def test_torch_parity_elementwise_mix():
    check_vs_torch(
        lambda x, y: ((x * y).sigmoid() + (x - y).abs() / (1 + y ** 2)
                      - x.clamp(-0.5, 0.5) * y.exp() + x.maximum(y)).sum(dim=0).sqrt(),
        [np.abs(randn(0, (3, 4))) + 1, randn(1, (4,), low=0.3)])


def test_torch_parity_shapes_and_indexing():
    idx = np.array([2, 0, 2, 1])

    def fn(x, y):
        z = x.permute(2, 0, 1).reshape(4, 6)[idx] * y
        return (z.flatten()[::3].unsqueeze(0) * 2, z.transpose(0, 1)[1:, :].mean())

    check_vs_torch(fn, [(2, 3, 4), (6,)])
    check_vs_torch(lambda x: x.var(dim=1), [(3, 5)],
                   lambda x: x.var(dim=1, correction=1))


def test_torch_parity_float32_forward_and_grad_dtypes():
    check_vs_torch(lambda x, w: (x @ w).tanh().mean(dim=0) * 0.5, [(8, 4), (4, 3)],
                   dtype=np.float32, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------- dtype discipline

F64 = np.float64
_C = np.full((4,), 0.75)             # a float64 ndarray constant
_M = np.ones((4, 2))                 # a float64 matrix constant

DTYPE_CASES = {
    "add": lambda x: x + 2.5, "radd": lambda x: F64(2.5) + x, "add_arr": lambda x: x + _C,
    "sub": lambda x: x - F64(1), "rsub": lambda x: 1.0 - x, "rsub_arr": lambda x: _C - x,
    "mul": lambda x: x * F64(2), "rmul": lambda x: 3 * x, "mul_0d": lambda x: x * np.array(2.0),
    "div": lambda x: x / 3.0, "rdiv": lambda x: F64(3) / x, "div_arr": lambda x: x / _C,
    "pow": lambda x: x ** 2, "pow_half": lambda x: x ** 0.5, "pow_f64": lambda x: x ** F64(3),
    "pow_arr": lambda x: x ** _C, "rpow": lambda x: 2.0 ** x, "rpow_f64": lambda x: F64(2) ** x,
    "neg": lambda x: -x, "matmul": lambda x: x @ _M, "rmatmul": lambda x: _M.T @ x.T,
    "exp": lambda x: x.exp(), "log": lambda x: x.log(), "sqrt": lambda x: x.sqrt(),
    "abs": lambda x: abs(x), "tanh": lambda x: x.tanh(), "sigmoid": lambda x: x.sigmoid(),
    "relu": lambda x: x.relu(),
    "maximum": lambda x: minidl.maximum(x, F64(0.5)), "minimum": lambda x: minidl.minimum(0.5, x),
    "clip": lambda x: x.clip(F64(0.1), 0.9),
    "sum": lambda x: x.sum(axis=0), "mean": lambda x: x.mean(), "max": lambda x: x.max(1).values,
    "min": lambda x: x.min(dim=0).values, "amax": lambda x: x.amax((0, 1)), "var": lambda x: x.var(1), "std": lambda x: x.std(),
    "reshape": lambda x: x.reshape(-1), "transpose": lambda x: x.T,
    "getitem": lambda x: x[[0, 0]], "mask": lambda x: x[x.numpy() > 0.5],
    "concat": lambda x: minidl.concat([x, x * 2.0]), "stack": lambda x: minidl.stack([x, x]),
    "where": lambda x: minidl.where(x > 0.5, x, 0.0),
    "where_f64": lambda x: minidl.where(x.numpy() > 0.5, F64(1.0), x),
    "expand": lambda x: x.expand(2, 3, 4), "pad": lambda x: ops.pad(x, (1, 1), value=F64(1.5)),
    "int_tensor": lambda x: x * minidl.tensor([1, 2, 3, 4]),
}


@pytest.mark.parametrize("name", sorted(DTYPE_CASES))
def test_float32_stays_float32(name):
    data = np.random.default_rng(0).random((3, 4)).astype(np.float32) + 0.1
    x = minidl.tensor(data, requires_grad=True)
    y = DTYPE_CASES[name](x)
    assert y.dtype == np.float32, f"{name}: forward gave {y.dtype}"
    y.sum().backward()
    assert x.grad.dtype == np.float32, f"{name}: gradient is {x.grad.dtype}"


INT_TO_FLOAT_CASES = {  # float-valued ops on integer tensors: float32, as torch
    "div_scalar": lambda i: i / 2, "div_int": lambda i: i / (i * 0 + 3), "rdiv": lambda i: 6 / i,
    "pow_half": lambda i: i ** 0.5, "rpow": lambda i: 2.0 ** i, "exp": lambda i: i.exp(),
    "log": lambda i: i.log(), "sqrt": lambda i: i.sqrt(), "tanh": lambda i: i.tanh(),
    "sigmoid": lambda i: i.sigmoid(), "clamp_float": lambda i: i.clamp(min=1.5),
    "clamp_np_float": lambda i: i.clip(np.float32(0.5), 2), "clamp_max": lambda i: i.clamp(max=2.5),
}


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
@pytest.mark.parametrize("name", sorted(INT_TO_FLOAT_CASES))
def test_float_ops_on_integer_tensors_give_float32_as_torch(name, dtype):
    torch = pytest.importorskip("torch")
    data = np.array([1, 2, 3, 4]).astype(dtype)
    fn = INT_TO_FLOAT_CASES[name]
    got, expected = fn(minidl.tensor(data)), fn(torch.tensor(data))
    assert got.dtype == np.float32 and expected.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)


def test_integer_results_and_float_inputs_keep_their_dtype():
    i = minidl.tensor([-2, 1, 3])
    assert i.clamp(0, 2).dtype == np.int64 and i.clamp(0, 2).tolist() == [0, 1, 2]
    assert (i ** 2).dtype == np.int64 and abs(i).dtype == np.int64 and i.relu().dtype == np.int64
    np.testing.assert_allclose(i.sigmoid().numpy(), 1 / (1 + np.exp(-np.array([-2, 1, 3]))),
                               rtol=1e-6)
    x = minidl.tensor(np.ones(4, np.float32), requires_grad=True)
    y = x * (minidl.arange(4) / 4)   # a position ramp must not promote the graph
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32
    for dtype in (np.float16, np.float32, np.float64):
        a = np.linspace(0.5, 2, 4).astype(dtype)
        assert ops.arith.as_float(a) is a          # floats pass through, no copy
        for op in ("exp", "sqrt", "sigmoid", "tanh", "log"):
            assert getattr(minidl.tensor(a), op)().dtype == dtype
        assert (minidl.tensor(a) / 2).dtype == dtype


def test_integer_tensor_with_float_gives_float32():
    labels = minidl.tensor([1, 2, 3])
    assert (labels * 0.5).dtype == np.float32
    assert (labels + minidl.tensor([0.5, 1.0, 1.5])).dtype == np.float32
    assert (labels + 1).dtype == np.int64


def test_max_and_min_follow_pytorch():
    data = np.array([[1.0, 5.0, 5.0], [7.0, 2.0, 7.0]])
    x = minidl.tensor(data, requires_grad=True)
    values, indices = x.max(1)                  # (values, indices), as torch.max(x, 1)
    assert values.numpy().tolist() == [5.0, 7.0] and indices.numpy().tolist() == [1, 0]
    result = x.min(dim=0, keepdim=True)
    assert result.values.shape == (1, 3) and result.indices.numpy().tolist() == [[0, 1, 0]]
    values.sum().backward()                     # to the returned (first) maximum only
    assert x.grad.numpy().tolist() == [[0, 1, 0], [1, 0, 0]]
    assert x.max().item() == 7.0 and x.max(axis=1).numpy().tolist() == [5.0, 7.0]
    assert minidl.max(x, minidl.zeros(2, 3) + 6).numpy().tolist() == [[6, 6, 6], [7, 6, 7]]
    with pytest.raises(TypeError, match="use amax"):
        x.max(dim=(0, 1))
    check_vs_torch(lambda t: t.max(1).values, [data], lambda t: t.max(1).values)
    check_vs_torch(lambda t: t.min(0)[0], [data], lambda t: t.min(0)[0])


def test_var_and_std_default_to_bessels_correction_as_pytorch():
    x = minidl.tensor([1.0, 2.0, 3.0, 4.0])
    assert abs(x.var().item() - 5 / 3) < 1e-6 and abs(x.var(ddof=0).item() - 1.25) < 1e-6
    check_vs_torch(lambda t: t.var(dim=1), [(3, 5)])
    check_vs_torch(lambda t: t.std(), [(3, 5)])
    # PyTorch's positional form: var(dim, unbiased, keepdim)
    check_vs_torch(lambda t: t.var(1, False), [(3, 5)])
    check_vs_torch(lambda t: t.std(1, True, True), [(3, 5)])


def test_max_min_keep_the_dim_in_either_spelling():
    x = minidl.tensor(np.arange(9.0).reshape(3, 3))
    for result in (x.max(1, keepdims=True).values, x.max(dim=1, keepdims=True)[0],
                   x.max(axis=1, keepdim=True), x.min(axis=0, keepdims=True)):
        assert result.ndim == 2 and 1 in result.shape
    v, _ = minidl.tensor(2.0).max(0)
    v += 1                                      # a new tensor: the input is unchanged
    assert minidl.tensor(2.0).max(0).values.item() == 2.0


# ------------------------------------------------ review regressions (round 5)

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_silu_are_accurate_in_the_negative_tail(dtype):
    # Regression: 0.5 * tanh(x / 2) + 0.5 cancelled, so float32 sigmoid(-20) was 0
    # (2.06e-9) and sigmoid(-17) 44 % off.
    torch = pytest.importorskip("torch")
    x = np.array([-100, -40, -20, -17, -5, 0, 5, 17, 40], dtype)
    for ours, theirs in ((minidl.sigmoid, torch.sigmoid),
                         (minidl.nn.functional.silu, torch.nn.functional.silu)):
        got = ours(minidl.tensor(x)).numpy()
        want = theirs(torch.tensor(x)).numpy()
        close = np.isclose(got, want, rtol=2e-6 if dtype == np.float32 else 1e-14, atol=0)
        tiny = np.abs(want) < np.finfo(dtype).tiny   # torch flushes denormals there
        assert (close | tiny).all(), (got, want)
    assert minidl.sigmoid(minidl.tensor(x[2:3])).numpy()[0] > 0


INT_AND_ARRAY_KEYS = [(0, slice(None), [1, 2]), (slice(None), [0, 2], -1), (1, ..., [0, 3]),
                      (0, None, slice(None), [1, 2]), ([1, 0], 0, [1, 2]),
                      (0, np.array([[1, 2], [0, 0]]), slice(1, 3)), (..., 0, [1, 1]),
                      (0, slice(None), np.array([True, False, True, True])),
                      (np.array([True, False]), 0, [1, 2]), (-1, [2, 0], None, -2),
                      (0, slice(None), True), (0, slice(None), False),
                      (slice(None), 1, None, True, 2)]   # a bool scalar: a new dim in place


@pytest.mark.parametrize("key", INT_AND_ARRAY_KEYS, ids=str)
def test_int_and_array_indices_follow_torch_order(key):
    # Regression: NumPy counts an int as an advanced index, so x[0, :, [1, 2]] of a
    # (2, 3, 4) tensor was (2, 3), transposed; PyTorch applies the ints first: (3, 2).
    torch = pytest.importorskip("torch")
    a = randn(0, (2, 3, 4, 5))
    tkey = tuple(torch.tensor(k) if isinstance(k, (list, np.ndarray)) else k for k in key)
    mkey = tuple(minidl.tensor(k) if isinstance(k, (list, np.ndarray)) else k for k in key)
    check_vs_torch(lambda x: x[tkey], [a], lambda x: x[mkey])
    want = torch.tensor(a)
    value = randn(1, tuple(want[tkey].shape))
    want[tkey] = torch.tensor(value)
    got = minidl.tensor(a)
    got[mkey] = value
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_pow_tensor_exponent_zero_at_zero_base_has_zero_gradient():
    # Regression: b * a ** (b - 1) is 0 * inf = NaN at a = b = 0.
    a = minidl.tensor([0.0, 2.0, 0.0], requires_grad=True)
    b = minidl.tensor([0.0, 1.0, 2.0])
    (a ** b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [0.0, 1.0, 0.0])


def test_matmul_with_an_empty_contraction_backpropagates():
    # Regression: the shared-weight shortcut reshaped with -1, which NumPy cannot
    # infer for a 0-length dim.
    pytest.importorskip("torch")
    check_vs_torch(lambda a, b: a @ b, [np.zeros((2, 3, 0)), np.zeros((0, 4))])
    check_vs_torch(lambda a, b: a @ b, [np.ones((2, 3, 2)), np.ones((2, 0))])


def test_var_gradient_is_not_finite_where_the_variance_is_not():
    # Regression: backward divided by max(N - correction, 1), a finite gradient for a
    # NaN or infinite variance.
    x = minidl.tensor(np.array([1.5]), requires_grad=True)
    x.var(correction=1).backward()
    assert np.isnan(x.grad.numpy()).all()
    x = minidl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    x.var(correction=2).backward()
    assert np.isinf(x.grad.numpy()).all()


def test_integer_scalars_of_every_kind_index_as_ints():
    # Regression: a NumPy int or a 0-d tensor (t.argmax()) in a key with arrays was not
    # taken as an int (wrong layout, or a crash when writing); a bool scalar used a dim.
    torch = pytest.importorskip("torch")
    a = randn(0, (2, 3, 4))
    i = minidl.tensor(np.array([0.0, 5.0])).argmax()   # a 0-d int64 tensor, value 1
    for mkey, tkey in [((np.int64(1), slice(None), [1, 2]), (1, slice(None), [1, 2])),
                       ((i, slice(None), minidl.tensor([1, 2])), (1, slice(None), [1, 2])),
                       ((0, True, [1, 2]), (0, True, [1, 2])),
                       ((np.int32(1), np.int64(2)), (1, 2))]:
        check_vs_torch(lambda x: x[tkey], [a], lambda x: x[mkey])
        want = torch.tensor(a)
        want[tkey] = 5.0
        got = minidl.tensor(a)
        got[mkey] = 5.0
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_chunk_of_an_empty_dim_and_gather_of_a_scalar_follow_torch():
    torch = pytest.importorskip("torch")
    pieces = minidl.zeros(0, 6).chunk(2)
    assert [p.shape for p in pieces] == [tuple(p.shape) for p in torch.zeros(0, 6).chunk(2)]
    g = minidl.gather(minidl.tensor(3.0), 0, minidl.tensor([0, 0]))
    assert g.shape == (2,) and g.numpy().tolist() == [3.0, 3.0]
    with pytest.raises(IndexError, match="out of bounds for a 0-d input"):
        minidl.gather(minidl.tensor(3.0), 0, minidl.tensor([1]))


# ------------------------------------------------ review regressions (round 7)

def test_long_float32_reductions_accumulate_in_float64():
    # Regression: NumPy adds rows one after another along a non-contiguous axis, so a
    # float32 mean over dim 0 of a tall array drifted (2.5 % at 4e6 rows).
    x = np.full((200_000, 2), 1.05, np.float32)
    want = np.float64(np.float32(1.05))
    t = minidl.tensor(x, requires_grad=True)
    assert abs(t.mean(0).numpy()[0] / want - 1) < 1e-6
    assert abs(t.sum(dim=0).numpy()[0] / (200_000 * want) - 1) < 1e-6
    assert t.mean(0).dtype == np.float32
    lin = minidl.nn.Linear(2, 1)
    lin(t).sum().backward()      # the bias gradient sums the 200,000 rows
    assert abs(lin.bias.grad.numpy()[0] / 200_000 - 1) < 1e-6


def test_float32_variance_with_a_large_offset_is_accurate():
    # Regression: the float32 mean's rounding error went squared into the variance
    # (0.3 % off for 1e4 + N(0, 0.01)); the corrected two-pass formula takes it out.
    torch = pytest.importorskip("torch")
    x = (1e4 + 0.01 * np.random.default_rng(0).standard_normal(10_000)).astype(np.float32)
    want = torch.tensor(x).double().var().item()
    assert abs(minidl.tensor(x).var().item() / want - 1) < 1e-5
    assert abs(minidl.tensor(x).std().item() / want ** 0.5 - 1) < 1e-5
    assert minidl.tensor(np.full(5, 3.0, np.float32)).std().item() == 0.0


def test_max_of_a_tensor_with_nan_sends_the_gradient_to_the_nans():
    x = minidl.tensor(np.array([1.0, np.nan, 2.0, np.nan]), requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.5, 0.0, 0.5])


def test_means_of_nothing_are_nan_without_a_warning():
    # (the suite turns warnings into errors)
    assert np.isnan(minidl.zeros(0).mean().item())
    assert np.isnan(minidl.zeros(0, 3).var(0).numpy()).all()
    assert minidl.zeros(0, 3).mean(dim=0, keepdim=True).shape == (1, 3)
    x = minidl.zeros(0, requires_grad=True)
    assert np.isnan(minidl.nn.functional.mse_loss(x, minidl.zeros(0)).item())
    assert np.isnan(minidl.nn.functional.binary_cross_entropy_with_logits(
        x, minidl.zeros(0)).item())


@given(shapes(min_dims=1), seeds, st.data())
def test_logsumexp_gradcheck_and_torch(shape, seed, data):
    dims = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1,
                              max_size=len(shape), unique_by=lambda d: d % len(shape)))
    keep = data.draw(st.booleans())
    x = randn(seed, shape) * 30   # large enough that a plain exp would lose digits
    gradcheck(lambda t: minidl.logsumexp(t, tuple(dims), keep), [x])
    check_vs_torch(lambda t: t.logsumexp(tuple(dims), keep), [x])


def test_logsumexp_at_infinities_and_huge_values_as_torch():
    torch = pytest.importorskip("torch")
    x = np.array([[-np.inf, -np.inf], [1.0, np.inf], [1e4, 1e4 - 1], [1.0, 2.0]], np.float32)
    ours = minidl.tensor(x, requires_grad=True)
    theirs = torch.tensor(x, requires_grad=True)
    y, ty = ours.logsumexp(1), theirs.logsumexp(1)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-6)
    y.backward(minidl.ones(4))   # (y.sum() would add -inf and inf)
    ty.backward(torch.ones(4))
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-6)
    assert minidl.logsumexp(minidl.zeros(0, 3), 0).numpy().tolist() == [-np.inf] * 3
    assert minidl.logsumexp(minidl.tensor([1, 2]), 0).dtype == np.float32


def test_amax_keeps_nan_gradients_where_the_full_max_sends_them_to_the_nans():
    # torch.amax over a dim: NaN across a slice whose result is NaN; x.max() over
    # everything: the gradient goes to the NaN elements
    torch = pytest.importorskip("torch")
    a = np.array([[1.0, np.nan], [2.0, 2.0]])
    for ours, theirs in ((lambda t: t.amax(dim=1), lambda t: t.amax(dim=1)),
                         (lambda t: t.amin(dim=0), lambda t: t.amin(dim=0)),
                         (lambda t: t.max(), lambda t: t.max())):
        x, tx = minidl.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
        ours(x).sum().backward()
        theirs(tx).sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


def test_reductions_take_numpy_arrays_as_the_other_ops():
    # Regression: torch.max(outputs.data, 1) style calls on an array crashed with
    # "'memoryview' object has no attribute 'argmax'"
    a = np.array([[1.0, 3.0], [4.0, 2.0]], np.float32)
    values, indices = minidl.max(a, 1)
    assert values.numpy().tolist() == [3.0, 4.0] and indices.numpy().tolist() == [1, 0]
    assert minidl.argmax(a, dim=1).numpy().tolist() == [1, 0]
    assert minidl.mean(a).item() == 2.5 and minidl.sum(a, dim=0).numpy().tolist() == [5.0, 5.0]
    assert abs(minidl.std(a).item() - np.std(a, ddof=1)) < 1e-6
    assert minidl.amin(a).item() == 1.0 and minidl.logsumexp(a, 1).shape == (2,)


@given(shapes(), seeds)
def test_sin_cos_gradcheck_and_torch(shape, seed):
    x = randn(seed, shape) * 3
    gradcheck(lambda t: minidl.sin(t) * minidl.cos(t * 0.5), [x])
    check_vs_torch(lambda t: t.sin() + t.cos(), [x])
    assert minidl.sin(minidl.tensor([1, 2])).dtype == np.float32


@given(shapes(min_dims=2, max_dims=4), seeds, st.integers(-3, 3))
def test_tril_triu_gradcheck_and_torch(shape, seed, diagonal):
    x = randn(seed, shape)
    gradcheck(lambda t: minidl.tril(t, diagonal) * 2 + minidl.triu(t, diagonal), [x])
    check_vs_torch(lambda t: t.tril(diagonal) - t.triu(diagonal) * 3, [x])
    with pytest.raises(ValueError, match="at least 2 dims"):
        minidl.tril(minidl.ones(3))
