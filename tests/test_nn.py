"""nn.Module and the layers: registration, traversal, modes, state dicts, init,
PyTorch parity of every layer (forward and gradients, same weights), gradcheck
of every layer's parameters, bad input naming the layer."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import distinct, randn

import minidl
from minidl import backend, nn
from minidl.nn import functional as F
from minidl.testing import assert_close, gradcheck


@pytest.fixture(autouse=True)
def _numpy_kernels():
    """Conv/pool kernels are tested on every backend in test_conv.py; here the plain
    NumPy ones keep this file fast (no Numba compilation)."""
    with backend.use_numba(False):
        yield


def _torch():
    return pytest.importorskip("torch")


def to_torch_state(module):
    torch = _torch()
    return {k: torch.tensor(v.numpy()) for k, v in module.state_dict().items()}


def call_with(module, names, x, *params):
    """module(x) with the named parameters replaced by ``params`` (for gradcheck)."""
    for name, p in zip(names, params):
        *path, leaf = name.split(".")
        sub = module
        for part in path:
            sub = getattr(sub, part)
        sub._parameters[leaf] = p
    return module(x)


def check_layer(m, t, x, *, train=False, rtol=1e-7, atol=1e-7):
    """Same weights in both (via the state dict), float64: forward, input and parameter grads."""
    torch = _torch()
    m = m.double()
    t = t.double()
    t.load_state_dict(to_torch_state(m))
    m.train(train)
    t.train(train)
    mx = minidl.tensor(x, requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    my, ty = m(mx), t(tx)
    assert_close(my, ty.detach().numpy(), rtol=rtol, atol=atol, msg="forward: ")
    g = np.random.default_rng(7).standard_normal(ty.shape)
    my.backward(g)
    ty.backward(torch.tensor(g))
    assert_close(mx.grad, tx.grad.numpy(), rtol=rtol, atol=atol, msg="input grad: ")
    tparams = dict(t.named_parameters())
    for name, p in m.named_parameters():
        assert_close(p.grad, tparams[name].grad.numpy(), rtol=rtol, atol=atol, msg=f"{name}: ")
    tstate = t.state_dict()
    for name, v in m.state_dict().items():  # running statistics too
        assert_close(v.numpy(), tstate[name].numpy().astype(v.numpy().dtype), msg=f"{name}: ")


def test_every_layer_matches_torch():
    torch = _torch()
    tn = torch.nn
    x4 = randn(0, (2, 3, 6, 6))
    cases = [
        (nn.Linear(6, 4), tn.Linear(6, 4), randn(1, (2, 3, 6))),
        (nn.Linear(6, 4, bias=False), tn.Linear(6, 4, bias=False), randn(1, (5, 6))),
        (nn.Conv2d(3, 4, 3, padding=1), tn.Conv2d(3, 4, 3, padding=1), x4),
        (nn.Conv2d(3, 4, (3, 2), stride=2, bias=False), tn.Conv2d(3, 4, (3, 2), stride=2,
                                                                  bias=False), x4),
        (nn.MaxPool2d(2), tn.MaxPool2d(2), distinct(2, (2, 3, 6, 6))),
        (nn.AvgPool2d(3, 2, 1), tn.AvgPool2d(3, 2, 1), x4),
        (nn.ReLU(), tn.ReLU(), randn(3, (4, 5), low=0.01)),
        (nn.GELU(), tn.GELU(), x4), (nn.GELU("tanh"), tn.GELU("tanh"), x4),
        (nn.Sigmoid(), tn.Sigmoid(), x4), (nn.Tanh(), tn.Tanh(), x4),
        (nn.LeakyReLU(0.2), tn.LeakyReLU(0.2), x4), (nn.SiLU(), tn.SiLU(), x4),
        (nn.Softmax(dim=1), tn.Softmax(dim=1), x4),
        (nn.Flatten(), tn.Flatten(), x4), (nn.Identity(), tn.Identity(), x4),
        (nn.Dropout(0.3).eval(), tn.Dropout(0.3), x4),
        (nn.LayerNorm(6), tn.LayerNorm(6), x4),
        (nn.LayerNorm((6, 6)), tn.LayerNorm((6, 6)), x4),
    ]
    for m, t, x in cases:
        check_layer(m, t, x)
    batch_norms = [(nn.BatchNorm2d, tn.BatchNorm2d, x4),
                   (nn.BatchNorm1d, tn.BatchNorm1d, randn(4, (5, 3))),
                   (nn.BatchNorm1d, tn.BatchNorm1d, randn(5, (2, 3, 4)))]
    for train in (True, False):
        for ours, theirs, x in batch_norms:
            m, t = ours(3), theirs(3)
            with torch.no_grad():
                t.weight.uniform_(0.5, 1.5)
                t.bias.uniform_(-1, 1)
            m.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
            check_layer(m, t, x, train=train)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(16, 5))
    tseq = tn.Sequential(tn.Conv2d(3, 4, 3), tn.ReLU(), tn.MaxPool2d(2), tn.Flatten(),
                         tn.Linear(16, 5))
    check_layer(seq, tseq, x4)


def test_batchnorm_running_stats_and_eval():
    bn = nn.BatchNorm2d(2, momentum=None)
    for i in range(3):
        bn(minidl.randn(4, 2, 3, 3))
    assert int(bn.num_batches_tracked.item()) == 3
    bn.eval()
    x = minidl.randn(4, 2, 3, 3)
    expected = (x.numpy() - bn.running_mean.numpy()[:, None, None]) / np.sqrt(
        bn.running_var.numpy()[:, None, None] + 1e-5)
    assert_close(bn(x), expected.astype(np.float32), atol=1e-5, rtol=1e-5)
    assert int(bn.num_batches_tracked.item()) == 3
    assert set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var",
                                    "num_batches_tracked"}


def test_layer_parameters_gradcheck():
    layers = [
        (nn.Linear(4, 3), randn(0, (2, 4))),
        (nn.Conv2d(2, 3, 3, padding=1), randn(0, (2, 2, 4, 4))),
        (nn.LayerNorm(4), randn(0, (3, 4))),
        (nn.BatchNorm2d(2), randn(0, (3, 2, 2, 2))),
        (nn.ChannelAttention(2, 2, 2, hidden=(5, 4), dropout=0.0, fusion="sum"),
         randn(0, (3, 2, 2, 2))),
        (nn.ChannelAttention(2, 2, 2, hidden=(5,), dropout=0.0, fusion="reweight"),
         randn(0, (3, 2, 2, 2))),
    ]
    for m, x in layers:
        m = m.double()
        names = [n for n, _ in m.named_parameters()]
        params = [p.numpy().copy() for p in m.parameters()]
        gradcheck(lambda x, *ps, m=m, names=names: call_with(m, names, x, *ps), [x] + params)


def test_default_init_as_torch_and_seeded():
    minidl.manual_seed(0)
    a = nn.Linear(400, 50)
    minidl.manual_seed(0)
    b = nn.Linear(400, 50)
    assert_close(a.weight, b.weight.numpy())
    bound = 1 / math.sqrt(400)
    w = a.weight.numpy()
    assert a.weight.dtype == np.float32 and np.abs(w).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound      # U(-b, b)
    assert np.abs(a.bias.numpy()).max() <= bound
    c = nn.Conv2d(8, 16, 3)
    fan_in = 8 * 9
    assert np.abs(c.weight.numpy()).max() <= 1 / math.sqrt(fan_in)
    assert abs(c.weight.numpy().std() - 1 / math.sqrt(3 * fan_in)) < 0.1 / math.sqrt(fan_in)


def test_init_functions():
    t = nn.Parameter(np.empty((200, 300), np.float32))
    nn.init.xavier_uniform_(t)
    assert np.abs(t.numpy()).max() <= math.sqrt(6 / 500)
    nn.init.kaiming_uniform_(t, nonlinearity="relu")
    assert np.abs(t.numpy()).max() <= math.sqrt(2) * math.sqrt(3 / 300)
    nn.init.normal_(t, 1.0, 0.5)
    assert abs(t.numpy().mean() - 1.0) < 0.01 and abs(t.numpy().std() - 0.5) < 0.01
    nn.init.uniform_(t, 2, 3)
    assert t.numpy().min() >= 2 and t.numpy().max() <= 3 and t.dtype == np.float32
    nn.init.zeros_(t)
    assert not t.numpy().any()
    nn.init.ones_(t)
    assert (t.numpy() == 1).all()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2))
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 4)])
        self.drop = nn.Dropout(0.5)
        self.scale = nn.Parameter(np.ones(1, np.float32))
        self.register_buffer("counter", minidl.zeros(1))
        self.note = "not state"

    def forward(self, x):
        h = self.features(x).flatten(1)
        for b in self.blocks:
            h = self.drop(b(h))
        return h * self.scale


def test_module_registration_traversal_and_modes():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["scale", "features.0.weight", "features.0.bias", "features.2.weight",
                     "features.2.bias", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight",
                     "blocks.1.bias"]
    assert list(net.state_dict())[:2] == ["scale", "counter"]
    assert "features.2.running_var" in net.state_dict()
    assert [n for n, _ in net.named_children()] == ["features", "blocks", "drop"]
    assert len(list(net.modules())) == 9
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    out = net(minidl.randn(2, 1, 4, 4))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    params = list(net.parameters())
    assert net.to("cpu") is net and list(net.parameters())[0] is params[0]
    net.double()
    assert net.features[0].weight.dtype == np.float64 and params[1] is net.features[0].weight
    text = repr(net)
    assert "(features): Sequential(" in text and "(0): Conv2d(1, 2, kernel_size=(3, 3)" in text
    assert "(1): Linear(in_features=8, out_features=4, bias=True)" in text
    del net.drop
    assert "drop" not in dict(net.named_children())


def test_load_state_dict_errors_name_keys_and_leave_model_untouched():
    net = Net()
    before = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    state = {k: v.numpy() + 1 for k, v in net.state_dict().items()}
    del state["blocks.1.bias"]
    state["extra.weight"] = np.zeros(3)
    state["blocks.0.weight"] = np.zeros((8, 7), np.float32)
    with pytest.raises(RuntimeError) as err:
        net.load_state_dict(state)
    msg = str(err.value)
    assert "missing keys: blocks.1.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "blocks.0.weight: checkpoint shape (8, 7), model shape (8, 8)" in msg
    for k, v in net.state_dict().items():
        assert_close(v, before[k])
    result = net.load_state_dict(state, strict=False)     # loads what matches, reports the rest
    missing, unexpected = result
    assert missing == ["blocks.1.bias"] and unexpected == ["extra.weight"]
    assert result.mismatched_keys == ["blocks.0.weight"]
    assert_close(net.blocks[0].weight, before["blocks.0.weight"])
    state["blocks.0.weight"] = np.zeros((8, 8), np.float32)
    net.load_state_dict(state, strict=False)
    assert not net.blocks[0].weight.numpy().any()
    assert_close(net.scale, before["scale"] + 1)
    assert net.load_state_dict(net.state_dict()).missing_keys == []


def test_bad_input_names_layer_and_expected_shape():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(ValueError, match=r"Linear '1' \(in_features=784.*expected input "
                                         r"\(\*, 784\), got \(2, 100\)"):
        model(minidl.randn(2, 1, 10, 10))
    with pytest.raises(ValueError,
                       match=r"Conv2d.*expected input \(N, 3, H, W\), got \(2, 1, 5, 5\)"):
        nn.Conv2d(3, 4, 3)(minidl.randn(2, 1, 5, 5))
    with pytest.raises(ValueError, match=r"BatchNorm2d.*\(N, 4, H, W\)"):
        nn.BatchNorm2d(4)(minidl.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"BatchNorm1d.*\(N, 4\) or \(N, 4, L\).*\(2, 5\)"):
        nn.BatchNorm1d(4)(minidl.randn(2, 5))
    with pytest.raises(ValueError, match=r"LayerNorm.*\(\*, 5\)"):
        nn.LayerNorm(5)(minidl.randn(2, 4))
    with pytest.raises(ValueError,
                       match=r"ChannelAttention 'att'.*\(B, 16, 7, 7\), got \(2, 8, 7, 7\)"):
        m = nn.Module()
        m.att = nn.ChannelAttention(16, 7, 7)
        m.att(minidl.randn(2, 8, 7, 7))


def test_channel_attention_weights_and_fusions():
    minidl.manual_seed(0)
    x = minidl.randn(3, 4, 5, 5)
    att = nn.ChannelAttention(4, 5, 5, hidden=(16, 8), fusion="sum").eval()
    fused, w = att(x)
    assert fused.shape == (3, 5, 5) and w.shape == (3, 4) and fused.dtype == np.float32
    assert_close(w.numpy().sum(axis=1), np.ones(3, np.float32), atol=1e-6)
    assert np.ptp(w.numpy(), axis=1).min() > 0        # not the article's all-ones weights
    assert_close(fused, (x.numpy() * w.numpy()[:, :, None, None]).sum(1), atol=1e-6)
    att.fusion = "reweight"
    fused, w2 = att(x)
    assert fused.shape == (3, 4, 5, 5)
    assert_close(fused, x.numpy() * 4 * w2.numpy()[:, :, None, None], atol=1e-6)
    # uniform weights (a zero scoring layer) make 'reweight' the identity
    nn.init.zeros_(att.score.weight)
    nn.init.zeros_(att.score.bias)
    assert_close(att(x)[0], x.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="fusion"):
        nn.ChannelAttention(4, 5, 5, fusion="mean")


def test_channel_attention_matches_a_torch_version():
    torch = _torch()
    tn = torch.nn

    class TorchChannelAttention(tn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = tn.Sequential(tn.Linear(36, 8), tn.ReLU(), tn.Dropout(0.2))
            self.score = tn.Linear(8, 4)

        def forward(self, x):
            w = torch.softmax(self.score(self.mlp(x.flatten(1))), dim=1)
            return (x * w[:, :, None, None]).sum(1)

    m = nn.ChannelAttention(4, 3, 3, hidden=(8,), fusion="sum")
    forward = m.forward
    m.forward = lambda x: forward(x)[0]
    check_layer(m, TorchChannelAttention(), randn(0, (2, 4, 3, 3)))


def test_clip_grad_norm_matches_torch():
    torch = _torch()
    a, b = randn(0, (3, 4)), randn(1, (5,))
    ps = [minidl.tensor(a, requires_grad=True), minidl.tensor(b, requires_grad=True)]
    tps = [torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)]
    for p, t, g in zip(ps, tps, (a * 3, b * 2)):
        p.grad = minidl.tensor(g)
        t.grad = torch.tensor(g)
    grad0 = ps[0].grad._data
    for norm_type in (2.0, math.inf):
        total = nn.utils.clip_grad_norm_(ps, 1.0, norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(tps, 1.0, norm_type)
        assert_close(total, ttotal.numpy())
        for p, t in zip(ps, tps):
            assert_close(p.grad, t.grad.numpy())
    assert_close(grad0, a * 3)     # the old gradient array was not written in place
    with pytest.raises(RuntimeError, match="nan"):
        ps[0].grad = minidl.tensor(np.full((3, 4), np.nan))
        nn.utils.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)


def test_functional_namespace():
    for name in ("relu", "sigmoid", "tanh", "gelu", "softmax", "log_softmax", "dropout", "conv2d",
                 "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "pad", "linear",
                 "cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy_with_logits",
                 "layer_norm", "batch_norm", "scaled_dot_product_attention"):
        assert callable(getattr(F, name)), name


def test_float32_stays_float32_through_every_layer():
    minidl.manual_seed(0)
    x4 = minidl.randn(2, 3, 6, 6, requires_grad=True)
    layers = [nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.AvgPool2d(2), nn.ReLU(), nn.GELU(),
              nn.Sigmoid(), nn.Tanh(), nn.Softmax(dim=1), nn.Dropout(0.3), nn.Flatten(),
              nn.LayerNorm(6), nn.BatchNorm2d(3), nn.Identity(), nn.Linear(6, 2)]
    for layer in layers:
        x4.grad = None
        out = layer(x4)
        out = out[0] if isinstance(out, tuple) else out
        assert out.dtype == np.float32, type(layer).__name__
        (out * 0.5).sum().backward()
        assert x4.grad.dtype == np.float32, type(layer).__name__
        assert all(p.grad.dtype == np.float32 for p in layer.parameters())
    for layer in (nn.ChannelAttention(3, 6, 6, hidden=(4,)), nn.AttentionPool2d(3, 6, 6)):
        fused, weights = layer(x4)
        assert fused.dtype == weights.dtype == np.float32


def test_replacing_a_member_keeps_its_position():
    # Regression: replacing a parameter, buffer or submodule moved it to the end, so a
    # ModuleList ran its layers in the wrong order after ml[0] = ...
    lin = nn.Linear(2, 2)
    lin.weight = nn.Parameter(np.zeros((2, 2), np.float32))
    assert list(lin.state_dict()) == ["weight", "bias"]
    lin.register_parameter("weight", nn.Parameter(np.ones((2, 2), np.float32)))
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    assert lin.weight.numpy().all()

    bn = nn.BatchNorm2d(2)
    buffers = [n for n, _ in bn.named_buffers()]
    bn.register_buffer(buffers[0], np.ones(2, np.float32), persistent=False)
    assert [n for n, _ in bn.named_buffers()] == buffers
    assert buffers[0] not in bn.state_dict()
    bn.register_buffer(buffers[0], np.ones(2, np.float32))      # persistent again
    assert list(bn.state_dict())[2:] == buffers

    ml = nn.ModuleList([nn.Linear(1, 1), nn.Linear(1, 2), nn.Linear(2, 3)])
    ml[0] = nn.Linear(1, 1)
    ml[-1] = nn.Linear(2, 4)
    assert list(ml._modules) == ["0", "1", "2"]
    assert [m.out_features for m in ml] == [1, 2, 4]
    seq = nn.Sequential(nn.Linear(1, 2), nn.ReLU())
    seq.add_module("0", nn.Linear(1, 3))
    assert list(seq._modules) == ["0", "1"] and seq(minidl.randn(2, 1)).shape == (2, 3)

    # A name that changes kind leaves its old registry (a parameter's name cannot take
    # a module: PyTorch raises there, see below).
    bn.running_mean = nn.Identity()
    assert "running_mean" not in bn._buffers and list(bn._modules) == ["running_mean"]
    assert "running_mean" not in [n for n, _ in bn.named_buffers()]


class _SharedNet(nn.Module):
    def __init__(self, lib):
        super().__init__()
        self.a = lib.Linear(3, 3)
        self.b = self.a                          # one submodule under two names
        self.w1 = lib.Parameter(lib.Linear(1, 2).weight.data)
        self.w2 = self.w1                        # one parameter under two names


def test_state_dict_lists_shared_members_under_every_name():
    # Regression: state_dict walked the deduplicated named_modules(), saving 'b' not at all.
    net = _SharedNet(nn)
    keys = ["w1", "w2", "a.weight", "a.bias", "b.weight", "b.bias"]
    assert list(net.state_dict()) == keys
    assert [n for n, _ in net.named_parameters()] == ["w1", "a.weight", "a.bias"]
    state = {k: np.full(v.shape, 2.0, np.float32) for k, v in net.state_dict().items()}
    assert net.load_state_dict(state).missing_keys == []
    assert (net.a.weight.numpy() == 2).all()
    del state["b.bias"]
    assert net.load_state_dict(state, strict=False).missing_keys == ["b.bias"]


def test_shared_members_state_dict_keys_match_torch():
    torch = _torch()

    class TorchShared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = self.a
            self.w1 = torch.nn.Parameter(torch.zeros(2, 1))
            self.w2 = self.w1

    ours, theirs = _SharedNet(nn), TorchShared()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(to_torch_state(ours))            # strict: the same key set
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})


def test_train_calls_each_childs_train():
    # Regression: train()/eval() set the flag on every descendant directly, so a layer
    # that overrides train() (a frozen BatchNorm) was switched to training anyway.
    class FrozenBatchNorm(nn.BatchNorm2d):
        def train(self, mode=True):
            return super().train(False)

    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Sequential(FrozenBatchNorm(2)))
    assert model.train() is model
    assert model.training and model[0].training and model[1].training
    assert not model[1][0].training
    model(minidl.randn(4, 1, 3, 3))
    assert not model[1][0].running_mean.numpy().any()        # eval mode: stats untouched
    model.eval()
    assert not any(m.training for m in model.modules())


def _params_with_grads(grads):
    params = [nn.Parameter(np.zeros(g.shape, g.dtype)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = minidl.tensor(g.copy())
    return params


def test_clip_grad_norm_special_norms_and_nonfinite():
    ps = _params_with_grads([np.array([0.5, 2.0, -3.0], np.float32)])
    assert nn.utils.clip_grad_norm_(ps, 10.0, -math.inf).item() == 0.5   # min |g|, not max
    # norm 0 is the count of parameters with a non-zero gradient (norm 0 of the
    # per-parameter counts), as PyTorch; 2 > max_norm 1, so the gradients halve
    ps = _params_with_grads([np.array([0.0, 2.0, -3.0], np.float32), np.ones(2, np.float32)])
    total = nn.utils.clip_grad_norm_(ps, 1.0, 0)
    assert total.item() == 2.0 and total.dtype == np.float32
    assert_close(ps[0].grad, np.array([0.0, 1.0, -1.5], np.float32), rtol=1e-5)
    # a NaN in any gradient, not only the first, is found (Python's max skips NaN)
    grads = [np.ones(2, np.float32), np.array([np.nan, 1.0], np.float32)]
    for norm_type in (math.inf, -math.inf, 2.0, 1.0):
        with pytest.raises(RuntimeError, match="nan"):
            nn.utils.clip_grad_norm_(_params_with_grads(grads), 1.0, norm_type,
                                     error_if_nonfinite=True)
    # without the error, a NaN total makes every gradient NaN, as PyTorch's multiply does
    ps = _params_with_grads(grads)
    assert np.isnan(nn.utils.clip_grad_norm_(ps, 1.0).item())
    assert all(np.isnan(p.grad.numpy()).all() for p in ps)
    with pytest.raises(ValueError, match="empty"):
        nn.utils.clip_grad_norm_(_params_with_grads([np.ones((3, 0), np.float32)]), 1.0, math.inf)


def test_clip_grad_norm_every_norm_type_matches_torch():
    torch = _torch()
    rng = np.random.default_rng(0)
    for norm_type in (2.0, 1.0, 0.5, 3.0, -1.0, 0, math.inf, -math.inf):
        grads = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (5,))]
        grads[1][2] = 0.0
        ps = _params_with_grads(grads)
        tps = [torch.zeros(g.shape, requires_grad=True) for g in grads]
        for t, g in zip(tps, grads):
            t.grad = torch.tensor(g)
        total = nn.utils.clip_grad_norm_(ps, 1.0, norm_type)
        assert_close(total, torch.nn.utils.clip_grad_norm_(tps, 1.0, norm_type).numpy(),
                     msg=f"norm_type={norm_type}: ")
        for p, t in zip(ps, tps):
            assert_close(p.grad, t.grad.numpy(), msg=f"norm_type={norm_type}: ")
    # an inf gradient: the total is inf and the coefficient 0, so inf * 0 = NaN
    ps = _params_with_grads([np.array([np.inf, 1.0], np.float32)])
    t = torch.zeros(2, requires_grad=True)
    t.grad = torch.tensor([np.inf, 1.0])
    with np.errstate(invalid="ignore"):
        total = nn.utils.clip_grad_norm_(ps, 1.0)
    assert total.item() == torch.nn.utils.clip_grad_norm_([t], 1.0).item() == math.inf
    np.testing.assert_array_equal(ps[0].grad.numpy(), t.grad.numpy())


def test_linear_with_no_input_features_as_torch():
    with pytest.warns(UserWarning, match="zero-element tensors is a no-op"):
        m = nn.Linear(0, 3)
    assert not m.bias.numpy().any()          # PyTorch's bias bound is 0 for fan_in 0
    y = m(minidl.zeros(2, 0))
    assert y.shape == (2, 3) and not y.numpy().any()


def test_init_rejects_bad_mode_and_bool_slope():
    t = nn.Parameter(np.empty((4, 3), np.float32))
    for init_fn in (nn.init.kaiming_uniform_, nn.init.kaiming_normal_):
        with pytest.raises(ValueError, match=r"mode must be one of \('fan_in', 'fan_out'\)"):
            init_fn(t, mode="fan_avg")
        init_fn(t, mode="FAN_OUT")               # any case, as PyTorch
    with pytest.raises(ValueError, match="negative slope must be a number, got True"):
        nn.init.calculate_gain("leaky_relu", True)
    assert nn.init.calculate_gain("leaky_relu", 0) == math.sqrt(2.0)


def test_zero_grad_without_set_to_none_zeroes_in_place():
    lin = nn.Linear(2, 2)
    opt = minidl.optim.SGD(lin.parameters(), lr=0.1)
    for zero_grad in (lin.zero_grad, opt.zero_grad):
        lin(minidl.ones(1, 2)).sum().backward()
        held = lin.weight.grad
        zero_grad(set_to_none=False)
        assert lin.weight.grad is held and not held.numpy().any()   # seen through the reference
        zero_grad()
        assert lin.weight.grad is None


def test_registration_refuses_names_as_pytorch():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign int as child module 'fc'"):
        model = nn.Sequential()
        model.fc = nn.Linear(1, 1)
        model.fc = 5
    with pytest.raises(KeyError, match="attribute 'weight' already exists"):
        lin.register_buffer("weight", minidl.zeros(2, 2))
    assert [name for name, _ in lin.named_parameters()] == ["weight", "bias"]
    for method, value in [("register_buffer", minidl.zeros(1)),
                          ("register_parameter", nn.Parameter(np.zeros(1, np.float32))),
                          ("add_module", nn.Linear(1, 1))]:
        with pytest.raises(KeyError, match="contain no '.'"):
            getattr(lin, method)("a.b", value)
    lin.register_buffer("running", minidl.zeros(1))
    lin.register_buffer("running", minidl.ones(1))   # replacing one's own buffer is fine
    assert lin.running.numpy().tolist() == [1.0]


def _torch_twins():
    torch = pytest.importorskip("torch")
    import inspect
    from minidl import optim
    twins = [(getattr(optim, n), getattr(torch.optim, n)) for n in ("SGD", "Adam", "AdamW")]
    for name in dir(optim.lr_scheduler):
        ours = getattr(optim.lr_scheduler, name)
        if inspect.isclass(ours) and hasattr(torch.optim.lr_scheduler, name):
            twins.append((ours, getattr(torch.optim.lr_scheduler, name)))
    for name in dir(nn):
        ours = getattr(nn, name)
        if inspect.isclass(ours) and issubclass(ours, nn.Module) and hasattr(torch.nn, name):
            twins.append((ours, getattr(torch.nn, name)))
    return twins


# softmax over the last dim by default, where PyTorch picks one implicitly (with a warning)
# each framework's own relu function
_DEFAULTS_THAT_DIFFER = {("Softmax", "dim"), ("TransformerEncoderLayer", "activation")}


def test_constructor_signatures_and_defaults_match_torch():
    import inspect
    checked = 0
    for ours, theirs in _torch_twins():
        mine = inspect.signature(ours).parameters
        torch_params = inspect.signature(theirs).parameters
        shared = [n for n in mine if n in torch_params and n not in ("device", "dtype")]
        # the same positional order for the names both have
        assert shared == [n for n in torch_params if n in shared], ours.__name__
        for name in shared:
            if (ours.__name__, name) not in _DEFAULTS_THAT_DIFFER:
                assert mine[name].default == torch_params[name].default, (ours.__name__, name)
        checked += 1
    assert checked >= 25


def test_module_dict_registers_orders_and_replaces():
    md = nn.ModuleDict({"enc": nn.Linear(2, 3), "act": nn.ReLU()})
    md["dec"] = nn.Linear(3, 2)
    assert list(md) == ["enc", "act", "dec"] and len(md) == 3 and "act" in md
    assert list(md.state_dict()) == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
    assert len(list(md.parameters())) == 4
    md["enc"] = nn.Linear(2, 5)           # replaced in place: the order is kept
    assert list(md.keys()) == ["enc", "act", "dec"] and md["enc"].out_features == 5
    popped = md.pop("act")
    assert isinstance(popped, nn.ReLU) and list(md) == ["enc", "dec"]
    md.update([("norm", nn.LayerNorm(5))])
    assert [type(m).__name__ for m in md.values()] == ["Linear", "Linear", "LayerNorm"]
    with pytest.raises(KeyError, match="no module named 'missing'"):
        md["missing"]
    with pytest.raises(TypeError, match=r"element 0 should be a \(name, module\) pair"):
        md.update([nn.ReLU()])
    with pytest.raises(KeyError, match="contain no '.'"):
        md["a.b"] = nn.ReLU()
    md.clear()
    assert len(md) == 0 and not list(md.parameters())


def test_module_dict_state_dict_matches_torch():
    torch = _torch()
    tmd = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 3), "b": torch.nn.BatchNorm1d(3)})
    md = nn.ModuleDict({"a": nn.Linear(2, 3), "b": nn.BatchNorm1d(3)})
    tstate = tmd.state_dict()
    assert list(md.state_dict()) == list(tstate)
    md.load_state_dict({k: v.numpy() for k, v in tstate.items()})
    assert_close(md["a"].weight, tstate["a.weight"].numpy())


def test_sequential_and_module_list_insert_extend_pop_as_torch():
    torch = _torch()
    kinds = ((nn.Sequential, torch.nn.Sequential, lambda c, ms: c(*ms)),
             (nn.ModuleList, torch.nn.ModuleList, lambda c, ms: c(ms)))
    for ours_cls, theirs_cls, make in kinds:
        for index in (0, 1, 3, -1, -3, -4, 4):
            for op in ("insert", "pop"):
                if op == "insert" and not 0 <= index <= 3 and ours_cls is nn.ModuleList:
                    # torch's ModuleList.insert fails there (a KeyError, or a gap in its
                    # names); minidl's follows Sequential.insert
                    continue
                results = []
                for lib, cls in ((nn, ours_cls), (torch.nn, theirs_cls)):
                    c = make(cls, [lib.ReLU(), lib.Tanh(), lib.Sigmoid()])
                    try:
                        got = c.insert(index, lib.Identity()) if op == "insert" else c.pop(index)
                        got = type(got).__name__ if op == "pop" else None
                        results.append((got, [type(m).__name__ for m in c], list(c._modules)))
                    except IndexError:
                        results.append("IndexError")
                assert results[0] == results[1], (ours_cls.__name__, op, index)
    seq = nn.Sequential(nn.Linear(2, 3)).extend([nn.ReLU(), nn.Linear(3, 1)])
    seq.insert(1, nn.LayerNorm(3))
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight",
                                      "3.bias"]
    with pytest.raises(TypeError, match="Sequential.insert: expected a Module, got int"):
        seq.insert(0, 3)


def test_sequential_and_module_list_item_assignment_as_torch():
    torch = _torch()
    for ours, theirs in ((nn.Sequential(nn.ReLU(), nn.Linear(2, 2), nn.Tanh()),
                          torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(2, 2),
                                              torch.nn.Tanh())),
                         (nn.ModuleList([nn.ReLU(), nn.Linear(2, 2), nn.Tanh()]),
                          torch.nn.ModuleList([torch.nn.ReLU(), torch.nn.Linear(2, 2),
                                               torch.nn.Tanh()]))):
        ours[1], theirs[1] = nn.Sigmoid(), torch.nn.Sigmoid()
        ours[-1], theirs[-1] = nn.Linear(2, 3), torch.nn.Linear(2, 3)
        assert list(ours._modules) == list(theirs._modules)
        assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in theirs]
        assert list(ours.state_dict()) == list(theirs.state_dict()) == ["2.weight", "2.bias"]
        name = type(ours).__name__
        with pytest.raises(IndexError, match=f"{name}.__setitem__: index 3 is out of range"):
            ours[3] = nn.ReLU()
        with pytest.raises(TypeError, match=f"{name}: expected a Module to assign, got int"):
            ours[0] = 3
        assert [type(m).__name__ for m in ours] == ["ReLU", "Sigmoid", "Linear"]


def test_module_list_insert_checks_the_index_as_sequential():
    ml = nn.ModuleList([nn.ReLU(), nn.Tanh()])
    ml.insert(-1, nn.Identity())
    assert [type(m).__name__ for m in ml] == ["ReLU", "Identity", "Tanh"]
    with pytest.raises(IndexError, match="ModuleList.insert: index 5 is out of range for 3"):
        ml.insert(5, nn.ReLU())


def test_module_to_refuses_a_non_float_dtype():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="Linear.to: only floating dtypes"):
        lin.to(np.int64)
    assert lin.weight.dtype == np.float32


def test_del_of_sequential_and_module_list_items_renumbers_as_torch():
    torch = _torch()
    for ours, theirs in ((nn.Sequential(nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.Identity()),
                          torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Tanh(),
                                              torch.nn.Sigmoid(), torch.nn.Identity())),
                         (nn.ModuleList([nn.ReLU(), nn.Tanh(), nn.Sigmoid()]),
                          torch.nn.ModuleList([torch.nn.ReLU(), torch.nn.Tanh(),
                                               torch.nn.Sigmoid()]))):
        for index in (1, slice(0, 1)):
            del ours[index]
            del theirs[index]
            assert list(ours._modules) == list(theirs._modules)
            assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in theirs]


def test_a_module_cannot_replace_a_parameter_as_torch():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign ReLU as parameter 'weight'"):
        lin.weight = nn.ReLU()
    assert isinstance(lin.weight, nn.Parameter) and "weight" not in lin._modules


def test_attention_layers_take_dtype_and_reset_parameters():
    minidl.manual_seed(0)
    channel = nn.ChannelAttention(3, 4, 4, hidden=(5,), dtype=minidl.float64)
    assert all(p.dtype == np.float64 for p in channel.parameters())
    pool = nn.AttentionPool2d(3, 4, 4, dtype=np.float64)
    assert all(p.dtype == np.float64 for p in pool.parameters())
    before = {k: v.numpy().copy() for k, v in pool.state_dict().items()}
    pool.reset_parameters()
    after = pool.state_dict()
    changed = [k for k in before if not np.array_equal(before[k], after[k].numpy())]
    # every drawn tensor is drawn anew; the zero-initialised biases stay zero
    assert {"query", "pos_embedding", "attn.in_proj_weight", "attn.out_proj.weight"} <= set(changed)
    with pytest.raises(TypeError, match="AttentionPool2d: dtype must be a floating dtype"):
        nn.AttentionPool2d(3, 4, 4, dtype=np.int64)
