"""Optimizers and schedulers against torch.optim: 20-step trajectories, lr sequences,
in-place updates without per-step allocation, param groups, state dicts."""
from __future__ import annotations

import numpy as np
import pytest

import minidl
from minidl import nn, optim
from minidl.optim import lr_scheduler as LS
from minidl.testing import assert_close

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.5, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6)),
]


def _loss(lib, X, w, b):
    return ((X @ w + b).tanh() ** 2).sum()


@pytest.mark.parametrize("kind,kwargs", CONFIGS)
def test_trajectory_matches_torch(kind, kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0, b0, X = rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((5, 3))
    mw, mb = minidl.tensor(w0, requires_grad=True), minidl.tensor(b0, requires_grad=True)
    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    mo = getattr(optim, kind)([mw, mb], **kwargs)
    to = getattr(torch.optim, kind)([tw, tb], **kwargs)
    w_array = mw._data
    for _ in range(20):
        mo.zero_grad()
        to.zero_grad()
        _loss(minidl, minidl.tensor(X), mw, mb).backward()
        _loss(torch, torch.tensor(X), tw, tb).backward()
        mo.step()
        to.step()
    assert mw._data is w_array                   # updated in place
    assert_close(mw, tw.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert_close(mb, tb.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_float32_no_allocation_after_first_step_and_grads_untouched(kind):
    p = minidl.tensor(np.ones((4, 4), np.float32), requires_grad=True)
    opt = getattr(optim, kind)([p], lr=0.1, weight_decay=0.1,
                               **({"momentum": 0.9, "nesterov": True} if kind == "SGD" else {}))
    grad = np.full((4, 4), 0.5, np.float32)
    p.grad = minidl.from_numpy(grad)   # shared: the step must not write into it
    opt.step()
    state_ids = [id(v) for v in opt.state[p].values() if isinstance(v, np.ndarray)]
    # the one-pass kernels (Numba) need no scratch at all
    scratch_ids = [id(v) for v in opt._scratch.get(id(p), {}).values()]
    opt.step()
    assert [id(v) for v in opt.state[p].values() if isinstance(v, np.ndarray)] == state_ids
    assert [id(v) for v in opt._scratch.get(id(p), {}).values()] == scratch_ids
    assert (grad == 0.5).all() and p.grad._data is grad
    assert p.dtype == np.float32 and all(v.dtype == np.float32 for v in opt.state[p].values()
                                         if isinstance(v, np.ndarray))


def test_param_groups_zero_grad_and_state_dict_roundtrip():
    minidl.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = optim.SGD([{"params": model[0].parameters(), "lr": 0.5},
                     {"params": model[2].parameters()}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    x = minidl.randn(5, 3)

    def step(o):
        o.zero_grad()
        model(x).sum().backward()
        o.step()

    step(opt)
    state = opt.state_dict()   # shares the live buffers, as PyTorch: copy for a snapshot
    state["state"] = {i: {k: minidl.tensor(v.numpy().copy()) for k, v in s.items()}
                      for i, s in state["state"].items()}
    assert sorted(state["state"]) == [0, 1, 2, 3]
    assert state["param_groups"][1]["params"] == [2, 3]
    snapshot = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    step(opt)
    after = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    model.load_state_dict(snapshot)
    opt2 = optim.SGD([{"params": model[0].parameters(), "lr": 9.0},
                      {"params": model[2].parameters()}], lr=9.0, momentum=0.9)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == 0.5
    step(opt2)
    for k, v in model.state_dict().items():
        assert_close(v, after[k])
    opt2.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    opt2.zero_grad()
    model(x).sum().backward()
    opt2.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in model.parameters())
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(model.parameters(), lr=0.1, nesterov=True)


SCHEDULES = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[6, 2, 9, 9], gamma=0.5)),
    ("ExponentialLR", dict(gamma=0.8)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=20)),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=20, three_phase=True, anneal_strategy="linear")),
]


@pytest.mark.parametrize("name,kwargs", SCHEDULES)
@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_scheduler_lrs_match_torch(name, kwargs, kind):
    torch = pytest.importorskip("torch")
    extra = {"momentum": 0.9} if kind == "SGD" else {}
    p, tp = minidl.tensor(np.zeros(2), requires_grad=True), torch.zeros(2, requires_grad=True)
    mo = getattr(optim, kind)([p], lr=0.1, **extra)
    to = getattr(torch.optim, kind)([tp], lr=0.1, **extra)
    ms = getattr(LS, name)(mo, **kwargs)
    ts = getattr(torch.optim.lr_scheduler, name)(to, **kwargs)
    mine, theirs = [], []
    for _ in range(19):
        for out, o in ((mine, mo), (theirs, to)):
            g = o.param_groups[0]
            out += [g["lr"], g["momentum"] if kind == "SGD" else g["betas"][0]]
        to.step()
        mo.step()
        ms.step()
        ts.step()
    assert_close(np.array(mine), np.array(theirs), rtol=1e-12, atol=1e-14)
    assert_close(np.array(ms.get_last_lr()), np.array(ts.get_last_lr()), rtol=1e-12)


