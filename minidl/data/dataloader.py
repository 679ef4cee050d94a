"""DataLoader: batches of a dataset, whole arrays at a time.

Per epoch the loader draws the order (a permutation when ``shuffle``) and
one augmentation seed from its generator, in the calling thread, at
``iter()``. Each batch is then one ``dataset.__getitems__(indices)`` call
(fancy indexing, no per-sample Python) and, when asked, a move to a device
and a wrap in :class:`minidl.Tensor`. With ``prefetch=True`` a background
thread builds the next batch while the caller works on this one; results
are the same as without it, since the random transforms draw from the
epoch's own stream (see :mod:`minidl.data.rng`).
"""
from __future__ import annotations

import queue
import threading

import numpy as np

from .. import backend
from .dataset import default_collate
from .rng import default_generator, make_generator, rank_generator, using


class DataLoader:
    """Iterate over ``dataset`` in batches.

    ``for x, y in DataLoader(ds, batch_size=64, shuffle=True, seed=0)``
    gives ``minidl.Tensor`` batches (``as_tensor=False``: raw arrays), on
    ``device`` when given ('cpu' or 'cuda'). ``collate_fn(samples)``, when
    given, receives the list of samples of a batch (the per-sample path).
    With neither ``generator`` nor ``seed`` the order comes from the
    framework generator (``minidl.manual_seed``). ``sampler``, an iterable of
    indices with a length (``DistributedSampler``), gives the order instead of
    ``shuffle``.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False,
                 generator=None, seed=None, collate_fn=None, device=None, sampler=None,
                 as_tensor=True, prefetch=False):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        if sampler is not None and self.shuffle:
            raise ValueError("DataLoader: sampler= and shuffle=True exclude each other (the "
                             "sampler gives the order; DistributedSampler shuffles itself)")
        self.sampler = sampler
        self.drop_last = bool(drop_last)
        self.generator = make_generator(generator, seed, "DataLoader")
        self.collate_fn = collate_fn
        self.device = None if device is None else backend.parse_device(device)
        self.as_tensor = bool(as_tensor)
        self.prefetch = bool(prefetch)

    def __len__(self):
        n, b = len(self.dataset if self.sampler is None else self.sampler), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        rng = self.generator or default_generator()
        if self.sampler is not None:
            order = np.fromiter(self.sampler, dtype=np.int64)
        else:
            order = rng.permutation(len(self.dataset)) if self.shuffle else \
                np.arange(len(self.dataset))
        n = len(order)
        # per rank in a data-parallel run (the same generator on one process)
        augment = np.random.default_rng((self.generator or rank_generator()).integers(2**63))
        stop = len(self) * self.batch_size
        batches = (self._batch(order[i:min(i + self.batch_size, n)], augment)
                   for i in range(0, stop, self.batch_size))
        return _prefetched(batches) if self.prefetch else batches

    def _batch(self, indices, augment):
        with using(augment):
            fetch = getattr(self.dataset, "__getitems__", None)
            if fetch is not None and self.collate_fn is None:
                batch = fetch(indices)
            else:
                samples = [self.dataset[int(i)] for i in indices]
                batch = (self.collate_fn or default_collate)(samples)
        return self._convert(batch)

    def _convert(self, value):
        if isinstance(value, tuple):
            return tuple(self._convert(v) for v in value)
        if isinstance(value, list):
            return [self._convert(v) for v in value]
        if isinstance(value, dict):
            return {k: self._convert(v) for k, v in value.items()}
        if not hasattr(value, "shape"):
            return value
        from ..tensor import Tensor
        if isinstance(value, Tensor):
            value = value._data
        if self.device is not None:
            value = backend.to_device(value, self.device)
        return Tensor(value) if self.as_tensor else value

    def __repr__(self):
        return (f"DataLoader({type(self.dataset).__name__} of {len(self.dataset)}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, prefetch={self.prefetch})")


_DONE = object()


def _prefetched(iterator, depth=1):
    """Run ``iterator`` in a daemon thread, ``depth`` items ahead.

    Exceptions are re-raised in the consumer; leaving the loop early
    (``break``, an exception, garbage collection) stops the thread.
    """
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for item in iterator:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer
            put((None, exc))

    thread = threading.Thread(target=work, name="minidl-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = items.get()
            if exc is not None:
                raise exc
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()
