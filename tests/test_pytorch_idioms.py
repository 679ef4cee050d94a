"""PyTorch idioms that real scripts use (issue 20), each checked against PyTorch."""
from __future__ import annotations

import os

import numpy as np
import pytest

import minidl
from minidl import nn, optim
from minidl.nn import functional as F
from minidl.testing import assert_close, gradcheck
from torch_helpers import check_vs_torch


def _torch():
    return pytest.importorskip("torch")


# ------------------------------------------------------------- namespaces

def test_utils_data_namespace_holds_the_data_classes():
    from minidl.utils.data import (ConcatDataset, DataLoader, Dataset, Subset, TensorDataset,
                                   default_collate, get_worker_info, random_split)
    ds = TensorDataset(np.arange(10, dtype=np.float32), np.arange(10))
    a, b = random_split(ds, [7, 3], seed=0)
    assert isinstance(a, Subset) and issubclass(TensorDataset, Dataset)
    both = ConcatDataset([a, b])
    assert len(both) == 10 and sorted(int(both[i][1]) for i in range(10)) == list(range(10))
    assert callable(default_collate) and get_worker_info() is None
    assert [len(x) for x, _ in DataLoader(both, batch_size=4)] == [4, 4, 2]


def test_concat_dataset_index_errors_and_negative_indices():
    from minidl.utils.data import ConcatDataset, TensorDataset
    cat = ConcatDataset([TensorDataset(np.arange(3)), TensorDataset(np.arange(3, 5))])
    assert int(cat[-1][0]) == 4 and int(cat[3][0]) == 3
    with pytest.raises(IndexError):
        cat[5]
    with pytest.raises(ValueError, match="empty"):
        ConcatDataset([])


def test_accelerator_api_on_a_cpu_machine():
    acc = minidl.accelerator
    assert acc.is_available() == minidl.cuda.is_available()
    if not acc.is_available():
        assert acc.device_count() == 0 and acc.current_device_index() == -1
        assert acc.current_accelerator(check_available=True) is None
        device = acc.current_accelerator() if acc.is_available() else "cpu"
        assert minidl.zeros(2, device=device).device == "cpu"


# ------------------------------------------------------------ per-image transforms

def test_per_image_transforms_match_torchvision_style_compose():
    from minidl.data.transforms import Compose, Normalize, ToTensor
    from minidl.utils.data import DataLoader, TensorDataset
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 6), dtype=np.uint8)
    tf = Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])
    one = tf(images[0])
    assert isinstance(one, minidl.Tensor) and one.shape == (1, 6, 6) and one.dtype == np.float32
    assert_close(one, ((images[0] / np.float32(255) - 0.1307) / 0.3081)[None].astype(np.float32))
    x, y = next(iter(DataLoader(TensorDataset(images, np.arange(5), transform=tf), batch_size=5)))
    assert x.shape == (5, 1, 6, 6)
    assert_close(x[2], tf(images[2]))
    torch = _torch()
    t = torch.tensor(images[0], dtype=torch.float32)[None] / 255
    assert_close(one, ((t - 0.1307) / 0.3081).numpy())


def test_to_tensor_colour_images_and_per_channel_normalize():
    from minidl.data.transforms import Normalize, ToTensor
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    t = ToTensor()(rgb)
    assert t.shape == (3, 4, 5)
    assert_close(t[1], rgb[:, :, 1] / np.float32(255))
    out = Normalize((0.5, 0.4, 0.3), (0.2, 0.2, 0.1))(t)
    assert_close(out[2], (rgb[:, :, 2] / np.float32(255) - 0.3) / np.float32(0.1), rtol=1e-5)
    with pytest.raises(ValueError, match="one image"):
        ToTensor()(np.zeros((2, 3, 4, 5), np.uint8))


# ------------------------------------------------------------ DataLoader workers

class _Squares(minidl.utils.data.Dataset):
    def __len__(self):
        return 11

    def __getitem__(self, i):
        from minidl.utils.data import get_worker_info
        info = get_worker_info()
        return np.float32(i * i), np.int64(-1 if info is None else info.id)


class _Failing(_Squares):
    def __getitem__(self, i):
        if i == 7:
            raise KeyError("sample 7 is broken")
        return super().__getitem__(i)


