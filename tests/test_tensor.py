"""The Tensor API: construction dtype rules, conversions, non-differentiable
ops, error messages for bad input, seeding and threads."""
from __future__ import annotations

import numpy as np
import pytest

import minidl
from minidl import ops


# ------------------------------------------------------------------ dtypes

@pytest.mark.parametrize("data, dtype", [
    (np.zeros(3, np.float64), np.float64),    # NumPy arrays keep their dtype
    (np.zeros(3, np.float32), np.float32),
    (np.zeros(3, np.float16), np.float16),
    (np.zeros(3, np.int32), np.int32),
    (np.zeros(3, np.uint8), np.uint8),
    (np.zeros(3, bool), np.bool_),
    (1.5, np.float32),                         # Python floats -> float32
    ([1.0, 2], np.float32),
    ([[0.5], [1.5]], np.float32),
    (3, np.int64),                             # Python ints -> int64, as torch
    ([1, 2, 3], np.int64),
    (True, np.bool_),
    ([True, False], np.bool_),
])
def test_tensor_dtype_rules(data, dtype):
    t = minidl.tensor(data)
    assert t.dtype == dtype
    np.testing.assert_array_equal(t.numpy(), np.asarray(data))


def test_tensor_from_a_tensor_and_explicit_dtype():
    t = minidl.tensor([1, 2], dtype=np.float64)
    assert t.dtype == np.float64
    assert minidl.tensor(t).dtype == np.float64
    assert minidl.Tensor(np.arange(3), dtype=np.float32).dtype == np.float32


def test_factories_default_to_float32():
    for t in (minidl.zeros(2, 3), minidl.ones((2, 3)), minidl.randn(2), minidl.rand(2),
              minidl.full((2,), 1.5), minidl.linspace(0, 1, 3), minidl.eye(2)):
        assert t.dtype == np.float32
    assert minidl.zeros(2, 3).shape == (2, 3)
    assert minidl.arange(3).dtype == np.int64
    assert minidl.arange(0.0, 1.0, 0.5).dtype == np.float32
    assert minidl.randint(0, 5, (4,)).dtype == np.int64


# ----------------------------------------------------------- conversions

def test_properties_and_conversions():
    a = np.arange(6.0).reshape(2, 3)
    t = minidl.from_numpy(a).requires_grad_()
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and t.numel() == 6
    assert t.size() == (2, 3) and t.size(1) == 3 and t.size(-2) == 2   # PyTorch's size()
    with pytest.raises(IndexError, match="dim 2"):
        t.size(2)
    assert t.device == "cpu" and t.is_leaf and t.grad is None
    assert t._data is a  # from_numpy shares the array
    assert t.to("cpu") is t
    assert t.cpu() is t
    assert t.to(np.float32).dtype == np.float32
    assert t.to("cpu", np.float32).dtype == np.float32
    assert t.to(np.float32).requires_grad
    # a dtype change is differentiable: the gradient reaches t in its own dtype
    (t.to(np.float32) * 2).sum().backward()
    assert t.grad.dtype == np.float64
    np.testing.assert_array_equal(t.grad.numpy(), np.full((2, 3), 2.0))
    h = (t * 1).to("float32")
    assert h.creator is not None and h.dtype == np.float32
    assert minidl.tensor([1, 2]).to(np.float32).dtype == np.float32
    n = t.numpy()
    assert isinstance(n, np.ndarray)
    np.testing.assert_array_equal(n, a)
    assert minidl.tensor(2.5).item() == 2.5
    assert isinstance(minidl.tensor(3).item(), int)
    assert float(minidl.tensor([1.5])) == 1.5
    assert t.tolist() == a.tolist()
    assert "requires_grad=True" in repr(t) and "float64" in repr(t)
    with pytest.raises(ValueError, match=r"item\(\).*shape \(2, 3\)"):
        t.item()
    with pytest.raises(ValueError, match="ambiguous"):
        bool(t)


def test_detach_shares_data_and_cuts_grad():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    d = y.detach()
    assert d._data is y._data and not d.requires_grad and d.creator is None
    assert d.is_leaf


