"""``DistributedSampler``: each rank's share of a dataset, as PyTorch's."""
from __future__ import annotations

import numpy as np


class DistributedSampler:
    """The indices of rank ``rank`` of ``num_replicas``: pass it as a DataLoader's
    ``sampler=``.

    Every rank draws the same permutation (from ``seed`` and the epoch set by
    :meth:`set_epoch`, so call it at the start of each epoch) and takes every
    ``num_replicas``-th index from its rank on. The order is first cut to a
    multiple of ``num_replicas``: ``drop_last=False`` pads it with its own
    first indices, ``drop_last=True`` drops its tail. So every rank gets
    ``len(sampler)`` indices and runs the same number of batches: no rank
    waits in a collective for a batch another never runs.

    Batch k of the N ranks together (per-rank batch b) is then exactly batch
    k of one process with batch N*b over the same permutation, which is what
    ``DistributedSampler(ds, num_replicas=1, seed=...)`` gives one process.
    ``num_replicas`` and ``rank`` default to :mod:`minidl.distributed`'s world.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0,
                 drop_last=False):
        if num_replicas is None or rank is None:
            from .. import distributed
            num_replicas = distributed.world_size() if num_replicas is None else num_replicas
            rank = distributed.rank() if rank is None else rank
        if int(num_replicas) != num_replicas or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be a positive int, got "
                             f"{num_replicas}")
        if int(rank) != rank or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank must be in [0, {int(num_replicas) - 1}] "
                             f"for num_replicas={num_replicas}, got {rank}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"DistributedSampler: seed must be a non-negative int, got {seed}")
        self.dataset = dataset
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last:
            self.num_samples = n // self.num_replicas
        else:
            self.num_samples = -(-n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        if self.total_size == 0 and n > 0:
            raise ValueError(f"DistributedSampler: {n} samples cannot give each of "
                             f"{self.num_replicas} ranks one with drop_last=True")

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch's permutation (the same on every rank)."""
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, int64."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.total_size > n:   # pad with the order's own start, repeated if need be
            order = np.resize(order, self.total_size)
        return order[self.rank:self.total_size:self.num_replicas]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples

    def __repr__(self):
        return (f"DistributedSampler({len(self.dataset)} samples, rank {self.rank} of "
                f"{self.num_replicas}, shuffle={self.shuffle}, seed={self.seed}, "
                f"drop_last={self.drop_last}, epoch={self.epoch})")