def test_workers_give_the_same_batches_in_order_and_run_in_other_processes():
    from minidl.utils.data import DataLoader
    ds = _Squares()
    plain = [x.numpy() for x, _ in DataLoader(ds, batch_size=3, shuffle=True, seed=4)]
    loader = DataLoader(ds, batch_size=3, shuffle=True, seed=4, num_workers=2,
                        prefetch_factor=1, pin_memory=True)
    got = list(loader)
    assert all(np.array_equal(p, x.numpy()) for p, (x, _) in zip(plain, got))
    assert len(got) == len(plain) == 4
    assert set(np.concatenate([w.numpy() for _, w in got]).tolist()) == {0, 1}


def test_workers_random_transforms_are_deterministic_and_worker_count_free():
    from minidl.data import RandomShift
    from minidl.utils.data import DataLoader, TensorDataset
    images = np.arange(8 * 5 * 5, dtype=np.float32).reshape(8, 5, 5)
    ds = TensorDataset(images, transform=RandomShift(1))
    runs = [[b[0].numpy() for b in DataLoader(ds, batch_size=2, seed=3, num_workers=w)]
            for w in (1, 2, 2)]
    for other in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(runs[0], other))


def test_worker_errors_name_the_batch_and_stop_the_workers():
    from minidl.data.dataloader import WorkerError
    from minidl.utils.data import DataLoader
    it = iter(DataLoader(_Failing(), batch_size=2, num_workers=2))
    with pytest.raises(WorkerError, match="sample 7 is broken"):
        list(it)
    assert it.workers is None   # shut down
    early = iter(DataLoader(_Squares(), batch_size=2, num_workers=2))
    next(early)
    procs = list(early.workers)
    early.close()
    assert not any(p.is_alive() for p in procs)


class _Pids(minidl.utils.data.Dataset):
    def __len__(self):
        return 9

    def __getitem__(self, i):
        return np.float32(i), np.int64(os.getpid())


def test_persistent_workers_last_across_epochs_and_survive_an_early_break():
    from minidl.utils.data import DataLoader
    loader = DataLoader(_Pids(), batch_size=2, shuffle=True, seed=1, num_workers=2,
                        persistent_workers=True)
    fresh = DataLoader(_Pids(), batch_size=2, shuffle=True, seed=1, num_workers=2)
    first = list(loader)
    next(iter(loader))                                   # an epoch left after one batch
    second, third = list(loader), list(fresh)
    pids = {int(p) for _, ps in first + second for p in ps.numpy()}
    assert len(pids) == 2 and os.getpid() not in pids    # the same two processes throughout
    assert {int(p) for _, ps in third for p in ps.numpy()}.isdisjoint(pids)
    assert sorted(float(v) for x, _ in second for v in x.numpy()) == list(range(9))
    workers = list(loader._pool.workers)
    del loader
    import gc
    gc.collect()
    for p in workers:
        p.join(timeout=5)
    assert not any(p.is_alive() for p in workers)


def test_dataloader_worker_arguments_are_checked():
    from minidl.utils.data import DataLoader
    with pytest.raises(ValueError, match="num_workers"):
        DataLoader(_Squares(), num_workers=-1)
    with pytest.raises(ValueError, match="prefetch_factor"):
        DataLoader(_Squares(), prefetch_factor=2)
    with pytest.raises(ValueError, match="persistent_workers"):
        DataLoader(_Squares(), persistent_workers=True)


# ------------------------------------------------------------ in-place init, reset_parameters

def test_inplace_random_fills():
    minidl.manual_seed(0)
    w = minidl.empty(200, 50)
    assert w.normal_(0.0, 0.02) is w
    assert abs(float(w.std()) - 0.02) < 2e-3
    w.uniform_(-0.1, 0.1)
    assert -0.1 <= float(w.min()) and float(w.max()) <= 0.1
    assert set(np.unique(w.bernoulli_(0.5).numpy())) == {0.0, 1.0}
    assert float(w.exponential_(2.0).min()) >= 0
    p = nn.Parameter(minidl.zeros(3))
    with pytest.raises(RuntimeError, match="in-place"):
        p.normal_()
    with minidl.no_grad():
        p.normal_()
    p.data.uniform_(5, 6)
    assert float(p.min()) >= 5


@pytest.mark.parametrize("make", [lambda: nn.Linear(3, 4), lambda: nn.Conv2d(2, 3, 3),
                                  lambda: nn.LayerNorm(4), lambda: nn.BatchNorm2d(3),
                                  lambda: nn.BatchNorm1d(3)])
def test_reset_parameters_restores_the_initialisation(make):
    m = make()
    with minidl.no_grad():
        for p in m.parameters():
            p.fill_(7.0)
    m.reset_parameters()
    assert all(float(p.abs().max()) < 7 for p in m.parameters())


