"""``DistributedDataParallel``: one model replica per process, gradients averaged.

Run under ``mpiexec -n N`` (see :mod:`minidl.distributed`). Each rank
computes the gradients of its own share of the batch; the wrapper averages
them over the ranks when ``backward()`` ends, so every rank's optimizer takes
the same step and the replicas stay identical. N ranks with per-rank batch b
thus train as one process with batch N*b (to float32 rounding).
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import backend, distributed
from ..tensor import Tensor, is_grad_enabled, queue_callback
from .module import Module


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training (PyTorch's name).

    * At construction every rank's parameters and buffers are replaced by
      rank 0's (after checking that all ranks hold the same shapes).
    * A forward in grad mode arranges that, when the next ``backward()``
      ends, the gradients of the parameters that require grad are averaged in
      one in-place allreduce of a flat buffer (the parameters' dtype: float32
      for float32 models; NCCL on the GPU). A gradient that is None on a rank
      counts as zeros there, so every rank reduces the same buffer; it stays
      None only where no rank had one.
    * ``broadcast_buffers``: buffers (BatchNorm's running statistics) are
      copied from rank 0 at every training forward, as PyTorch does.
    * :meth:`no_sync` skips the averaging, for gradient accumulation: the
      first backward after the block averages everything accumulated.

    One backward per forward: a second ``backward()`` of the same graph would
    add local gradients to averaged ones. ``state_dict()`` keys start with
    ``module.`` as PyTorch's; save ``ddp.module.state_dict()`` for a
    checkpoint that loads into the bare model.
    """

    def __init__(self, module, broadcast_buffers=True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected an nn.Module, got "
                            f"{type(module).__name__}")
        # registered without renaming its layers: their error messages keep
        # the bare model's paths ('classifier.1', not 'module.classifier.1')
        self._modules["module"] = module
        self.broadcast_buffers = bool(broadcast_buffers)
        object.__setattr__(self, "_params",
                           [p for p in module.parameters() if p.requires_grad])
        object.__setattr__(self, "_flat", None)
        object.__setattr__(self, "_sync", True)
        self._check_same_model()
        for t in list(module.parameters()) + list(module.buffers()):
            distributed.broadcast(t, src=0)

    def _check_same_model(self):
        """Every rank must hold the same tensors: a mismatch would make the
        collectives read past buffers or hang."""
        mine = [(name, tuple(t.shape), str(t.dtype)) for name, t in
                list(self.module.named_parameters()) + list(self.module.named_buffers())]
        everyone = [None] * distributed.world_size()
        distributed.all_gather_object(everyone, mine)
        for r, theirs in enumerate(everyone):
            if theirs != everyone[0]:
                differ = next((a, b) for a, b in zip(everyone[0] + [None], theirs + [None])
                              if a != b)
                raise RuntimeError(
                    f"DistributedDataParallel: rank {r}'s model differs from rank 0's "
                    f"(rank 0: {differ[0]}, rank {r}: {differ[1]}); every rank must build "
                    "the same model")

    def forward(self, *args, **kwargs):
        if distributed.world_size() > 1:
            if self.broadcast_buffers and self.training:
                for b in self.module.buffers():
                    distributed.broadcast(b, src=0)
            if self._sync and is_grad_enabled() and self._params:
                queue_callback(self.average_gradients)
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Inside this block, backward keeps the gradients local (accumulation)."""
        old = self._sync
        object.__setattr__(self, "_sync", False)
        try:
            yield
        finally:
            object.__setattr__(self, "_sync", old)

    def _buffer(self, xp, dtype, size):
        flat = self._flat
        if flat is None or backend.get_array_module(flat) is not xp or flat.dtype != dtype:
            flat = xp.empty(size, dtype=dtype)
            object.__setattr__(self, "_flat", flat)
        return flat

    def average_gradients(self):
        """Average the gradients over the ranks now: what the end of backward
        calls after a forward through the wrapper; call it yourself after a
        backward that bypassed it (``minidl.train.Trainer`` does).

        One allreduce of [grad_0 / N, ..., grad_k / N, has_grad_0, ..., has_grad_k]."""
        params = self._params
        xp = backend.get_array_module(params[0]._data)
        dtype = np.result_type(*[p._data.dtype for p in params])
        sizes = [p._data.size for p in params]
        total = sum(sizes)
        flat = self._buffer(xp, dtype, total + len(params))
        scale = dtype.type(1.0 / distributed.world_size())
        views, start = [], 0
        for i, (p, n) in enumerate(zip(params, sizes)):
            view = flat[start:start + n].reshape(p._data.shape)
            views.append(view)
            start += n
            if p.grad is None:
                view[...] = 0
                flat[total + i] = 0
            else:
                # dividing first: the sum is the mean, with no second pass
                xp.multiply(p.grad._data, scale, out=view)
                flat[total + i] = 1
        distributed.all_reduce(flat)
        for i, (p, view) in enumerate(zip(params, views)):
            if p.grad is not None:
                p.grad._data[...] = view
            elif flat[total + i] > 0:   # another rank had a gradient for it
                p.grad = Tensor._wrap(view.astype(p._data.dtype, copy=True))

    def extra_repr(self):
        return f"world_size={distributed.world_size()}"
