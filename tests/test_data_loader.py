"""DataLoader, datasets and batch transforms (no files, no network)."""
import threading

import numpy as np
import pytest

from minidl.data import (Compose, DataLoader, Dataset, Normalize, RandomShift, Subset,
                         TensorDataset, ToFloat, random_split)
from minidl.tensor import Tensor


def make_dataset(n=10, transform=None):
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2)
    y = np.arange(n, dtype=np.int64)
    return TensorDataset(x, y, transform=transform)


def labels_of(loader):
    return [y.numpy().tolist() for _, y in loader]


class NoPerSample(TensorDataset):
    def __getitem__(self, index):
        raise AssertionError("the batch path must not fetch samples one by one")


class SampleOnly(Dataset):
    """A dataset with no __getitems__: the per-sample path."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.full((2,), i, dtype=np.float32), i


# ---------------------------------------------------------------- DataLoader

@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 64])
def test_every_sample_once_per_epoch(batch_size):
    loader = DataLoader(make_dataset(10), batch_size=batch_size, shuffle=True, seed=0)
    for _ in range(3):
        seen = sum(labels_of(loader), [])
        assert sorted(seen) == list(range(10))
    assert len(loader) == -(-10 // batch_size)


def test_batches_are_tensors_of_whole_arrays():
    x, y = next(iter(DataLoader(make_dataset(10), batch_size=4)))
    assert isinstance(x, Tensor) and isinstance(y, Tensor)
    assert x.shape == (4, 2, 2) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.numpy().tolist() == [0, 1, 2, 3]
    assert x.device == "cpu" and not x.requires_grad


def test_raw_arrays_and_cpu_device():
    loader = DataLoader(make_dataset(5), batch_size=2, as_tensor=False, device="cpu")
    x, y = next(iter(loader))
    assert type(x) is np.ndarray and type(y) is np.ndarray


def test_batch_path_never_loops_over_samples():
    ds = NoPerSample(np.zeros((100, 3), np.float32), np.arange(100))
    batches = list(DataLoader(ds, batch_size=32, shuffle=True, seed=1))
    assert [len(b[1]) for b in batches] == [32, 32, 32, 4]


def test_same_seed_same_order_and_epochs_differ():
    a = DataLoader(make_dataset(50), batch_size=7, shuffle=True, seed=123)
    b = DataLoader(make_dataset(50), batch_size=7, shuffle=True, seed=123)
    a1, a2 = labels_of(a), labels_of(a)
    assert a1 == labels_of(b) and a2 == labels_of(b)
    assert a1 != a2
    c = DataLoader(make_dataset(50), batch_size=7, shuffle=True,
                   generator=np.random.default_rng(123))
    assert labels_of(c) == a1


def test_framework_generator_is_the_default():
    from minidl.random import manual_seed
    loader = DataLoader(make_dataset(30), batch_size=30, shuffle=True)
    manual_seed(7)
    first = labels_of(loader)
    manual_seed(7)
    assert labels_of(loader) == first


def test_no_shuffle_keeps_order():
    assert labels_of(DataLoader(make_dataset(5), batch_size=2)) == [[0, 1], [2, 3], [4]]


def test_drop_last():
    loader = DataLoader(make_dataset(10), batch_size=3, shuffle=True, seed=0, drop_last=True)
    batches = labels_of(loader)
    assert len(loader) == 3 and [len(b) for b in batches] == [3, 3, 3]
    assert len(set(sum(batches, []))) == 9
    assert labels_of(DataLoader(make_dataset(2), batch_size=3, drop_last=True)) == []


def test_per_sample_path_and_collate_fn():
    loader = DataLoader(SampleOnly(5), batch_size=2)
    x, y = next(iter(loader))
    assert x.shape == (2, 2) and x.dtype == np.float32 and y.dtype == np.int64
    calls = []

    def collate(samples):
        calls.append(len(samples))
        return np.stack([s[0] for s in samples])

    out = list(DataLoader(SampleOnly(5), batch_size=2, collate_fn=collate, as_tensor=False))
    assert calls == [2, 2, 1] and out[2].tolist() == [[4.0, 4.0]]


def test_prefetch_gives_the_same_batches():
    ds = make_dataset(40, transform=RandomShift(1))
    plain = DataLoader(ds, batch_size=8, shuffle=True, seed=5)
    ahead = DataLoader(ds, batch_size=8, shuffle=True, seed=5, prefetch=True)
    for (xa, ya), (xb, yb) in zip(plain, ahead, strict=True):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())


def test_prefetch_errors_reach_the_caller_and_break_stops_the_thread():
    def bad(x):
        raise RuntimeError("transform failed")

    with pytest.raises(RuntimeError, match="transform failed"):
        list(DataLoader(make_dataset(10, transform=bad), batch_size=2, prefetch=True))
    before = threading.active_count()
    it = iter(DataLoader(make_dataset(100), batch_size=2, prefetch=True))
    next(it)
    it.close()
    assert not any(t.name == "minidl-prefetch" for t in threading.enumerate())
    assert threading.active_count() <= before


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(make_dataset(), batch_size=0)
    with pytest.raises(ValueError, match="not both"):
        DataLoader(make_dataset(), generator=np.random.default_rng(), seed=1)
    with pytest.raises(ValueError, match="differ in length"):
        TensorDataset(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------- Subset, split

def test_subset_and_random_split():
    ds = make_dataset(10)
    sub = Subset(ds, [7, 2, 5])
    assert len(sub) == 3 and sub[0][1] == 7
    assert labels_of(DataLoader(sub, batch_size=3)) == [[7, 2, 5]]
    parts = random_split(ds, [6, 4], seed=0)
    got = [sorted(labels_of(DataLoader(p, batch_size=10))[0]) for p in parts]
    assert [len(g) for g in got] == [6, 4] and sorted(got[0] + got[1]) == list(range(10))
    again = random_split(ds, [6, 4], seed=0)
    assert np.array_equal(again[0].indices, parts[0].indices)
    assert [len(p) for p in random_split(ds, [0.5, 0.3, 0.2], seed=0)] == [5, 3, 2]
    with pytest.raises(ValueError, match="summing"):
        random_split(ds, [3, 3])
    assert [len(p) for p in random_split(ds, [3.0, 7.0], seed=0)] == [3, 7]


def test_subset_of_a_per_sample_dataset():
    sub = Subset(SampleOnly(6), [5, 0])
    x, y = next(iter(DataLoader(sub, batch_size=2)))
    assert y.numpy().tolist() == [5, 0]


# ---------------------------------------------------------------- transforms

def naive_shift(x, dy, dx, fill):
    """Reference: one image at a time, pixel loops."""
    out = np.full_like(x, fill)
    H, W = x.shape[-2:]
    for n in range(x.shape[0]):
        for i in range(H):
            for j in range(W):
                si, sj = i - dy[n], j - dx[n]
                if 0 <= si < H and 0 <= sj < W:
                    out[n, ..., i, j] = x[n, ..., si, sj]
    return out


@pytest.mark.parametrize("shape", [(6, 5, 7), (4, 3, 5, 6)])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_random_shift_matches_a_per_sample_loop(shape, m):
    x = np.random.default_rng(0).integers(1, 255, size=shape).astype(np.uint8)
    before = x.copy()
    out = RandomShift(m, fill=0, seed=42)(x)
    dy, dx = np.random.default_rng(42).integers(-m, m + 1, size=(2, shape[0]))
    np.testing.assert_array_equal(out, naive_shift(x, dy, dx, 0))
    np.testing.assert_array_equal(x, before)
    assert out.dtype == x.dtype


def test_random_shift_actually_shifts_and_respects_the_stream():
    x = np.ones((200, 1, 8, 8), np.float32)
    out = RandomShift(2, seed=0)(x)
    zeros = (out == 0).reshape(200, -1).sum(1)
    assert zeros.max() > 0 and (zeros == 0).any()   # some moved, some (0, 0) did not
    np.testing.assert_array_equal(RandomShift(0)(x), x)


def test_to_float_and_normalize():
    x = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)   # (1, 2, 2)
    f = ToFloat()(x)
    assert f.shape == (1, 1, 2, 2) and f.dtype == np.float32
    assert f.min() == 0.0 and f.max() == 1.0
    n = Normalize(0.5, 0.25)(f)
    np.testing.assert_allclose(n, (f - 0.5) / 0.25, rtol=1e-6)
    assert n.dtype == np.float32
    c = np.ones((2, 3, 2, 2), np.float32)
    per = Normalize([1, 2, 3], [1, 2, 4])(c)
    np.testing.assert_allclose(per[:, :, 0, 0], [[0, -0.5, -0.5]] * 2)
    with pytest.raises(ValueError, match="non-zero"):
        Normalize(0, 0)
    # two channels' values on a one-channel batch: an error, never a wider batch
    with pytest.raises(ValueError, match=r"give 2 channels but the input \(4, 1, 5, 5\) has 1"):
        Normalize([0.1, 0.2], [1, 1])(np.zeros((4, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match="mean has 2 values but std has 3"):
        Normalize([0.1, 0.2], [1, 1, 1])
    assert Normalize([0.5], [0.5])(c).shape == c.shape   # one value: any channel count


def test_compose_in_order_through_the_loader():
    x = np.full((4, 28, 28), 255, np.uint8)
    ds = TensorDataset(x, np.arange(4), transform=Compose([ToFloat(), Normalize(1.0, 2.0)]))
    xb, _ = next(iter(DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 1, 28, 28) and np.all(xb.numpy() == 0.0)
    assert ds[0][0].shape == (1, 28, 28)


def test_collate_keeps_strings_and_names_what_it_cannot_batch():
    # Regression: file names became a Tensor of dtype <U8, and None an object Tensor.
    class Files(Dataset):
        def __init__(self, extra):
            self.extra = extra

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return np.full(2, i, np.float32), f"img{i}.png", self.extra

    x, names, extra = next(iter(DataLoader(Files(b"raw"), batch_size=2)))
    assert names == ["img0.png", "img1.png"] and extra == [b"raw", b"raw"]
    assert x.shape == (2, 2)
    with pytest.raises(TypeError, match="found NoneType"):
        next(iter(DataLoader(Files(None), batch_size=2)))
    with pytest.raises(TypeError, match="found arrays of dtype object"):
        next(iter(DataLoader(Files(np.array([object()])), batch_size=2)))