def test_every_layer_with_parameters_takes_device_and_dtype():
    for make in (lambda **k: nn.Linear(3, 4, **k), lambda **k: nn.Conv2d(2, 3, 3, **k),
                 lambda **k: nn.LayerNorm(4, **k), lambda **k: nn.BatchNorm2d(3, **k)):
        m = make(device="cpu", dtype=minidl.float64)
        assert all(p.dtype == np.float64 and p.device == "cpu" for p in m.parameters())
        assert all(p.dtype == np.float32 for p in make().parameters())
        with pytest.raises(TypeError, match="floating"):
            make(dtype=minidl.int64)
    assert nn.Conv2d(1, 2, 3, device=minidl.device("cpu")).weight.device == "cpu"


# ------------------------------------------------------------ losses, dropout2d

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_matches_torch(reduction):
    torch = _torch()
    rng = np.random.default_rng(0)
    x = rng.uniform(0.02, 0.98, (4, 3))
    y = rng.uniform(0, 1, (4, 3))
    w = rng.uniform(0.5, 2, (4, 3))
    check_vs_torch(lambda a, b: torch.nn.functional.binary_cross_entropy(
        a, b, torch.tensor(w), reduction=reduction), [x, y],
        lambda a, b: F.binary_cross_entropy(a, b, w, reduction=reduction))
    check_vs_torch(lambda a, b: torch.nn.BCELoss(reduction=reduction)(a, b), [x, y],
                   lambda a, b: nn.BCELoss(reduction=reduction)(a, b))


def test_binary_cross_entropy_edges_and_gradcheck():
    torch = _torch()
    x, y = np.array([0.0, 1.0, 0.5]), np.array([1.0, 0.0, 1.0])
    ours = F.binary_cross_entropy(minidl.tensor(x), minidl.tensor(y), reduction="none")
    theirs = torch.nn.functional.binary_cross_entropy(torch.tensor(x), torch.tensor(y),
                                                      reduction="none")
    assert_close(ours, theirs.numpy())             # log clamped at -100
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.binary_cross_entropy(minidl.tensor([1.5]), minidl.tensor([1.0]))
    gradcheck(lambda a, b: F.binary_cross_entropy(a, b),
              [np.random.default_rng(2).uniform(0.1, 0.9, (3, 2)),
               np.random.default_rng(3).uniform(0, 1, (3, 2))])


def test_dropout2d_zeroes_whole_channels_and_scales():
    minidl.manual_seed(1)
    x = minidl.ones(8, 16, 3, 3, requires_grad=True)
    m = nn.Dropout2d(0.5)
    y = m(x)
    planes = y.numpy().reshape(8, 16, 9)
    assert set(np.unique(planes)) <= {0.0, 2.0}
    assert (planes.min(-1) == planes.max(-1)).all()        # whole channels
    y.sum().backward()
    assert_close(x.grad, y.numpy())                         # d(x * mask)/dx = mask
    m.eval()
    assert m(x) is x
    with pytest.raises(ValueError, match="Dropout2d"):
        nn.Dropout2d(1.5)


# ------------------------------------------------------------ sort, topk, multinomial

@pytest.mark.parametrize("descending", [False, True])
def test_sort_argsort_match_torch_with_ties_and_gradients(descending):
    torch = _torch()
    x = np.array([[3.0, 1.0, 2.0, 1.0, 5.0], [0.0, 5.0, 5.0, -1.0, 2.0]])
    check_vs_torch(lambda t: torch.sort(t, dim=1, descending=descending, stable=True).values,
                   [x], lambda t: minidl.sort(t, 1, descending).values)
    ours = minidl.argsort(minidl.tensor(x), dim=0, descending=descending)
    theirs = torch.argsort(torch.tensor(x), dim=0, descending=descending, stable=True)
    assert np.array_equal(ours.numpy(), theirs.numpy())
    assert minidl.tensor(x).sort().indices.dtype == np.int64


@pytest.mark.parametrize("largest", [True, False])
def test_topk_matches_torch(largest):
    torch = _torch()
    x = np.random.default_rng(5).permutation(24).reshape(4, 6).astype(np.float64)
    check_vs_torch(lambda t: torch.topk(t, 3, dim=1, largest=largest).values, [x],
                   lambda t: minidl.topk(t, 3, dim=1, largest=largest).values)
    v, i = minidl.tensor(x).topk(2, dim=0, largest=largest)
    tv, ti = torch.topk(torch.tensor(x), 2, dim=0, largest=largest)
    assert np.array_equal(i.numpy(), ti.numpy()) and np.array_equal(v.numpy(), tv.numpy())
    with pytest.raises(ValueError, match="k=7"):
        minidl.topk(minidl.tensor(x), 7)


