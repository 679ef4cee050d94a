"""The backward engine: deep graphs, freeing, accumulation, memory, sharing."""
from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest

import minidl
from minidl import Function


def test_100k_op_chain_backprops_without_recursion_error():
    x = minidl.tensor(np.ones(3), requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones(3))


def test_100k_op_graph_is_freed_without_backward():
    x = minidl.tensor(np.ones(3), requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y + 0.0
    probe = weakref.ref(y.creator)
    del y  # deallocating a deep chain must not overflow the C stack
    assert probe() is None


def test_second_backward_raises_and_retain_graph_allows_it():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match=r"second time.*retain_graph=True"):
        loss.backward()

    x.zero_grad()
    loss = (x.exp() * 2).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * np.exp([1.0, 2.0]), rtol=1e-6)


def test_backward_frees_saved_arrays():
    x = minidl.tensor(np.ones((4, 4)), requires_grad=True)
    h = x.exp()
    f = h.creator
    h.sum().backward()
    assert f.inputs is None and not hasattr(f, "y")


def test_gradients_accumulate_until_zeroed():
    x = minidl.tensor([1.0, -2.0], requires_grad=True)
    for _ in range(3):
        (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [9.0, 9.0])
    x.zero_grad()
    assert x.grad is None
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, -4.0])


def test_value_used_twice_gets_summed_gradient():
    x = minidl.tensor([3.0], requires_grad=True)
    (x * x).sum().backward()
    assert x.grad.item() == 6.0

    # a diamond with branches of different depths: every consumer of `a`
    # must run before `a`'s producer
    x.zero_grad()
    a = x * 2
    b = a.exp().log().tanh()
    c = a * a
    (b + c + a).sum().backward()
    expected = 2 * (1 - np.tanh(6.0) ** 2) + 2 * 2 * 6.0 + 2
    np.testing.assert_allclose(x.grad.numpy(), [expected], rtol=1e-6)


def test_leaves_fed_by_one_add_do_not_share_a_grad_array():
    a = minidl.tensor(np.zeros(3), requires_grad=True)
    b = minidl.tensor(np.zeros(3), requires_grad=True)
    (a + b).sum().backward()
    a.grad._data += 5.0  # e.g. an in-place weight-decay hook
    np.testing.assert_array_equal(b.grad.numpy(), np.ones(3))
    assert not np.shares_memory(a.grad._data, b.grad._data)

    # the same for an explicit grad the caller still owns, and for a leaf
    # reached twice through views
    g = np.ones(3)
    c = minidl.tensor(np.zeros(3), requires_grad=True)
    (c + a).backward(g)
    c.grad._data *= 7
    np.testing.assert_array_equal(g, np.ones(3))
    d = minidl.tensor(np.zeros((2, 2)), requires_grad=True)
    e = minidl.tensor(np.zeros((2, 2)), requires_grad=True)
    (d.T + e).sum().backward()
    d.grad._data += 1
    np.testing.assert_array_equal(e.grad.numpy(), np.ones((2, 2)))


def test_a_private_view_gradient_is_kept_and_a_shared_one_copied():
    """A gradient that is a view of a temporary (conv2d's C-major layout) is
    stored as it is; a view of anything still referenced is copied."""
    from minidl.tensor import Function

    class Transposed(Function):      # backward hands back a view of fresh memory
        def forward(self, x):
            return x.copy()

        def backward(self, gy):
            return np.ascontiguousarray(gy.T).T

    class Saved(Function):           # backward hands back a view of a saved array
        def forward(self, x):
            self.keep = np.ones((x.shape[1], x.shape[0]))
            return x.copy()

        def backward(self, gy):
            return self.keep.T

    x = minidl.tensor(np.zeros((2, 3)), requires_grad=True)
    Transposed()(x).backward(np.arange(6.0).reshape(2, 3))
    assert x.grad._data.base is not None                    # kept, no copy
    np.testing.assert_array_equal(x.grad.numpy(), np.arange(6.0).reshape(2, 3))
    y = minidl.tensor(np.zeros((2, 3)), requires_grad=True)
    fn = Saved()
    out = fn(y)
    keep = fn.keep
    out.backward(np.zeros((2, 3)))
    y.grad._data += 1                                       # must not reach the saved array
    np.testing.assert_array_equal(keep, np.ones((3, 2)))


def test_retain_grad():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    h.retain_grad()
    other = h + 1
    (h * other).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), 2 * h.numpy() + 1)
    assert other.grad is None
    np.testing.assert_allclose(x.grad.numpy(), 3 * (2 * h.numpy() + 1))

    x = minidl.tensor(2.0, requires_grad=True)
    y = x * x
    y.retain_grad()
    y.backward()
    assert y.grad.item() == 1.0


