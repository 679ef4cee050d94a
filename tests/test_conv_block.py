"""Fusion in the framework (minidl.fusion) and the fused ops it runs
(minidl.ops.conv_block): conv -> ReLU -> 2x2 max-pool in either order, and
conv -> ReLU, in functional and Sequential style. Each fused result is
gradchecked and equals the unfused ops (``minidl.fusion.disabled()``), the
oracle, in values and every gradient; PyTorch parity; the fallbacks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidl
from minidl import backend, nn
from minidl.nn import functional as F
from minidl.ops.conv_block import Conv2dReLU, ConvPoolReLU, fusable
from minidl.testing import gradcheck
from test_conv import c_major, tie_free
from torch_helpers import check_vs_torch

fused_kernels = pytest.mark.skipif(
    not (backend.numba_available() and __import__("minidl.kernels.cpu_blas",
                                                   fromlist=["available"]).available()),
    reason="the fused block needs the Numba kernels and NumPy's OpenBLAS")


def _inputs(rng, N, C, Co, H, W, k=3, dtype=np.float64, bias=True):
    x = tie_free(rng, (N, C, H, W))
    w = rng.standard_normal((Co, C, k, k)) * 0.5
    b = rng.standard_normal(Co) * 0.1 if bias else None
    return [None if a is None else a.astype(dtype) for a in (x, w, b)]


def _block(padding, order):
    """The block as users write it: ReLU then pool ("rp") or pool then ReLU ("pr")."""
    def block(x, w, b=None):
        y = F.conv2d(x, w, b, padding=padding)
        return F.max_pool2d(F.relu(y), 2) if order == "rp" else F.relu(F.max_pool2d(y, 2))
    return block


def _run(fn, arrays, grads, g=None):
    """fn's output and, after backward with ``g`` (default: a ramp of y's
    shape), each input's gradient."""
    ts = [None if a is None else minidl.tensor(a, requires_grad=r) for a, r in zip(arrays, grads)]
    y = fn(*ts)
    if g is None:
        g = np.linspace(-1, 1, y.numel()).reshape(y.shape).astype(y.dtype)
    y.backward(minidl.tensor(g))
    return y, [y.numpy()] + [None if t is None or t.grad is None else t.grad.numpy()
                             for t in ts]


def _assert_same(fused, plain, tol):
    for a, b in zip(fused, plain):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@fused_kernels
@settings(max_examples=8, deadline=None)
@given(N=st.integers(1, 4), C=st.integers(1, 3), Co=st.integers(1, 4), k=st.sampled_from([3, 5]),
       padding=st.integers(0, 2), H=st.integers(5, 9), W=st.integers(5, 9),
       order=st.sampled_from(["rp", "pr"]), bias=st.booleans(), seed=st.integers(0, 999))
def test_fused_block_gradcheck(N, C, Co, k, padding, H, W, order, bias, seed):
    """3x3 and 5x5 kernels, padding 0 to 2, odd and even sizes (floor mode),
    either order, with and without a bias: one fused op, gradchecked."""
    x, w, b = _inputs(np.random.default_rng(seed), N, C, Co, H, W, k, bias=bias)
    block = _block(padding, order)
    args = [x, w] + ([b] if bias else [])
    ts = [minidl.tensor(a, requires_grad=True) for a in args]
    assert isinstance(block(*ts).creator, ConvPoolReLU)
    gradcheck(block, args)


@fused_kernels
@pytest.mark.parametrize("layout", [np.ascontiguousarray, c_major])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("N, C, Co, H, k, padding",
                         [(64, 1, 8, 28, 3, 1), (9, 8, 16, 14, 3, 1), (5, 3, 6, 32, 5, 0),
                          (4, 6, 5, 13, 3, 0)])
def test_fused_equals_the_unfused_ops(layout, threads, N, C, Co, H, k, padding):
    """Values and every gradient, with and without an input gradient (the
    first conv's input is the images) or a weight gradient (frozen layers),
    on one thread and two (blocks of images split differently), float32 as in
    training."""
    rng = np.random.default_rng(N + C)
    x, w, b = _inputs(rng, N, C, Co, H, H, k, np.float32)
    x = layout(x)
    O = (H + 2 * padding - k + 1) // 2
    g = rng.standard_normal((N, Co, O, O)).astype(np.float32)
    block = _block(padding, "rp")
    before = minidl.get_num_threads()
    try:
        minidl.set_num_threads(threads)
        for x_grad, w_grad in ((True, True), (False, True), (True, False)):
            grads = (x_grad, w_grad, w_grad)
            y, fused = _run(block, [x, w, b], grads, g)
            assert isinstance(y.creator, ConvPoolReLU)
            with minidl.fusion.disabled():
                y, plain = _run(block, [x, w, b], grads, g)
            assert isinstance(y.creator, minidl.ops.conv.MaxPool2dFunction)
            _assert_same(fused, plain, 1e-4)
    finally:
        minidl.set_num_threads(before)


