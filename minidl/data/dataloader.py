"""DataLoader: batches of a dataset, whole arrays at a time.

Per epoch the loader draws the order (a permutation when ``shuffle``) and
one augmentation seed from its generator, in the calling thread, at
``iter()``. Each batch is then one ``dataset.__getitems__(indices)`` call
(fancy indexing, no per-sample Python) and, when asked, a move to a device
and a wrap in :class:`minidl.Tensor`. With ``prefetch=True`` a background
thread builds the next batch while the caller works on this one; results
are the same as without it, since the random transforms draw from the
epoch's own stream (see :mod:`minidl.data.rng`).

With ``num_workers > 0`` batches are built in that many worker processes,
``prefetch_factor`` batches ahead per worker, and come back in order (as
PyTorch's). Each batch's random transforms then draw from a stream of its
own, seeded by the epoch's seed and the batch's index, so results do not
depend on the number of workers or their timing (they differ from the
``num_workers=0`` stream, as they do in PyTorch). Each worker also seeds
NumPy's global generator and minidl's with ``base_seed + worker_id``. With
``persistent_workers=True`` the processes (and their seeds) last from the
first epoch until the loader is garbage collected or a worker fails.
"""
from __future__ import annotations

import multiprocessing
import queue
import threading
import traceback

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
                 as_tensor=True, prefetch=False, num_workers=0, pin_memory=False,
                 worker_init_fn=None, prefetch_factor=None, persistent_workers=False,
                 timeout=0, multiprocessing_context=None):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size}")
        if isinstance(num_workers, bool) or int(num_workers) != num_workers or num_workers < 0:
            raise ValueError(f"DataLoader: num_workers must be a non-negative int, "
                             f"got {num_workers!r}")
        if prefetch_factor is not None and (num_workers == 0 or int(prefetch_factor) < 1):
            raise ValueError(f"DataLoader: prefetch_factor={prefetch_factor!r} needs "
                             "num_workers > 0 and must be a positive int")
        if timeout < 0:
            raise ValueError(f"DataLoader: timeout must be >= 0, got {timeout}")
        if persistent_workers and num_workers == 0:
            raise ValueError("DataLoader: persistent_workers=True needs num_workers > 0")
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.worker_init_fn, self.timeout = worker_init_fn, float(timeout)
        self.prefetch_factor = 2 if prefetch_factor is None else int(prefetch_factor)
        self.persistent_workers = bool(persistent_workers)
        self.multiprocessing_context = multiprocessing_context
        self._pool = None   # the workers kept between epochs (persistent_workers)
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

    def __getstate__(self):   # a spawned worker gets the loader, never its workers
        state = dict(self.__dict__)
        state["_pool"] = None
        return state

    def __del__(self):
        pool = self.__dict__.get("_pool")
        if pool is not None:
            pool.close()

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
        if self.num_workers > 0:   # each batch's stream derives from this epoch's seed
            indices = [order[i:min(i + self.batch_size, n)]
                       for i in range(0, stop, self.batch_size)]
            return _WorkerIterator(self, indices, int(augment.integers(2**63)))
        batches = (self._batch(order[i:min(i + self.batch_size, n)], augment)
                   for i in range(0, stop, self.batch_size))
        return _prefetched(batches) if self.prefetch else batches

    def _batch(self, indices, augment):
        return self._convert(self._fetch(indices, augment))

    def _fetch(self, indices, augment):
        """The raw batch at ``indices``, random transforms drawing from ``augment``."""
        with using(augment):
            fetch = getattr(self.dataset, "__getitems__", None)
            if fetch is not None and self.collate_fn is None:
                return fetch(indices)
            samples = [self.dataset[int(i)] for i in indices]
            return (self.collate_fn or default_collate)(samples)

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
        if self.pin_memory:
            value = _pinned(value)
        if self.device is not None:
            value = backend.to_device(value, self.device)
        return Tensor(value) if self.as_tensor else value

    def __repr__(self):
        return (f"DataLoader({type(self.dataset).__name__} of {len(self.dataset)}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, prefetch={self.prefetch}, "
                f"num_workers={self.num_workers})")


def _pinned(array):
    """``array`` in page-locked host memory when CUDA is usable (faster copies to
    the GPU), as PyTorch's ``pin_memory``; without CUDA, ``array`` itself."""
    if not isinstance(array, np.ndarray) or not backend.cuda_is_available():
        return array
    import cupyx
    out = cupyx.empty_pinned(array.shape, array.dtype)
    out[...] = array
    return out


class WorkerInfo:
    """What :func:`get_worker_info` returns inside a worker: ``id``,
    ``num_workers``, ``seed`` and ``dataset`` (this process's copy)."""

    def __init__(self, id, num_workers, seed, dataset):
        self.id, self.num_workers, self.seed, self.dataset = id, num_workers, seed, dataset

    def __repr__(self):
        return f"WorkerInfo(id={self.id}, num_workers={self.num_workers}, seed={self.seed})"


_worker_info = None


def get_worker_info():
    """The :class:`WorkerInfo` of this DataLoader worker process; None in the main process."""
    return _worker_info


