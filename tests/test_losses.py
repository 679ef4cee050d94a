"""Losses: fused cross-entropy (weights, ignore_index, reductions, label smoothing,
probability targets, spatial inputs), nll, mse, BCE-with-logits: gradcheck,
PyTorch parity, float32 kept, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import randn
from torch_helpers import check_vs_torch

import minidl
from minidl import nn
from minidl.nn import functional as F
from minidl.testing import assert_close, gradcheck

T = np.array([1, 0, -100, 3])
W = np.array([1.0, 2.0, 0.5, 1.5])


def _t(a):
    import torch
    return None if a is None else torch.tensor(a)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weight", [None, W])
def test_cross_entropy_vs_torch_and_gradcheck(reduction, smoothing, weight):
    tf = pytest.importorskip("torch.nn.functional")
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    check_vs_torch(lambda x: tf.cross_entropy(x, _t(T), _t(weight), **kw), [(4, 4)],
                   lambda x: F.cross_entropy(x, T, weight, **kw))
    gradcheck(lambda x: F.cross_entropy(x, T, weight, **kw), [randn(1, (4, 4))])


def test_cross_entropy_spatial_and_probabilities():
    tf = pytest.importorskip("torch.nn.functional")
    t2 = np.array([[1, 0], [2, -100]])
    for red in ("mean", "none"):
        check_vs_torch(lambda x: tf.cross_entropy(x, _t(t2), label_smoothing=0.1, reduction=red),
                       [(2, 3, 2)],
                       lambda x: F.cross_entropy(x, t2, label_smoothing=0.1, reduction=red))
    q = np.random.default_rng(1).dirichlet(np.ones(4), size=3)
    check_vs_torch(lambda x: tf.cross_entropy(x, _t(q), weight=_t(W), label_smoothing=0.1),
                   [(3, 4)], lambda x: F.cross_entropy(x, q, weight=W, label_smoothing=0.1))
    gradcheck(lambda x: F.cross_entropy(x, q, label_smoothing=0.1), [randn(2, (3, 4))])
    gradcheck(lambda x: F.cross_entropy(x, t2, reduction="none"), [randn(3, (2, 3, 2))])


def test_cross_entropy_float32_stable_and_one_node():
    x = minidl.tensor(np.array([[1e4, -1e4, 0.0]], np.float32), requires_grad=True)
    loss = F.cross_entropy(x, np.array([1]))
    assert loss.dtype == np.float32 and np.isfinite(loss.item())
    assert type(loss.creator).__name__ == "CrossEntropy" and loss.creator.inputs[0] is x
    loss.backward()
    assert x.grad.dtype == np.float32 and np.isfinite(x.grad.numpy()).all()
    y = minidl.tensor(minidl.randn(5, 3).numpy())
    assert F.cross_entropy(y, minidl.tensor(np.array([0, 1, 2, 0, 1])), reduction="sum").dtype \
        == np.float32


def test_cross_entropy_bad_input():
    x = minidl.randn(4, 3)
    with pytest.raises(IndexError, match="target 3 is out of range for 3 classes"):
        F.cross_entropy(x, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"need targets of shape \(4,\)"):
        F.cross_entropy(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, np.array([0, 1, 2, 0]), reduction="avg")
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        F.cross_entropy(x, np.array([0, 1, 2, 0]), weight=np.ones(4, np.float32))


def test_nll_mse_bce_vs_torch_and_gradcheck():
    tf = pytest.importorskip("torch.nn.functional")
    for red in ("mean", "sum", "none"):
        check_vs_torch(lambda x: tf.nll_loss(x, _t(T), _t(W), reduction=red), [(4, 4)],
                       lambda x: F.nll_loss(x, T, W, reduction=red))
        check_vs_torch(lambda x, y: tf.mse_loss(x, y, reduction=red), [(3, 4), (3, 4)],
                       lambda x, y: F.mse_loss(x, y, reduction=red))
    pw = np.array([1.0, 2.0, 3.0, 0.5])
    y = np.random.default_rng(0).random((3, 4))
    check_vs_torch(lambda x, t: tf.binary_cross_entropy_with_logits(x, t, pos_weight=_t(pw)),
                   [(3, 4), y],
                   lambda x, t: F.binary_cross_entropy_with_logits(x, t, pos_weight=pw))
    check_vs_torch(lambda x, t: tf.binary_cross_entropy_with_logits(x, t, weight=_t(pw),
                                                                    reduction="sum"),
                   [(3, 4), y], lambda x, t: F.binary_cross_entropy_with_logits(
                       x, t, weight=pw, reduction="sum"))
    gradcheck(lambda x: F.nll_loss(x, T, W), [randn(0, (4, 4))])
    gradcheck(F.mse_loss, [randn(0, (3, 4)), randn(1, (3, 4))])
    gradcheck(lambda x, t: F.binary_cross_entropy_with_logits(x, t, pos_weight=pw),
              [randn(0, (3, 4)), y])
    big = minidl.tensor(np.array([1e4, -1e4], np.float32))
    assert np.isfinite(F.binary_cross_entropy_with_logits(big, np.array([0.0, 1.0], np.float32))
                       .item())


def test_loss_modules():
    x, t = minidl.randn(4, 4), np.array([1, 0, 3, 3])
    assert_close(nn.CrossEntropyLoss(label_smoothing=0.1)(x, t),
                 F.cross_entropy(x, t, label_smoothing=0.1))
    assert_close(nn.NLLLoss()(F.log_softmax(x, dim=1), t), F.cross_entropy(x, t), atol=1e-6)
    assert_close(nn.MSELoss(reduction="sum")(x, x * 0.0), (x * x).sum(), rtol=1e-5)
    y = np.ones((4, 4), np.float32)
    assert_close(nn.BCEWithLogitsLoss()(x, y), F.binary_cross_entropy_with_logits(x, y))


def test_every_target_ignored_gives_nan_loss_and_zero_gradient():
    # PyTorch: 'mean' over no counted rows is 0/0 = NaN, but ignored rows get a
    # gradient of exactly 0 (not (gy / 0) * 0 = NaN), so a model stays finite.
    ignored = np.full(3, -100)
    cases = [lambda x: F.cross_entropy(x, ignored),
             lambda x: F.cross_entropy(x, ignored, weight=np.ones(4, np.float32),
                                       label_smoothing=0.2),
             lambda x: F.nll_loss(F.log_softmax(x, dim=1), ignored)]
    for loss_fn in cases:
        x = minidl.tensor(np.ones((3, 4), np.float32), requires_grad=True)
        loss = loss_fn(x)
        assert np.isnan(loss.item())
        loss.backward()
        assert x.grad.dtype == np.float32 and not x.grad.numpy().any()


def test_every_target_ignored_gradients_match_torch():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional

    def both(torch_loss, minidl_loss, x):
        tx = torch.tensor(x, requires_grad=True)
        mx = minidl.tensor(x, requires_grad=True)
        tl, ml = torch_loss(tx), minidl_loss(mx)
        tl.backward()
        with np.errstate(invalid="ignore"):   # a zero total weight: NumPy warns at inf * 0
            ml.backward()
        # (assert_close would not match NaN with NaN; compare NaN positions exactly)
        np.testing.assert_allclose(ml.numpy(), tl.detach().numpy(), rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(mx.grad.numpy(), tx.grad.numpy(), rtol=1e-6, equal_nan=True)

    spatial = np.full((2, 2), -100)
    both(lambda x: tf.cross_entropy(x, _t(spatial), label_smoothing=0.1),
         lambda x: F.cross_entropy(x, spatial, label_smoothing=0.1), randn(0, (2, 3, 2)))
    # a counted row of weight 0 is not ignored: there PyTorch's gradient is NaN, and ours
    zero_weight, t = np.array([0.0, 1.0]), np.array([0, 0])
    both(lambda x: tf.nll_loss(x, _t(t), _t(zero_weight)),
         lambda x: F.nll_loss(x, t, zero_weight), randn(1, (2, 2)))
    both(lambda x: tf.cross_entropy(x, _t(t), _t(zero_weight)),
         lambda x: F.cross_entropy(x, t, zero_weight), randn(2, (2, 2)))


# (size_average, reduce) -> the reduction PyTorch's legacy_get_string picks
LEGACY = [((False, None), "sum"), ((None, False), "none"), ((True, None), "mean"),
          ((False, False), "none"), ((True, True), "mean"), ((None, True), "mean")]


@pytest.mark.parametrize("legacy, reduction", LEGACY)
def test_deprecated_size_average_reduce_select_a_reduction(legacy, reduction):
    size_average, reduce = legacy
    x, y = minidl.randn(4, 4), minidl.rand(4, 4)
    t = np.array([1, 0, -100, 3])
    old = {"size_average": size_average, "reduce": reduce, "reduction": "mean"}
    pairs = [(lambda **kw: F.cross_entropy(x, t, **kw)),
             (lambda **kw: F.nll_loss(x, t, **kw)),
             (lambda **kw: F.mse_loss(x, y, **kw)),
             (lambda **kw: F.binary_cross_entropy_with_logits(x, y, **kw))]
    for loss_fn in pairs:
        with pytest.warns(UserWarning, match=f"use reduction='{reduction}'"):
            got = loss_fn(**old)
        assert_close(got, loss_fn(reduction=reduction))
    modules = [(nn.CrossEntropyLoss, (x, t)), (nn.NLLLoss, (x, t)), (nn.MSELoss, (x, y)),
               (nn.BCEWithLogitsLoss, (x, y))]
    for cls, args in modules:
        with pytest.warns(UserWarning, match="deprecated"):
            module = cls(size_average=size_average, reduce=reduce)
        assert module.reduction == reduction
        assert_close(module(*args), cls(reduction=reduction)(*args))


def test_deprecated_size_average_reduce_match_torch():
    pytest.importorskip("torch")
    from torch.nn._reduction import legacy_get_string
    for (size_average, reduce), reduction in LEGACY:
        assert legacy_get_string(size_average, reduce, emit_warning=False) == reduction


def test_loss_module_signatures_match_torch():
    import inspect
    torch = pytest.importorskip("torch")
    for name in ("CrossEntropyLoss", "NLLLoss", "MSELoss", "BCEWithLogitsLoss"):
        ours = inspect.signature(getattr(nn, name)).parameters
        theirs = inspect.signature(getattr(torch.nn, name)).parameters
        assert [(p.name, p.default) for p in ours.values()] == \
            [(p.name, p.default) for p in theirs.values()], name
    with pytest.warns(UserWarning):
        assert nn.CrossEntropyLoss(None, False, 0).reduction == "sum"   # positional, as torch
    assert nn.CrossEntropyLoss(None, None, 0).ignore_index == 0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_backward_returns_float32_for_float32(reduction, monkeypatch):
    from minidl.ops import loss as L
    seen = []
    for cls in (L.CrossEntropy, L.NLLLoss, L.MSELoss, L.BCEWithLogits):
        def spy(self, gy, _backward=cls.backward, _name=cls.__name__):
            grads = _backward(self, gy)
            for g in grads if isinstance(grads, tuple) else (grads,):
                if g is not None:
                    seen.append((_name, g.dtype))
            return grads
        monkeypatch.setattr(cls, "backward", spy)

    def f32(shape, seed):
        return minidl.tensor(randn(seed, shape).astype(np.float32), requires_grad=True)
    x, y = f32((5, 4), 0), f32((5, 4), 1)
    t = np.array([1, 0, -100, 3, 2])
    w = np.ones(4, np.float32)
    probs = np.full((5, 4), 0.25, np.float32)
    losses = [F.cross_entropy(x, t, reduction=reduction),
              F.cross_entropy(x, t, w, label_smoothing=0.1, reduction=reduction),
              F.cross_entropy(x, probs, reduction=reduction, label_smoothing=0.1),
              F.nll_loss(x, t, w, reduction=reduction),
              F.mse_loss(x, y, reduction=reduction),
              F.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=w)]
    for loss in losses:
        loss.sum().backward()
    assert len({name for name, _ in seen}) == 4
    assert all(dtype == np.float32 for _, dtype in seen), seen


# ------------------------------------------------ review regressions (round 5)

def test_ignored_rows_with_infinite_logits_do_not_poison_the_loss():
    # Regression: ignored rows were looked up at class 0 and multiplied by 0: a -inf
    # there (a masked padding class, or a padding row of -inf) gave 0 * inf = NaN.
    torch = pytest.importorskip("torch")
    x = randn(0, (4, 3))
    x[:, 0] = -np.inf                      # class 0 masked in every row
    t = np.array([1, -100, 2, -100])
    for smoothing in (0.0, 0.1):
        for reduction in ("mean", "sum", "none"):
            check_vs_torch(
                lambda x: torch.nn.functional.cross_entropy(
                    x, torch.tensor(t), reduction=reduction, label_smoothing=smoothing)
                if isinstance(x, torch.Tensor) else None, [x],
                lambda x: F.cross_entropy(x, minidl.tensor(t), reduction=reduction,
                                          label_smoothing=smoothing))
    for reduction in ("mean", "none"):
        check_vs_torch(lambda z: torch.nn.functional.nll_loss(z, torch.tensor(t),
                                                             reduction=reduction),
                       [x], lambda z: F.nll_loss(z, minidl.tensor(t), reduction=reduction))
    # an ignored padding row of -inf: PyTorch's loss, and a zero gradient there (PyTorch's
    # is NaN: its softmax of the row is 0/0)
    x[3] = -np.inf
    ours = minidl.tensor(x, requires_grad=True)
    loss = F.cross_entropy(ours, minidl.tensor(t), label_smoothing=0.1)
    assert_close(loss, torch.nn.functional.cross_entropy(
        torch.tensor(x), torch.tensor(t), label_smoothing=0.1).numpy())
    loss.backward()
    assert np.isfinite(ours.grad.numpy()).all() and not ours.grad.numpy()[3].any()


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_probability_targets_get_their_gradient(smoothing):
    # Regression: the target was a constant, so a distillation target never learned.
    torch = pytest.importorskip("torch")
    q = np.random.default_rng(1).dirichlet(np.ones(5), size=4)
    w = np.linspace(0.5, 2, 5)
    check_vs_torch(lambda x, q: torch.nn.functional.cross_entropy(
                       x, q, weight=torch.tensor(w), label_smoothing=smoothing),
                   [(4, 5), q],
                   lambda x, q: F.cross_entropy(x, q, weight=w, label_smoothing=smoothing))
    gradcheck(lambda x, q: F.cross_entropy(x, q, reduction="sum"), [randn(2, (3, 4, 2)),
                                                                    randn(3, (3, 4, 2))])


def test_nll_loss_checks_the_weight_length():
    x = minidl.randn(2, 3)
    for w in (np.ones(4), np.ones(2)):
        with pytest.raises(ValueError, match=r"nll_loss: weight must have shape \(3,\)"):
            F.nll_loss(x, minidl.tensor([0, 2]), weight=w)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_mse_loss_dtype_does_not_depend_on_the_reduction(reduction):
    # Regression: float32 input, int64 target gave float64 with 'none'; float32 input,
    # float64 target gave float32 with 'mean'/'sum' (PyTorch: float32, float64).
    x = minidl.randn(3, requires_grad=True)
    assert F.mse_loss(x, minidl.tensor([1, 2, 3]), reduction=reduction).dtype == np.float32
    y64 = minidl.tensor(np.ones(3), requires_grad=True)
    loss = F.mse_loss(x, y64, reduction=reduction)
    assert loss.dtype == np.float64
    loss.sum().backward()
    assert x.grad.dtype == np.float32 and y64.grad.dtype == np.float64


def test_bce_target_of_another_dtype_keeps_its_gradient():
    x = minidl.randn(4, requires_grad=True)
    y = minidl.tensor(np.full(4, 0.3), requires_grad=True)   # float64
    F.binary_cross_entropy_with_logits(x, y).backward()
    assert y.grad is not None and y.grad.dtype == np.float64
    assert_close(y.grad, -x.detach().numpy().astype(np.float64) / 4, rtol=1e-6)


def test_layer_norm_takes_numpy_ints():
    assert nn.LayerNorm(np.int64(4)).normalized_shape == (4,)
    assert F.layer_norm(minidl.randn(2, 4), np.int64(4)).shape == (2, 4)
    with pytest.raises(TypeError, match="normalized_shape must be an int or a sequence"):
        nn.LayerNorm(4.0)


def test_cross_entropy_of_an_empty_batch_with_spatial_dims():
    # Regression: reshaping with -1 failed for N = 0; PyTorch gives NaN (0 / 0).
    x = minidl.randn(0, 3, 4, 4, requires_grad=True)
    loss = F.cross_entropy(x, minidl.tensor(np.zeros((0, 4, 4), np.int64)))
    assert np.isnan(loss.item()) and loss.dtype == np.float32
    loss.backward()
    assert x.grad.shape == (0, 3, 4, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_gradient_is_accurate_for_negative_logits(dtype):
    # Regression: (1 - y) + (sigmoid(x) - 1) cancelled: 0 for x <= -17 in float32.
    torch = pytest.importorskip("torch")
    x = np.array([-10.0, -20.0, -30.0, 5.0], dtype)
    for pos_weight in (None, np.array([2.0, 0.5, 3.0, 1.5], dtype)):
        for target in (np.zeros(4, dtype), np.array([0.0, 1.0, 0.3, 1.0], dtype)):
            check_vs_torch(
                lambda x: torch.nn.functional.binary_cross_entropy_with_logits(
                    x, torch.tensor(target), reduction="sum",
                    pos_weight=None if pos_weight is None else torch.tensor(pos_weight)),
                [x], lambda x: F.binary_cross_entropy_with_logits(
                    x, minidl.tensor(target), reduction="sum", pos_weight=pos_weight),
                dtype=dtype, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=0)