def _nets():
    """The block in the styles users write: Sequential (either order), and
    the pytorch/examples MNIST net's functional lines."""
    minidl.manual_seed(0)
    seq_rp = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(4, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    seq_pr = nn.Sequential(nn.Conv2d(2, 4, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten())

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, 1), nn.Conv2d(4, 6, 3, 1)
            self.conv3 = nn.Conv2d(6, 5, 3, padding=1)

        def forward(self, x):
            x = F.relu(self.conv1(x))          # conv -> ReLU, then another conv
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return F.relu(F.max_pool2d(self.conv3(x), 2)).flatten(1)

    return [seq_rp, seq_pr, Functional()]


@pytest.mark.parametrize("net", range(3))
def test_user_models_get_the_fused_ops_with_the_same_results(net):
    """Sequential and functional models, gradients of every parameter and of
    the input, training and no_grad inference: fused equals unfused."""
    model = _nets()[net]
    rng = np.random.default_rng(net)
    x = rng.standard_normal((3, 2, 15, 15))
    model = model.double()
    results = []
    for fuse in (True, False):
        model.zero_grad()
        t = minidl.tensor(x, requires_grad=True)
        if fuse:
            y = model(t)
        else:
            with minidl.fusion.disabled():
                y = model(t)
        (y * minidl.tensor(np.linspace(-1, 1, y.numel()).reshape(y.shape))).sum().backward()
        with minidl.no_grad():
            inference = model(t).numpy()
        results.append([y.numpy(), inference, t.grad.numpy()]
                       + [p.grad.numpy() for p in model.parameters()])
    _assert_same(*results, 1e-10)


def test_what_cannot_fuse_runs_as_written():
    """A stride-2 conv, a 3x3 pool, return_indices, a conv output smaller
    than 2x2, the NumPy kernels: the pool with the ReLU fused in (or the ops
    as called), same values and gradients as the unfused ops."""
    from minidl.ops.conv import MaxPool2dFunction
    rng = np.random.default_rng(2)
    x, w, b = _inputs(rng, 2, 2, 3, 8, 8)
    cases = [
        lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, stride=2, padding=1)), 2),
        lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 3),
        lambda x, w, b: F.relu(F.max_pool2d(F.conv2d(x, w, b, padding=1), 2,
                                            return_indices=True)[0]),
        lambda x, w, b: F.relu(F.max_pool2d(F.conv2d(x[:, :, :3, :3], w, b), 1)),
    ]
    for fn in cases:
        y, fused = _run(fn, [x, w, b], (True, True, True))
        assert not isinstance(y.creator, ConvPoolReLU)
        with minidl.fusion.disabled():
            _, plain = _run(fn, [x, w, b], (True, True, True))
        _assert_same(fused, plain, 1e-12)
    block = _block(1, "rp")
    with backend.use_numba(False):
        y = block(*[minidl.tensor(a, requires_grad=True) for a in (x, w, b)])
        assert isinstance(y.creator, MaxPool2dFunction) and y.creator.relu
        _, fused = _run(block, [x, w, b], (True, True, True))
        with minidl.fusion.disabled():
            _, plain = _run(block, [x, w, b], (True, True, True))
    _assert_same(fused, plain, 1e-12)
    assert fusable(*[minidl.tensor(a) for a in (x, w, b)], (1, 1))
    assert not fusable(*[minidl.tensor(a) for a in (x[:, :, :2, :2], w, b)], (0, 0))


@fused_kernels
@pytest.mark.parametrize("layout", [np.ascontiguousarray, c_major])
@pytest.mark.parametrize("padding, k", [(1, 3), (0, 5)])
def test_gradients_of_each_input_alone_and_inference(layout, padding, k):
    """Each task unfolds its own images, in forward and again for the weight
    gradient: same values and gradients as the unfused ops with any subset of
    inputs needing one, and in no_grad inference (which keeps nothing)."""
    rng = np.random.default_rng(7)
    x, w, b = _inputs(rng, 7, 3, 4, 9, 8, k)
    x = layout(x)
    block = _block(padding, "pr")
    for grads in ((True, True, True), (False, True, True), (True, False, False)):
        y, fused = _run(block, [x, w, b], grads)
        with minidl.fusion.disabled():
            _, plain = _run(block, [x, w, b], grads)
        _assert_same(fused, plain, 1e-12)
    ts = [minidl.tensor(a, requires_grad=True) for a in (x, w, b)]
    assert isinstance(block(*ts).creator, ConvPoolReLU)
    gradcheck(block, [x, w, b])
    with minidl.no_grad():
        y = block(*map(minidl.tensor, (x, w, b)))
        with minidl.fusion.disabled():
            expected = block(*map(minidl.tensor, (x, w, b)))
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)
    assert y.creator is None


@fused_kernels
def test_fused_block_matches_torch():
    torch_F = pytest.importorskip("torch.nn.functional")
    x, w, b = _inputs(np.random.default_rng(0), 6, 3, 4, 11, 12, k=5, dtype=np.float32)
    check_vs_torch(lambda x, w, b: torch_F.max_pool2d(torch_F.relu(torch_F.conv2d(x, w, b)), 2),
                   [x, w, b], _block(0, "rp"), dtype=np.float32, rtol=1e-4, atol=1e-5,
                   grad_atol=1e-4)