def test_comparisons_and_argmax_are_not_differentiable():
    x = minidl.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]], requires_grad=True)
    for out in (x > 1, x >= 1.0, x < x, x <= 2, x == 3.0, x != x):
        assert out.dtype == np.bool_ and not out.requires_grad and out.creator is None
    np.testing.assert_array_equal((x > 1.5).numpy(), [[False, True, True], [False, False, True]])
    am = x.argmax(dim=1)
    assert am.dtype == np.int64 and not am.requires_grad
    np.testing.assert_array_equal(am.numpy(), [1, 2])
    assert minidl.argmax(x).item() == 5
    np.testing.assert_array_equal(x.argmin(axis=0, keepdims=True).numpy(), [[1, 1, 0]])
    # a comparison mask can index and select without breaking the graph
    minidl.where(x > 1, x, 0.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 1, 1], [0, 0, 1]])


def test_reflected_ops_with_numpy_operands_return_tensors():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    for y in (np.float64(2) * x, np.ones(2) + x, np.ones((3, 2)) @ x, 1 - x, 2 / x):
        assert isinstance(y, minidl.Tensor) and y.requires_grad


# ---------------------------------------------------------------- errors

def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match=r"floating-point.*int64"):
        minidl.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match=r"floating-point.*int32"):
        minidl.tensor(np.zeros(2, np.int32)).requires_grad_()
    with pytest.raises(TypeError, match=r"floating-point.*bool"):
        minidl.zeros(2, dtype=bool, requires_grad=True)


def test_matmul_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"matmul.*\(2, 3\).*\(4, 5\)"):
        minidl.ones(2, 3) @ minidl.ones(4, 5)
    with pytest.raises(ValueError, match=r"matmul.*\(7, 2, 3\).*\(2,\)"):
        minidl.ones(7, 2, 3) @ minidl.ones(2)
    with pytest.raises(ValueError, match=r"matmul.*at least one dimension"):
        minidl.ones(3) @ minidl.tensor(2.0)


def test_broadcast_mismatch_names_op_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"Add.*\(2, 3\) float32.*\(4,\) float32"):
        minidl.ones(2, 3) + minidl.ones(4)
    with pytest.raises(ValueError, match=r"Mul.*\(2, 3\) float64.*\(2,\) float64"):
        minidl.ones(2, 3, dtype=np.float64) * np.ones(2)
    with pytest.raises(ValueError, match=r"Where.*\(3,\).*\(2,\)"):
        minidl.where(np.ones(3, bool), minidl.ones(3), minidl.ones(2))
    with pytest.raises(ValueError, match=r"broadcast_to.*\(2, 3\) to \(4, 4\)"):
        ops.broadcast_to(minidl.ones(2, 3), (4, 4))


def test_other_shape_errors_name_the_op():
    with pytest.raises(ValueError, match=r"reshape.*\(2, 3\).*\(4,\)"):
        minidl.ones(2, 3).reshape(4)
    with pytest.raises(ValueError, match=r"concat.*\(2, 3\).*\(3, 2\)"):
        minidl.concat([minidl.ones(2, 3), minidl.ones(3, 2)])
    with pytest.raises(ValueError, match=r"stack.*\(2,\).*\(3,\)"):
        minidl.stack([minidl.ones(2), minidl.ones(3)])
    with pytest.raises(IndexError, match=r"getitem.*shape \(2, 3\)"):
        minidl.ones(2, 3)[5]
    with pytest.raises(ValueError, match=r"permute.*\(2, 3\)"):
        minidl.ones(2, 3).permute(0, 0)


def test_backward_errors():
    x = minidl.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match=r"backward.*one element.*shape \(2, 3\)"):
        y.backward()
    loss = y.sum()
    loss.backward()
    with pytest.raises(RuntimeError, match=r"backward.*second time.*<Sum>.*retain_graph"):
        loss.backward()


# ------------------------------------------------------- seeding, threads

