"""Datasets: the map-style protocol, arrays held whole, subsets and splits.

A dataset has ``__len__`` and ``__getitem__(i)`` returning one sample (a
tuple of arrays). A dataset that can also fetch a whole batch at once
defines ``__getitems__(indices)`` returning a tuple of batch arrays; the
DataLoader then indexes whole arrays instead of looping over samples.
Transforms work on batches (first axis N), so the same transform serves
both paths.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .rng import default_generator, make_generator


def raw_array(value):
    """The raw array of a Tensor, array or array-like (Python numbers follow
    minidl's rules: floats become float32, ints int64)."""
    from ..tensor import Tensor
    if isinstance(value, Tensor):
        return value._data
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    array = np.asarray(value)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    return array.astype(np.int64) if array.dtype.kind in "iu" else array


def default_collate(samples):
    """Stack a list of samples (tuples of arrays or numbers) into a batch.

    As PyTorch's: strings (file names, labels as text) stay a list of strings;
    anything that is not numbers, arrays, tensors, strings or a tuple, list or
    dict of those (None, objects) is a TypeError naming its type."""
    first = samples[0]
    if isinstance(first, (tuple, list)):
        return tuple(default_collate([s[k] for s in samples]) for k in range(len(first)))
    if isinstance(first, dict):
        return {k: default_collate([s[k] for s in samples]) for k in first}
    if isinstance(first, (str, bytes)):
        return list(samples)
    arrays = [raw_array(s) for s in samples]
    kind = arrays[0].dtype.kind
    if kind not in "biufc":
        found = (f"arrays of dtype {arrays[0].dtype}" if hasattr(first, "dtype")
                 else f"{type(first).__name__}")
        raise TypeError(f"default_collate: a batch must hold numbers, arrays, tensors, strings "
                        f"or tuples, lists or dicts of them; found {found}")
    return get_array_module(arrays[0]).stack(arrays)


def apply_transform(transform, batch):
    """``transform(batch)``, or, for a per-image transform (torchvision's kind,
    ``transform.per_image`` true: ``transforms.ToTensor`` and Composes holding
    it), the transform of each image, stacked."""
    if not getattr(transform, "per_image", False):
        return transform(batch)
    if len(batch) == 0:
        raise ValueError(f"{transform!r}: a per-image transform got an empty batch")
    return default_collate([transform(image) for image in batch])


class Dataset:
    """Base class: subclasses define ``__len__`` and ``__getitem__``, and
    ``__getitems__`` when they can fetch a batch without a Python loop."""

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __len__")

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")


class TensorDataset(Dataset):
    """Samples are rows of arrays (or Tensors) with the same first dimension.

    ``transform`` is applied to batches of the first array and
    ``target_transform`` to batches of the second.
    """

    def __init__(self, *arrays, transform=None, target_transform=None):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        self.arrays = tuple(raw_array(a) for a in arrays)
        lengths = [len(a) for a in self.arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"TensorDataset: arrays differ in length: {lengths}")
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self):
        return len(self.arrays[0])

    def __getitems__(self, indices):
        """The batch at ``indices`` (an int array), one fancy index per array."""
        batch = [a[indices] for a in self.arrays]
        if self.transform is not None:
            batch[0] = apply_transform(self.transform, batch[0])
        if self.target_transform is not None and len(batch) > 1:
            batch[1] = apply_transform(self.target_transform, batch[1])
        return tuple(batch)

    def __getitem__(self, index):
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n}")
        return tuple(b[0] for b in self.__getitems__(np.array([index])))

    def __repr__(self):
        shapes = ", ".join(f"{a.dtype}{tuple(a.shape)}" for a in self.arrays)
        return f"{type(self).__name__}({shapes})"


class ConcatDataset(Dataset):
    """The samples of ``datasets`` one after another, as PyTorch's."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: datasets should not be an empty iterable")
        self.cumulative_sizes = np.cumsum([len(d) for d in self.datasets]).tolist()

    def __len__(self):
        return self.cumulative_sizes[-1]

    def __getitem__(self, index):
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n}")
        index = int(index) % n
        part = int(np.searchsorted(self.cumulative_sizes, index, side="right"))
        start = self.cumulative_sizes[part - 1] if part else 0
        return self.datasets[part][index - start]


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[int(self.indices[index])]

    def __getitems__(self, indices):
        indices = self.indices[indices]
        fetch = getattr(self.dataset, "__getitems__", None)
        if fetch is not None:
            return fetch(indices)
        return default_collate([self.dataset[int(i)] for i in indices])


def random_split(dataset, lengths, generator=None, seed=None):
    """Split ``dataset`` into non-overlapping random :class:`Subset` s.

    ``lengths`` are counts summing to ``len(dataset)``, or fractions summing
    to 1 (the remainder after flooring goes one by one to the first parts).
    """
    n = len(dataset)
    lengths = list(lengths)
    if lengths and all(isinstance(x, float) for x in lengths) and math.isclose(sum(lengths), 1.0):
        counts = [int(math.floor(n * f)) for f in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        lengths = counts
    if any(int(x) != x or x < 0 for x in lengths) or sum(lengths) != n:
        raise ValueError(f"random_split: lengths {lengths} must be non-negative counts "
                         f"summing to {n}, or fractions summing to 1")
    lengths = [int(x) for x in lengths]   # whole-number floats such as 3.0 are counts
    rng = make_generator(generator, seed, "random_split") or default_generator()
    order = rng.permutation(n)
    ends = np.cumsum(lengths)
    return [Subset(dataset, order[end - k:end]) for k, end in zip(lengths, ends)]