def test_conv_relu_gradcheck_and_oracle():
    """conv -> ReLU read by anything but a pool runs as Conv2dReLU (any conv
    geometry), equal to the two ops."""
    rng = np.random.default_rng(4)
    x, w, b = _inputs(rng, 2, 2, 3, 7, 6)

    def conv_relu(x, w, b):
        return F.relu(F.conv2d(x, w, b, stride=(1, 2), padding=1)) * 1.0

    ts = [minidl.tensor(a, requires_grad=True) for a in (x, w, b)]
    assert isinstance(conv_relu(*ts).creator.inputs[0].creator, Conv2dReLU)
    gradcheck(conv_relu, [x, w, b])
    g = rng.standard_normal((2, 3, 7, 3))
    _, fused = _run(conv_relu, [x, w, b], (True, True, True), g)
    with minidl.fusion.disabled():
        _, plain = _run(conv_relu, [x, w, b], (True, True, True), g)
    _assert_same(fused, plain, 1e-12)


def test_deferred_tensors_read_anywhere_are_computed_as_called():
    """A conv output read twice (a skip connection), printed, read under
    another grad mode or never read: the values of the ops as called."""
    rng = np.random.default_rng(5)
    x, w, b = [minidl.tensor(a, requires_grad=True) for a in _inputs(rng, 2, 2, 2, 6, 6)]
    y = F.conv2d(x, w, b, padding=1)
    r = F.relu(y)
    assert y.shape == (2, 2, 6, 6) and r.dtype == np.float64 and r.requires_grad
    assert y.size(1) == 2 and y.numel() == 144 and y.dim() == 4 and y._fn is not None
    pooled = F.max_pool2d(r, 2)                  # fused; y and r still readable
    skip = (y + r).sum() + pooled.sum()
    with minidl.fusion.disabled():
        y2 = F.conv2d(x, w, b, padding=1)
        expected = (y2 + F.relu(y2)).sum() + F.max_pool2d(F.relu(y2), 2).sum()
    np.testing.assert_allclose(skip.item(), expected.item())
    skip.backward()
    gx = x.grad.numpy().copy()
    x.grad = None
    expected.backward()
    np.testing.assert_allclose(gx, x.grad.numpy())
    y = F.conv2d(x, w, b, padding=1)
    y.retain_grad()                              # its gradient is wanted: not fused away
    F.max_pool2d(F.relu(y), 2).sum().backward()
    assert y.grad is not None and y.grad.shape == (2, 2, 6, 6)
    with minidl.no_grad():
        z = F.relu(F.conv2d(x, w, b))
    assert not z.requires_grad and z.creator is None and "tensor" in repr(z)
    assert minidl.fusion.is_enabled()


def test_inference_folds_eval_batch_norm_into_the_conv():
    """conv -> BatchNorm2d -> ReLU (-> pool), eval mode, no_grad: the batch
    norm is folded into the conv and the rest fuses; the logits equal the
    unfused modules'. With gradients recorded, nothing is folded."""
    minidl.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1, bias=False),
                          nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten()).double()
    x = minidl.tensor(np.random.default_rng(0).standard_normal((4, 3, 8, 8)))
    model(x)                                   # training: running statistics move
    model.eval()
    with minidl.no_grad():
        y = model(x)
        with minidl.fusion.disabled():
            expected = model(x)
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)
    y = model(x)
    assert type(y.creator.inputs[0].creator).__name__ == "ReLU"
    assert type(y.creator.inputs[0].creator.inputs[0].creator).__name__ == "BatchNormFunction"
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)


def test_relu_then_pool_of_any_tensor_and_mixed_grad_modes():
    """ReLU -> 2x2 pool of any 4-D tensor (a batch norm's output, say) runs as
    the pool with the ReLU in its pass; calls of a chain made under different
    grad modes are not joined, so what is recorded is what the ops record."""
    rng = np.random.default_rng(6)
    x, w, b = _inputs(rng, 2, 3, 2, 6, 6)

    def relu_pool(t):
        return F.max_pool2d(F.relu(t * 2.0), 2)

    y = relu_pool(minidl.tensor(x, requires_grad=True))
    assert isinstance(y.creator, minidl.ops.conv.MaxPool2dFunction) and y.creator.relu
    gradcheck(relu_pool, [x])
    ts = [minidl.tensor(a, requires_grad=True) for a in (x, w, b)]
    with minidl.no_grad():
        c = F.conv2d(*ts)
        r = F.relu(ts[0])
    y = F.relu(F.max_pool2d(c, 2))
    assert not y.requires_grad and y.creator is None
    z = F.max_pool2d(r, 2)
    assert not z.requires_grad
    c = F.conv2d(*ts)
    with minidl.no_grad():
        y = F.max_pool2d(F.relu(c), 2)
    assert not y.requires_grad and c.requires_grad and c.creator is not None
    with minidl.fusion.disabled():
        expected = F.max_pool2d(F.relu(F.conv2d(*ts)), 2)
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-12)