def test_scheduler_state_dict_resumes_sequence():
    p = minidl.tensor(np.zeros(2), requires_grad=True)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    sched = LS.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    for _ in range(4):
        sched.step()
    state = sched.state_dict()
    expected = []
    for _ in range(3):
        sched.step()
        expected.append(opt.param_groups[0]["lr"])
    opt2 = optim.SGD([p], lr=0.1, momentum=0.9)
    sched2 = LS.OneCycleLR(opt2, max_lr=1.0, total_steps=10)
    sched2.load_state_dict(state)
    got = []
    for _ in range(3):
        sched2.step()
        got.append(opt2.param_groups[0]["lr"])
    assert got == expected
    lam = LS.LambdaLR(optim.SGD([p], lr=0.2), lambda s: 0.5 ** s)
    lam.step()
    assert lam.get_last_lr() == [0.1] and "lr_lambdas" not in lam.state_dict()


@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_matches_torch_for_maximize_weight_decay_amsgrad(kind, maximize, weight_decay,
                                                             amsgrad):
    # Regression: maximize with (coupled) weight decay used one scratch array for both the
    # negated gradient and the decay term, so the gradient was lost.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) for _ in range(5)]
    kwargs = {"lr": 0.01, "weight_decay": weight_decay, "amsgrad": amsgrad, "maximize": maximize}
    mp, tp = nn.Parameter(w0.copy()), torch.nn.Parameter(torch.tensor(w0.copy()))
    mo, to = getattr(optim, kind)([mp], **kwargs), getattr(torch.optim, kind)([tp], **kwargs)
    for g in grads:
        mp.grad, tp.grad = minidl.tensor(g.copy()), torch.tensor(g.copy())
        mo.step()
        to.step()
    assert_close(mp, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["SGD", "Adam", "AdamW"])
def test_frozen_parameters_are_accepted_and_skipped(kind):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].requires_grad_(False)
    opt = getattr(optim, kind)(model.parameters(), lr=0.1)   # PyTorch accepts them too
    frozen = model[0].weight.numpy().copy()
    trained = model[1].weight.numpy().copy()
    model(minidl.randn(3, 2)).sum().backward()
    assert model[0].weight.grad is None
    opt.step()
    assert_close(model[0].weight, frozen, rtol=0, atol=0)
    assert not np.array_equal(model[1].weight.numpy(), trained)


CHAINS = [
    lambda L, o: [L.StepLR(o, 2, 0.5), L.StepLR(o, 3, 0.1)],
    lambda L, o: [L.ExponentialLR(o, 0.9), L.MultiStepLR(o, [3, 5, 5], 0.5)],
    lambda L, o: [L.CosineAnnealingLR(o, 7, 0.01), L.StepLR(o, 4, 0.5)],
    lambda L, o: [L.LambdaLR(o, lambda s: min(1.0, (s + 1) / 5)), L.CosineAnnealingLR(o, 10)],
    # built to resume at step 3 (groups carry initial_lr)
    lambda L, o: [L.StepLR(o, 2, 0.5, last_epoch=3), L.ExponentialLR(o, 0.8, last_epoch=3),
                  L.CosineAnnealingLR(o, 5, last_epoch=3), L.MultiStepLR(o, [4], last_epoch=3)],
]


@pytest.mark.parametrize("chain", range(len(CHAINS)))
def test_chained_schedulers_compose_as_torch(chain):
    # Regression: every scheduler set lr from initial_lr, so the last one to step
    # silently undid the others (StepLR(2, 0.5) + StepLR(3, 0.1): 1, 1, 0.1, ...
    # where PyTorch gives 1, 0.5, 0.05, ...).
    torch = pytest.importorskip("torch")
    lrs = []
    for lib, opt_cls, L, tensor in ((minidl, optim.SGD, LS, minidl.tensor),
                                    (torch, torch.optim.SGD, torch.optim.lr_scheduler,
                                     torch.tensor)):
        p = tensor(np.zeros(2), requires_grad=True)
        opt = opt_cls([p], lr=1.0, momentum=0.9)
        opt.param_groups[0]["initial_lr"] = 2.0
        scheds = CHAINS[chain](L, opt)
        seq = []
        for _ in range(25):
            seq.append(opt.param_groups[0]["lr"])
            opt.step()
            for sched in scheds:
                sched.step()
        lrs.append(seq)
    assert_close(np.array(lrs[0]), np.array(lrs[1]), rtol=1e-12, atol=1e-15)