def test_manual_seed_reproducible_and_independent_of_numpy_global_state():
    minidl.manual_seed(123)
    a = (minidl.randn(3, 4), minidl.rand(5), minidl.randint(0, 10, (6,)))
    np.random.seed(0)
    np.random.rand(100)  # the user's own NumPy use does not disturb minidl's stream
    minidl.manual_seed(123)
    b = (minidl.randn(3, 4), minidl.rand(5), minidl.randint(0, 10, (6,)))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    minidl.manual_seed(124)
    assert not np.array_equal(minidl.randn(3, 4).numpy(), a[0].numpy())

    np.random.seed(7)
    expected = np.random.rand(3)
    np.random.seed(7)
    minidl.manual_seed(1)
    minidl.randn(10)
    np.testing.assert_array_equal(np.random.rand(3), expected)  # NumPy's state untouched
    assert minidl.manual_seed(5) is minidl.default_generator()
    with pytest.raises(ValueError, match="non-negative"):
        minidl.manual_seed(-1)


def test_set_num_threads(monkeypatch):
    numba = pytest.importorskip("numba")
    old = minidl.get_num_threads()
    try:
        assert minidl.set_num_threads(1) == 1
        assert minidl.get_num_threads() == 1
        assert numba.get_num_threads() == 1
        with pytest.raises(ValueError, match="positive"):
            minidl.set_num_threads(0)
    finally:
        minidl.set_num_threads(old)
    for var in ("MINIDL_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert minidl.backend._default_threads() == 1
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    assert minidl.backend._default_threads() == 2


# ------------------------------------------- PyTorch's construction rules

def test_tensor_copies_what_it_is_given_and_from_numpy_shares():
    a = np.array([1.0, 2.0], np.float32)
    t = minidl.tensor(a, requires_grad=True)
    t._data -= 1          # what an optimizer step does
    np.testing.assert_array_equal(a, [1.0, 2.0])
    u = minidl.tensor(t)
    t._data += 5
    np.testing.assert_array_equal(u.numpy(), [0.0, 1.0])
    shared = minidl.from_numpy(a)
    shared._data += 1
    np.testing.assert_array_equal(a, [2.0, 3.0])
    with pytest.raises(TypeError, match="from_numpy: expected a numpy.ndarray, got list"):
        minidl.from_numpy([1, 2])


def test_tensor_dtype_is_applied_directly_and_big_ints_are_refused():
    t = minidl.tensor([0.1, 2.0**40 + 1], dtype=np.float64)
    assert t.numpy().tolist() == [0.1, 2.0**40 + 1]   # never rounded through float32
    assert minidl.tensor(np.float64(1.5)).dtype == np.float64   # NumPy scalars keep theirs
    assert minidl.tensor(np.int32(1)).dtype == np.int32
    with pytest.raises(OverflowError, match="out of the range of int64"):
        minidl.tensor([2**63])


def test_full_takes_the_fill_values_dtype_and_randint_both_forms():
    assert minidl.full((2,), 3).dtype == np.int64
    assert minidl.full((2,), True).dtype == np.bool_
    assert minidl.full((2,), 1.5).dtype == np.float32
    assert minidl.full((1,), 2**40 + 1).numpy().tolist() == [2**40 + 1]
    assert minidl.full((2,), 3, dtype=np.float64).dtype == np.float64
    minidl.manual_seed(0)
    a = minidl.randint(10, (3,))
    minidl.manual_seed(0)
    b = minidl.randint(0, 10, (3,))
    assert a.shape == (3,) and np.array_equal(a.numpy(), b.numpy())
    assert minidl.randint(10, size=(2, 2)).shape == (2, 2)
    with pytest.raises(ValueError, match="step must be non-zero"):
        minidl.arange(0, 5, 0)


def test_any_all_and_the_truth_value_message():
    t = minidl.tensor([0.0, 2.0])
    assert bool(t.any()) and not bool(t.all())
    assert t.any(dim=0).shape == () and minidl.zeros(2, 3).all(dim=1, keepdim=True).shape == (2, 1)
    with pytest.raises(ValueError, match=r"ambiguous; use \.any\(\) or \.all\(\)"):
        bool(t)


def test_manual_seed_reseeds_a_generator_taken_earlier():
    handle = minidl.random.default_generator()
    minidl.manual_seed(3)
    first = handle.random()
    minidl.manual_seed(3)
    assert minidl.random.default_generator() is handle and handle.random() == first


def test_review_followups_on_construction_size_randint_argmax():
    import copy
    import pickle
    for bad in (None, [1, None], "1.5", np.str_("ab")):
        for dtype in (None, np.float32):
            with pytest.raises(TypeError, match="cannot make a tensor"):
                minidl.tensor(bad, dtype=dtype)
    size = minidl.zeros(2, 3).size
    assert pickle.loads(pickle.dumps(size)) == 6 and copy.deepcopy(size)(1) == 3
    with pytest.raises(IndexError, match="dim 0"):
        minidl.tensor(1.0).size(0)
    assert minidl.randint(0, 10, (3,), "cpu").shape == (3,)   # device stays 4th
    assert minidl.randint(5, (2,), dtype=np.int32).dtype == np.int32
    with pytest.raises(ValueError, match="expected one axis"):
        minidl.zeros(2, 3).argmax(dim=())
    assert int(minidl.tensor(2.0).argmax(0)) == 0
    assert minidl.nn.functional.dropout(minidl.tensor([1, 2, 3]), 0.5).dtype == np.float32


def test_in_place_ops_update_outside_autograd_and_refuse_inside():
    from minidl import nn
    lin = nn.Linear(2, 1)
    lin(minidl.ones(3, 2)).sum().backward()
    before, grad = lin.weight.numpy().copy(), lin.weight.grad.numpy().copy()
    with minidl.no_grad():
        for p in lin.parameters():
            p -= 0.1 * p.grad            # the textbook manual SGD step
    np.testing.assert_allclose(lin.weight.numpy(), before - 0.1 * grad, rtol=1e-6)
    with pytest.raises(RuntimeError, match="a leaf tensor that requires grad"):
        lin.weight += 1                  # as PyTorch
    with pytest.raises(RuntimeError, match="in-place"):
        lin.weight[0, 0] = 0.0
    # while recording, x += y on a non-leaf builds x + y: summing losses works
    total = 0
    for _ in range(3):
        total += lin(minidl.ones(1, 2)).sum()
    lin.weight.grad = None
    total.backward()
    assert lin.weight.grad.numpy().tolist() == [[3.0, 3.0]]
    x = minidl.tensor([1.0, -2.0, 3.0])
    alias = x
    alias += 1                           # the same tensor, changed in place
    assert x.numpy().tolist() == [2.0, -1.0, 4.0]
    x[x < 0] = 0
    assert x.numpy().tolist() == [2.0, 0.0, 4.0]
    x.mul_(2).add_(minidl.ones(3), alpha=0.5).sub_(1)
    assert x.numpy().tolist() == [3.5, -0.5, 7.5]
    x.zero_()
    assert not x.numpy().any()
    x.fill_(2.5).copy_(minidl.tensor([1.0, 2.0, 3.0]))
    assert x.numpy().tolist() == [1.0, 2.0, 3.0]
    counts = minidl.tensor([1, 2])
    with pytest.raises(TypeError):       # an int tensor cannot take a float, as in PyTorch
        counts += 0.5
    lin.weight.grad.zero_()
    assert not lin.weight.grad.numpy().any()
    with pytest.raises(TypeError, match="alpha must not be a float"):
        counts.add_(minidl.tensor([1, 1]), alpha=0.5)
    with pytest.raises(ValueError, match="fill_: expects a number or a 0-d tensor"):
        x.fill_(minidl.ones(3))
    with minidl.enable_grad():               # while recording, x += y keeps shape and dtype
        h = lin(minidl.ones(2, 2))           # (2, 1), on the graph
        with pytest.raises(RuntimeError, match="keeps the shape"):
            h += minidl.ones(2, 3)
        h += minidl.tensor(np.ones((2, 1)))  # float64 added to float32
        assert h.dtype == np.float32


def test_clone_contiguous_t_and_conversion_methods():
    from minidl.testing import gradcheck
    x = minidl.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    c = x.clone()
    assert c._data is not x._data and c.numpy().tolist() == x.numpy().tolist()
    gradcheck(lambda t: t.clone() * 2.0, [np.random.default_rng(0).standard_normal((2, 3))])
    assert x.contiguous() is x and x.T.contiguous()._data.flags.c_contiguous
    assert x.t().shape == (3, 2) and minidl.ones(3).t().shape == (3,)
    with pytest.raises(ValueError, match="at most 2 dims"):
        minidl.ones(2, 2, 2).t()
    assert x.int().dtype == np.int32 and (x > 2).bool().dtype == np.bool_
    np.testing.assert_allclose(x.softmax(1).numpy().sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(x.log_softmax(-1).exp().numpy().sum(axis=1), 1, rtol=1e-6)


def test_randperm_is_a_seeded_permutation():
    minidl.manual_seed(5)
    a = minidl.randperm(10)
    minidl.manual_seed(5)
    b = minidl.randperm(10)
    assert a.dtype == np.int64 and sorted(a.numpy().tolist()) == list(range(10))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert minidl.randperm(0).shape == (0,)
    assert minidl.randperm(4, dtype=np.int32).dtype == np.int32
    own = minidl.randperm(6, generator=np.random.default_rng(1)).numpy()
    np.testing.assert_array_equal(own, np.random.default_rng(1).permutation(6))
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="non-negative int"):
            minidl.randperm(bad)


def test_data_and_requires_grad_assignments_are_checked_as_torch():
    # Regression: p.data = p.data - lr * p.grad stored a Tensor inside the Tensor (a
    # crash later); y.requires_grad = False on a computed tensor cut the graph silently.
    p = minidl.tensor([1.0, 2.0], requires_grad=True)
    (p * p).sum().backward()
    p.data = p.data - 0.5 * p.grad
    assert type(p._data) is np.ndarray and p.data.tolist() == [0.0, 0.0]
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    with pytest.raises(RuntimeError, match="only be turned off on leaf tensors"):
        y.requires_grad = False
    with pytest.raises(TypeError, match="only floating-point tensors can require gradients"):
        minidl.tensor([1, 2]).requires_grad = True
    x.requires_grad = False
    assert not (x * 2).requires_grad


def test_numpy_array_of_a_tensor_is_a_copy():
    # Regression: np.array(t) returned the tensor's own memory, so a "snapshot" of the
    # weights changed with the next optimizer step.
    t = minidl.tensor([1.0, 2.0])
    snapshot, shared = np.array(t), np.asarray(t)
    t._data[0] = 9.0
    assert snapshot.tolist() == [1.0, 2.0] and shared[0] == 9.0
    assert np.array(t, dtype=np.float64).dtype == np.float64


def test_narrow_int_dtype_out_of_range_and_int_linspace_as_torch():
    for value, dtype in ((2**40, np.int32), (256, np.uint8), (300, np.int8), (-1, np.uint8)):
        with pytest.raises(OverflowError, match=f"out of the range of {np.dtype(dtype)}"):
            minidl.tensor([value], dtype=dtype)
    assert minidl.tensor([255], dtype=np.uint8).numpy().tolist() == [255]
    # PyTorch truncates toward zero; NumPy's integer linspace rounds down
    assert minidl.linspace(-10, 0, 4, dtype=np.int64).numpy().tolist() == [-10, -6, -3, 0]


def test_comparing_with_none_or_a_string_is_false_as_python():
    t = minidl.tensor([1.0])
    assert (t == None) is False and (t != "relu") is True   # noqa: E711
    assert t in [None, t]
    with pytest.raises(TypeError):
        t < None   # noqa: B015


def test_tensor_constructor_takes_options_by_keyword_only():
    # torch.Tensor(2, 3) is a 2x3 tensor; minidl.Tensor(2.0, 3) silently required grad
    with pytest.raises(TypeError, match="positional"):
        minidl.Tensor(2.0, 3)
    assert minidl.Tensor(2.0, requires_grad=True).requires_grad


def test_data_is_a_tensor_outside_the_graph_sharing_memory_as_torch():
    # PyTorch's idioms on .data: p.grad.data.zero_(), out.data.max(1)[1],
    # p.data -= lr * p.grad.data, w.data.std() (N - 1)
    w = minidl.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]], requires_grad=True)
    (w * w).sum().backward()
    d = w.data
    assert isinstance(d, minidl.Tensor) and not d.requires_grad and d.creator is None
    assert np.shares_memory(d.numpy(), w.numpy())
    assert w.data.max(1)[1].numpy().tolist() == [1, 0]
    assert abs(w.data.std().item() - np.std(w.numpy(), ddof=1)) < 1e-6
    with minidl.no_grad():
        w.data -= 0.25 * w.grad.data          # in place, into w's own array
    assert w.numpy().tolist() == [[0.5, 2.5, 1.0], [3.5, 0.0, 1.5]]
    w.grad.data.zero_()
    assert not w.grad.numpy().any()
    y = w * 2
    assert not y.data.requires_grad and y.requires_grad