def test_multinomial_draws_follow_the_weights():
    gen = np.random.default_rng(0)
    w = minidl.tensor([[0.0, 1.0, 3.0], [5.0, 0.0, 0.0]])
    draws = minidl.multinomial(w, 4000, replacement=True, generator=gen)
    assert draws.shape == (2, 4000) and draws.dtype == np.int64
    counts = np.bincount(draws.numpy()[0], minlength=3)
    assert counts[0] == 0 and abs(counts[2] / 4000 - 0.75) < 0.03
    assert (draws.numpy()[1] == 0).all()
    no_repeat = w[0].multinomial(2, generator=gen).numpy()
    assert sorted(no_repeat.tolist()) == [1, 2]
    with pytest.raises(ValueError, match="without replacement"):
        minidl.multinomial(w, 3)


# ------------------------------------------------------------ optimizers

@pytest.mark.parametrize("name, kwargs", [
    ("RMSprop", {}), ("RMSprop", dict(momentum=0.9, centered=True, weight_decay=0.1)),
    ("Adagrad", dict(lr_decay=0.1, initial_accumulator_value=0.2, weight_decay=0.1)),
    ("Adadelta", {}), ("Adadelta", dict(weight_decay=0.1, maximize=True, rho=0.8))])
def test_adaptive_optimizers_match_torch(name, kwargs):
    torch = _torch()
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((5, 3))
    p = nn.Parameter(minidl.tensor(w0.copy()))
    tp = torch.nn.Parameter(torch.tensor(w0.copy()))
    ours, theirs = getattr(optim, name)([p], **kwargs), getattr(torch.optim, name)([tp], **kwargs)
    for k, v in ours.defaults.items():
        assert theirs.defaults[k] == v, k        # PyTorch's defaults
    for _ in range(5):
        g = rng.standard_normal((5, 3))
        p.grad, tp.grad = minidl.tensor(g), torch.tensor(g)
        ours.step()
        theirs.step()
    assert_close(p, tp.detach().numpy())
    state = ours.state_dict()
    again = getattr(optim, name)([nn.Parameter(minidl.tensor(w0.copy()))], **kwargs)
    again.load_state_dict(state)


@pytest.mark.parametrize("make", [optim.SGD, optim.Adam, optim.RMSprop, optim.Adagrad,
                                  optim.Adadelta])
def test_optimizer_hyperparameters_are_validated_by_name(make):
    p = [nn.Parameter(minidl.zeros(2))]
    with pytest.raises(ValueError, match="lr must be a finite number"):
        make(p, lr=float("nan"))
    with pytest.raises(TypeError, match="lr must be a real number, got str"):
        make(p, lr="0.1")
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        make([{"params": p, "lr": float("inf")}], lr=0.1)


# ------------------------------------------------------------ in-place relu

def test_relu_inplace_under_autograd_matches_torch():
    torch = _torch()
    x = np.array([-1.0, 2.0, -3.0, 4.0])

    def theirs(a):
        b = a * 2
        torch.nn.functional.relu(b, inplace=True)
        return b * b

    def ours(a):
        b = a * 2
        F.relu(b, inplace=True)
        return b * b
    check_vs_torch(theirs, [x], ours)
    m = nn.ReLU(inplace=True)
    y = minidl.tensor([-1.0, 2.0])
    assert m(y) is y and y.tolist() == [0.0, 2.0]
    view_base = minidl.tensor([-1.0, 2.0, -3.0])
    F.relu_(view_base[1:])                                  # no graph: writes into the memory
    assert view_base.tolist() == [-1.0, 2.0, 0.0]
    with pytest.raises(RuntimeError, match="leaf Variable"):
        F.relu(minidl.tensor([1.0], requires_grad=True), inplace=True)


# ------------------------------------------------------------ half precision