def test_no_grad_and_enable_grad():
    x = minidl.tensor([1.0], requires_grad=True)
    with minidl.no_grad():
        y = x * 2
        with minidl.enable_grad():
            z = x * 2
    assert not y.requires_grad and y.creator is None
    assert z.requires_grad and z.creator is not None
    assert minidl.is_grad_enabled()

    @minidl.no_grad()
    def infer(t):
        return t.exp()

    assert not infer(x).requires_grad
    assert minidl.is_grad_enabled()


def test_grad_mode_is_reentrant():
    @minidl.no_grad()                # one decorator instance, entered once per call
    def walk(depth):
        if depth:
            walk(depth - 1)
        assert not minidl.is_grad_enabled()

    walk(2)
    assert minidl.is_grad_enabled()

    @minidl.enable_grad()
    def record(depth, t):
        return record(depth - 1, t) if depth else t * 2

    x = minidl.tensor([1.0], requires_grad=True)
    with minidl.no_grad():
        assert record(2, x).requires_grad
        assert not (x * 3).requires_grad   # the outer no_grad still holds
    ng = minidl.no_grad()
    with ng:
        with ng:
            pass
        assert not minidl.is_grad_enabled()
    assert minidl.is_grad_enabled()

    # Optimizer.step is decorated by one shared no_grad(); a closure that steps
    # again re-enters it. Called under no_grad, no_grad must still hold after.
    opt = minidl.optim.SGD([minidl.tensor([1.0], requires_grad=True)], lr=0.1)
    with minidl.no_grad():
        opt.step(lambda: opt.step())
        assert not minidl.is_grad_enabled()
    assert minidl.is_grad_enabled()


def test_grad_mode_is_per_thread():
    import threading

    entered, release = threading.Event(), threading.Event()
    seen = {}

    def worker():
        seen["starts_enabled"] = minidl.is_grad_enabled()
        with minidl.no_grad():
            entered.set()
            release.wait(10)
        seen["after"] = minidl.is_grad_enabled()

    thread = threading.Thread(target=worker)
    with minidl.no_grad():           # a new thread starts with grad mode on anyway
        thread.start()
        assert entered.wait(10)
    x = minidl.tensor([1.0], requires_grad=True)
    assert (x * 2).requires_grad     # the worker's no_grad does not reach this thread
    release.set()
    thread.join(10)
    assert seen == {"starts_enabled": True, "after": True}
    assert minidl.is_grad_enabled()


def _assert_own_writable_array(grad, shape):
    assert type(grad._data) is np.ndarray and grad.shape == shape
    assert grad._data.flags.writeable and 0 not in grad._data.strides


def test_leaf_grad_is_a_writable_array_of_its_own():
    x = minidl.tensor(np.ones((3, 4), np.float32), requires_grad=True)
    x.mean().backward()              # d mean is a stride-0 broadcast of one value
    _assert_own_writable_array(x.grad, (3, 4))
    x.grad._data[0, 0] = 0.0
    np.testing.assert_array_equal(x.grad.numpy()[1], np.full(4, 1 / 12, np.float32))

    b = minidl.tensor(np.ones((1, 4)), requires_grad=True)
    b.expand(3, 4).sum().backward()  # summed back from a broadcast view
    x2 = minidl.tensor(np.ones(4), requires_grad=True)
    x2.expand(3, 4)[0].sum().backward()
    _assert_own_writable_array(b.grad, (1, 4))
    _assert_own_writable_array(x2.grad, (4,))

    s = minidl.tensor(2.0, requires_grad=True)
    (s * 3).backward()               # 0-d: NumPy computes a scalar, not an array
    _assert_own_writable_array(s.grad, ())
    (s * s).backward()               # accumulation of 0-d gradients
    _assert_own_writable_array(s.grad, ())
    assert s.grad.item() == 7.0
    s.grad._data[...] = 0


def test_op_outputs_are_arrays_even_when_0d():
    s = minidl.tensor(2.0, requires_grad=True)
    for out in (s * 3, s.exp(), minidl.ones(3).sum(), minidl.ones(2, 3)[1, 2],
                minidl.ones(3).argmax()):
        assert type(out._data) is np.ndarray and out.shape == ()