def _worker_loop(loader, worker_id, base_seed, tasks, results):
    """A worker process: build the batches whose indices arrive on ``tasks``."""
    global _worker_info
    from .. import random as framework_random
    seed = (base_seed + worker_id) % 2**63
    np.random.seed(seed % 2**32)
    # the generators only: seeding Numba's in-kernel state would compile its seeding
    # kernel in each fresh worker (a second and more before the first batch)
    with backend.use_numba(False):
        framework_random.manual_seed(seed)
    _worker_info = WorkerInfo(worker_id, loader.num_workers, seed, loader.dataset)
    try:
        if loader.worker_init_fn is not None:
            loader.worker_init_fn(worker_id)
    except BaseException:
        results.put((None, None, None, f"worker_init_fn in worker {worker_id}:\n"
                     + traceback.format_exc()))
        return
    while True:
        task = tasks.get()
        if task is None:
            return
        epoch, index, indices, epoch_seed = task
        try:
            batch = loader._fetch(indices, np.random.default_rng([epoch_seed, index]))
            results.put((epoch, index, batch, None))
        except BaseException:
            results.put((epoch, index, None, f"batch {index} in worker {worker_id}:\n"
                         + traceback.format_exc()))


class WorkerError(RuntimeError):
    """A DataLoader worker failed; the message holds the worker's traceback."""


class _WorkerPool:
    """``loader.num_workers`` processes, a task queue each and one result queue.
    Started per epoch, or once for the loader with ``persistent_workers``."""

    workers = None   # until started: close() and __del__ have nothing to stop

    def __init__(self, loader, base_seed):
        ctx = loader.multiprocessing_context
        ctx = multiprocessing.get_context(ctx) if isinstance(ctx, (str, type(None))) else ctx
        self.tasks = [ctx.Queue() for _ in range(loader.num_workers)]
        self.results = ctx.Queue()
        self.workers = []
        self.epochs = 0
        for w in range(loader.num_workers):
            p = ctx.Process(target=_worker_loop, daemon=True, name=f"minidl-worker-{w}",
                            args=(loader, w, base_seed, self.tasks[w], self.results))
            p.start()
            self.workers.append(p)

    def close(self):
        """Stop the workers: a ``None`` each, a short join, then terminate."""
        if self.workers is None:
            return
        for q in self.tasks:
            q.put(None)
        for p in self.workers:
            p.join(timeout=1.0)
            if p.is_alive():
                p.terminate()
                p.join()
        for q in self.tasks + [self.results]:
            q.close()
            q.cancel_join_thread()
        self.workers = None

    def __del__(self):
        self.close()


class _WorkerIterator:
    """One epoch's batches from a :class:`_WorkerPool`, yielded in order.

    At most ``prefetch_factor * num_workers`` batches are asked for ahead of
    the one being consumed. The results of an epoch left early (with
    ``persistent_workers``) are recognised by their epoch number and dropped.
    Exhaustion, ``close()``, an error or garbage collection stop a pool of
    this epoch's own; a persistent pool stops with its loader, or on an error."""

    pool = None

    def __init__(self, loader, indices, epoch_seed):
        self.loader, self.indices, self.epoch_seed = loader, indices, epoch_seed
        pool = loader._pool if loader.persistent_workers else None
        if pool is None or pool.workers is None:
            pool = _WorkerPool(loader, int(np.random.default_rng(epoch_seed).integers(2**63)))
            if loader.persistent_workers:
                loader._pool = pool
        self.pool, self.epoch = pool, pool.epochs
        pool.epochs += 1
        self.sent = self.next = 0
        self.ready = {}
        for _ in range(loader.prefetch_factor * loader.num_workers):
            self._send()

    @property
    def workers(self):
        return None if self.pool is None else self.pool.workers

    def _send(self):
        if self.sent < len(self.indices):
            self.pool.tasks[self.sent % len(self.pool.tasks)].put(
                (self.epoch, self.sent, self.indices[self.sent], self.epoch_seed))
            self.sent += 1

    def __iter__(self):
        return self

    def __len__(self):
        return len(self.indices)

    def __next__(self):
        if self.workers is None or self.next >= len(self.indices):
            self._finish()
            raise StopIteration
        while self.next not in self.ready:
            index, batch = self._receive()
            if index is not None:
                self.ready[index] = batch
        batch = self.ready.pop(self.next)
        self.next += 1
        self._send()
        return self.loader._convert(batch)

    def _receive(self):
        """The next result of this epoch as (index, batch); (None, None) for another
        epoch's."""
        timeout = self.loader.timeout or None
        while True:
            try:
                epoch, index, batch, error = self.pool.results.get(timeout=timeout or 1.0)
                break
            except queue.Empty:
                dead = [p for p in self.pool.workers if not p.is_alive()]
                if dead or timeout:
                    self.close()
                    why = (f"worker {dead[0].name} (pid {dead[0].pid}) exited unexpectedly "
                           f"with code {dead[0].exitcode}" if dead else
                           f"no batch came within timeout={self.loader.timeout} s")
                    raise WorkerError(f"DataLoader: {why}") from None
        if error is not None and epoch in (self.epoch, None):
            self.close()
            raise WorkerError(f"DataLoader: a worker raised in {error}")
        return (index, batch) if epoch == self.epoch else (None, None)

    def _finish(self):
        if not self.loader.persistent_workers:
            self.close()

    def close(self):
        """Stop the workers (a persistent pool too: called after an error)."""
        if self.pool is not None:
            self.pool.close()
            if self.loader._pool is self.pool:
                self.loader._pool = None

    def __del__(self):
        if self.pool is not None and not self.loader.persistent_workers:
            self.pool.close()


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