def test_data_setter_refuses_an_int_array_on_a_tensor_that_requires_grad():
    p = minidl.nn.Parameter(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="data: only floating-point tensors can require"):
        p.data = np.array([1, 2, 3])
    assert p.dtype == np.float32
    q = minidl.tensor([1.0])
    q.data = np.array([4, 5])                 # no gradient needed: any dtype, as PyTorch
    assert q.dtype == np.int64


def test_tensors_pickled_before_the_checked_properties_still_load():
    # The slots were named data and requires_grad; pickles keep the names.
    t = minidl.Tensor.__new__(minidl.Tensor)
    t.__setstate__((None, {"data": np.array([1.0, 2.0]), "grad": None,
                           "requires_grad": True, "creator": None, "generation": 0,
                           "_out_index": 0, "_retains_grad": False}))
    assert t.requires_grad and t.numpy().tolist() == [1.0, 2.0]
    (t * 3).sum().backward()
    assert t.grad.numpy().tolist() == [3.0, 3.0]


def test_pytorch_spellings_of_devices_dtypes_masks_and_comparisons():
    # the boilerplate of most PyTorch scripts
    device = minidl.device("cuda" if minidl.cuda.is_available() else "cpu")
    assert device in ("cpu", "cuda") and minidl.device("cuda:0") == "cuda"
    assert minidl.device("cuda:1").type == "cuda" and minidl.device("cuda:1").index == 1
    assert isinstance(device, minidl.device) and device.type == str(device)
    x = minidl.tensor([1.5, -2.0, 3.0]).to(device)
    assert x.to(minidl.long).dtype == np.int64 and x.to(minidl.double).dtype == np.float64
    assert minidl.float == np.float32 and minidl.bool == np.bool_ and minidl.int == np.int32
    with pytest.raises(TypeError):   # dtypes, not NumPy's callable scalar types
        minidl.int(3.9)
    pred, target = minidl.tensor([1, 2, 3]), minidl.tensor([[1], [0], [3]])
    assert pred.eq(target.view_as(pred)).sum().item() == 2
    assert x.gt(0).numpy().tolist() == [True, False, True]
    a, b = x > 0, x < 2
    assert (a & b).numpy().tolist() == [True, False, False]
    assert (a | b).numpy().tolist() == [True, True, True]
    assert (a ^ b).numpy().tolist() == [False, True, True]
    assert (~a).numpy().tolist() == [False, True, False]
    assert (minidl.tensor([6]) & 3).numpy().tolist() == [2]
    alias = a
    a &= b                                  # in place: every reference sees it
    assert alias.numpy().tolist() == [True, False, False] and a is alias
    with pytest.raises(TypeError, match="needs a bool or integer tensor"):
        ~x


def test_set_grad_enabled_and_inference_mode_as_torch():
    x = minidl.ones(2, requires_grad=True)
    for train in (True, False):
        with minidl.set_grad_enabled(train):
            assert (x * 2).requires_grad is train
    assert minidl.is_grad_enabled()
    minidl.set_grad_enabled(False)           # a plain call sets the mode from then on
    try:
        assert not minidl.is_grad_enabled() and not (x * 2).requires_grad
    finally:
        minidl.set_grad_enabled(True)
    assert minidl.is_grad_enabled()

    @minidl.set_grad_enabled(False)
    def frozen(t):
        return t * 2
    assert minidl.is_grad_enabled() and not frozen(x).requires_grad

    @minidl.inference_mode
    def bare(t):
        return t * 2
    assert not bare(x).requires_grad
    with minidl.inference_mode(False):
        assert (x * 2).requires_grad

    @minidl.inference_mode()
    def evaluate(t):
        return t * 3
    assert not evaluate(x).requires_grad and minidl.is_grad_enabled()
