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