def test_chainable_scheduler_resumes_from_both_state_dicts():
    p = minidl.tensor(np.zeros(2), requires_grad=True)

    def make():
        opt = optim.SGD([p], lr=0.5, momentum=0.9)
        return opt, [LS.CosineAnnealingLR(opt, 9, 0.01), LS.MultiStepLR(opt, [2, 6], 0.5)]

    opt, scheds = make()
    seq = []
    for i in range(12):
        if i == 5:
            saved = (opt.state_dict(), [s.state_dict() for s in scheds])
        seq.append(opt.param_groups[0]["lr"])
        for s in scheds:
            s.step()
    opt2, scheds2 = make()
    opt2.load_state_dict(saved[0])
    for s, state in zip(scheds2, saved[1]):
        s.load_state_dict(state)
    resumed = []
    for _ in range(7):
        resumed.append(opt2.param_groups[0]["lr"])
        for s in scheds2:
            s.step()
    assert resumed == seq[5:]
    with pytest.raises(TypeError, match="milestones must be a list of ints"):
        LS.MultiStepLR(optim.SGD([p], lr=0.1), milestones=5)


def test_one_cycle_wants_one_max_lr_per_group():
    # Regression: a short list silently left groups out (a KeyError later).
    a, b = minidl.zeros(2, requires_grad=True), minidl.zeros(2, requires_grad=True)
    opt = optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="expected 2 values for max_lr .* got 1"):
        LS.OneCycleLR(opt, max_lr=[0.5], total_steps=10)


@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_adam_survives_a_huge_float32_gradient(kind):
    # Regression: g * g overflowed to inf for |g| ~ 1e20, and v = inf froze the
    # parameter for good; PyTorch computes (1 - b2) * g first.
    torch = pytest.importorskip("torch")
    p = minidl.tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    tp = torch.tensor([1.0, 2.0], requires_grad=True)
    opt, topt = getattr(optim, kind)([p], lr=0.1), getattr(torch.optim, kind)([tp], lr=0.1)
    for g in ([1e20, -1e20], [1.0, -1.0], [0.5, 0.5]):
        p.grad = minidl.tensor(np.array(g, np.float32))
        tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    assert_close(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(), dict(mode="max", threshold_mode="abs", threshold=0.05),
                                    dict(patience=1, cooldown=2, factor=0.5, min_lr=0.02),
                                    dict(patience=0, factor=0.3, min_lr=[0.05, 0.0])])
def test_reduce_lr_on_plateau_matches_torch(kwargs):
    torch = pytest.importorskip("torch")
    metrics = [1.0, 0.9, 0.95, 0.95, 0.96, 0.89, 0.9, 0.9, 0.91, 0.92, 0.5, 0.6, 0.6,
               0.61] * 2
    lrs = []
    for lib, opt_cls, L, tensor in ((minidl, optim.SGD, LS, minidl.tensor),
                                    (torch, torch.optim.SGD, torch.optim.lr_scheduler,
                                     torch.tensor)):
        a, b = tensor(np.zeros(2), requires_grad=True), tensor(np.zeros(2), requires_grad=True)
        opt = opt_cls([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=1.0)
        sched = L.ReduceLROnPlateau(opt, **kwargs)
        seq = []
        for i, m in enumerate(metrics):
            sched.step(m)
            seq.append([g["lr"] for g in opt.param_groups] + sched.get_last_lr())
            if i == 9 and lib is minidl:   # resume half-way through
                state, opt_state = sched.state_dict(), opt.state_dict()
                opt = opt_cls([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=1.0)
                opt.load_state_dict(opt_state)
                sched = L.ReduceLROnPlateau(opt, **kwargs)
                sched.load_state_dict(state)
        lrs.append(seq)
    assert_close(np.array(lrs[0]), np.array(lrs[1]), rtol=1e-12, atol=0)
    p = minidl.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match="factor must be below 1"):
        LS.ReduceLROnPlateau(optim.SGD([p], lr=0.1), factor=1.0)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        LS.ReduceLROnPlateau(optim.SGD([p], lr=0.1), mode="lowest")