def test_half_tensors_store_convert_compute_and_kernel_ops_refuse_clearly():
    x = minidl.randn(2, 3)
    h = x.half()
    assert h.dtype == minidl.float16 == minidl.half
    assert h.reshape(3, 2).T.dtype == np.float16 and minidl.cat([h, h]).shape == (4, 3)
    assert_close(h.float(), x.numpy().astype(np.float16).astype(np.float32))
    assert (h * 2).dtype == np.float16 and F.softmax(h, 1).dtype == np.float16
    conv = nn.Conv2d(1, 2, 3).to(minidl.float16)
    with pytest.raises(TypeError, match=r"Conv2dFunction: does not support float16 .*\.float\(\)"):
        conv(minidl.randn(1, 1, 5, 5).half())
    with pytest.raises(TypeError, match="MaxPool2dFunction: does not support float16"):
        F.max_pool2d(minidl.randn(1, 1, 4, 4).half(), 2)
    with pytest.raises(TypeError, match="Dropout: does not support float16 .*it failed"):
        F.dropout(h, 0.5)                               # caught after the kernel failed
    m = nn.Linear(3, 2)
    m.to(minidl.float16)
    m.to(minidl.float32)
    assert m.weight.dtype == np.float32


def test_bfloat16_through_ml_dtypes():
    pytest.importorskip("ml_dtypes")
    b = minidl.tensor([1.5, -2.25]).bfloat16()
    assert b.dtype == minidl.bfloat16 and str(b.dtype) == "bfloat16"
    assert b.float().tolist() == [1.5, -2.25]
    assert b.reshape(2, 1).T.dtype == minidl.bfloat16
    with pytest.raises(TypeError, match="Exp: does not support bfloat16"):
        b.exp()
    with pytest.raises(TypeError, match="Mul: does not support bfloat16"):
        b * 2


# ------------------------------------------------------------ missing names

def test_missing_pytorch_names_say_so_and_point_to_the_nearest_feature():
    with pytest.raises(AttributeError, match="Conv1d.*minidl has Conv2d"):
        nn.Conv1d
    with pytest.raises(AttributeError, match=r"nearest minidl names: minidl\.linspace"):
        minidl.linespace
    with pytest.raises(AttributeError, match="F|functional"):
        F.conv1d
    with pytest.raises(AttributeError, match="nearest minidl names"):
        F.leaky_rel
    assert not hasattr(minidl, "compile") and hasattr(minidl, "no_grad")
    assert minidl.is_tensor(minidl.zeros(1)) and minidl.numel(minidl.zeros(2, 3)) == 6


def test_module_to_bfloat16_and_back():
    pytest.importorskip("ml_dtypes")
    m = nn.Linear(3, 2)
    w = m.weight.numpy().copy()
    m.to(minidl.bfloat16)
    assert m.weight.dtype == minidl.bfloat16
    m.to(minidl.float32)
    assert m.weight.dtype == np.float32
    np.testing.assert_allclose(m.weight.numpy(), w, rtol=1e-2)


def test_pytorch_names_for_what_minidl_has():
    torch = _torch()
    a, b = np.random.default_rng(7).standard_normal((2, 3, 4, 5)).astype(np.float64)[:2, 0]
    check_vs_torch(lambda x, y: torch.bmm(x, y.transpose(1, 2)).square(), [a[None], b[None]],
                   lambda x, y: minidl.bmm(x, y.transpose(1, 2)).square())
    check_vs_torch(lambda x, y: torch.mm(x, y.T), [a, b], lambda x, y: minidl.mm(x, y.T))
    check_vs_torch(lambda x: torch.stack(torch.unbind(x, 1)[::-1]).movedim(0, 1).ravel(), [a],
                   lambda x: minidl.stack(minidl.unbind(x, 1)[::-1]).movedim(0, 1).ravel())
    x, t = minidl.tensor(a.astype(np.float32)), torch.tensor(a.astype(np.float32))
    for ours, theirs in ((x.new_zeros(2, 3), t.new_zeros(2, 3)), (x.new_ones((2,)), t.new_ones((2,))),
                         (x.new_full((2,), 4.0), t.new_full((2,), 4.0)),
                         (minidl.full_like(x, 3), torch.full_like(t, 3)),
                         (x.type_as(minidl.zeros(1, dtype=minidl.float64)),
                          t.type_as(torch.zeros(1, dtype=torch.float64))),
                         (x.reshape_as(x.T), t.reshape_as(t.T))):
        assert ours.shape == tuple(theirs.shape)
        assert_close(ours, theirs.numpy())
    assert x.stride() == t.stride() and x.element_size() == t.element_size()
    assert x.nbytes == t.nbytes and x.ndimension() == t.ndimension() == 2
    assert minidl.is_floating_point(x) and not minidl.tensor([1]).is_floating_point()
    assert minidl.randn_like(x).shape == x.shape and minidl.empty_like(x).dtype == np.float32
    assert minidl.as_tensor(x) is x and minidl.uint8 == np.uint8
    y = x.clone()
    assert y.relu_() is y and float(y.min()) >= 0