def test_no_graph_without_requires_grad_and_detach_cuts_it():
    x = minidl.tensor([1.0, 2.0])
    assert (x * 2).creator is None
    w = minidl.tensor([1.0, 2.0], requires_grad=True)
    d = (w * 2).detach()
    assert d.creator is None and not d.requires_grad
    (w * d).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [2.0, 4.0])


class _Split(Function):
    """Two outputs; backward must get zeros for an output nobody used."""

    def forward(self, x):
        return x * 2, x * 3

    def backward(self, g1, g2):
        return g1 * 2 + g2 * 3


def test_multi_output_function_with_an_unused_output():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y1, y2 = _Split()(x)
    y2.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])


def _walk_graph(root):
    """Weak references to every tensor and function of a graph."""
    refs, stack, seen = [], [root], set()
    while stack:
        t = stack.pop()
        refs.append(weakref.ref(t))
        f = t.creator
        if f is not None and id(f) not in seen:
            seen.add(id(f))
            refs.append(weakref.ref(f))
            stack.extend(f.inputs)
    return refs


@pytest.mark.parametrize("run_backward", [True, False])
def test_graph_dies_with_the_loss_without_the_cycle_collector(run_backward):
    gc.collect()
    gc.disable()
    try:
        w = minidl.tensor(np.ones((8, 8)), requires_grad=True)
        x = minidl.tensor(np.ones((4, 8)))
        loss = ((x @ w).relu() * 0.5 + (x @ w).tanh()).sum()
        refs = _walk_graph(loss)
        intermediates = [r for r in refs if r() is not w and r() is not x]
        if run_backward:
            loss.backward()
        del loss
        assert all(r() is None for r in intermediates), \
            "reference cycle: part of the graph outlived the loss"
        assert w.grad is None or w.grad.creator is None
    finally:
        gc.enable()


def test_memory_does_not_grow_over_200_training_steps():
    rng = np.random.default_rng(0)
    w1 = minidl.tensor(rng.standard_normal((128, 256)).astype(np.float32) * 0.1,
                       requires_grad=True)
    w2 = minidl.tensor(rng.standard_normal((256, 10)).astype(np.float32) * 0.1,
                       requires_grad=True)
    x = minidl.tensor(rng.standard_normal((64, 128)).astype(np.float32))
    labels = rng.integers(0, 10, 64)

    def step():
        h = (x @ w1).relu()
        logits = h @ w2
        z = logits - logits.max(axis=1, keepdims=True).detach()
        logp = z - z.exp().sum(axis=1, keepdims=True).log()
        loss = -logp[np.arange(64), labels].mean()
        loss.backward()
        for p in (w1, w2):
            p._data -= 0.01 * p.grad._data
            p.grad = None
        return loss.item()

    gc.collect()
    gc.disable()  # cycles would show up as growth
    tracemalloc.start()
    try:
        for _ in range(50):  # warm up allocator caches and free lists
            step()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            step()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        gc.enable()
    # An activation is 64 KB, so keeping even one per step would grow 13 MB;
    # what remains (~150 KB) is Python's free lists filling up, which
    # saturates (it is the same after 2000 steps).
    assert grown < 1024 * 1024, f"memory grew by {grown} bytes over 200 steps"


def test_backward_on_leaf_and_explicit_grad_checks():
    x = minidl.tensor(np.ones((2, 3)), requires_grad=True)
    x.backward(np.full((2, 3), 2.0))
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 2.0))
    y = x * 2
    with pytest.raises(RuntimeError, match=r"shape \(2, 3\).*pass grad="):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\).*\(2, 3\)"):
        y.backward(np.ones(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        minidl.tensor([1.0]).sum().backward()


def test_grad_matches_leaf_dtype_and_shape_under_broadcasting():
    b = minidl.tensor(np.zeros((1, 3), np.float32), requires_grad=True)
    x = minidl.tensor(np.ones((4, 2, 3), np.float32))
    (x * b).sum().backward()
    assert b.grad.shape == (1, 3) and b.grad.dtype == np.float32
    np.testing.assert_array_equal(b.grad.numpy(), np.full((1, 3), 8.0))


def test_a_failed_backward_drops_its_queued_callbacks():
    from minidl.tensor import queue_callback
    calls = []

    class Fails(minidl.Function):
        def forward(self, x):
            return x * 2

        def backward(self, gy):
            raise RuntimeError("backward fails on purpose")

    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    queue_callback(lambda: calls.append("stale"))
    with pytest.raises(RuntimeError, match="on purpose"):
        Fails()(x).sum().backward()
    queue_callback(lambda: calls.append("fresh"))
    (x * 3).sum().backward()
    assert calls == ["fresh"]
