"""Fusion in the framework: the CNN block runs as one op in any model.

A model calls ops one at a time (``nn.Conv2d`` -> ``nn.ReLU`` ->
``nn.MaxPool2d`` in a ``Sequential``, or ``F.max_pool2d(F.relu(self.conv1(x)),
2)``), so no single call sees the chain. Here the chain is found as it is
called, eagerly, with no tracing and nothing for the user to do:

* a ``conv2d`` call returns a *deferred* tensor: its shape and dtype are
  known, its values are not computed yet;
* ``relu`` of a 4-D tensor, and ``max_pool2d`` (2x2) of a deferred conv,
  are deferred too;
* the call that completes conv -> ReLU -> pool or conv -> pool -> ReLU runs
  the fused :class:`~minidl.ops.conv_block.ConvPoolReLU` (or, where that
  kernel does not apply, the conv and then the pool with the ReLU fused in);
  any other ReLU -> max-pool (after a batch norm, say) runs as the pool with
  the ReLU in its pass;
* in inference (nothing to differentiate), an eval-mode ``batch_norm`` of a
  deferred conv is folded into the conv's weight and bias, so conv -> BN ->
  ReLU -> pool fuses as well;
* anything else that touches a deferred tensor (another op, ``.numpy()``,
  printing, backward) computes it on the spot, by the ops as called; a
  deferred ReLU of a deferred conv runs as
  :class:`~minidl.ops.conv_block.Conv2dReLU` (the ReLU applied to the conv's
  fresh output in place).

The separate ops are the oracle: values and gradients are the same, and a
tensor read twice (a skip connection, a stored feature map) is simply
computed where it is read, so fusion never changes what a program computes.
It needs no knowledge in the model: plain layers in any style get it.
A deferred tensor is computed with the grad mode of its call, from the
inputs of its call; like PyTorch's saved tensors, those inputs must not be
changed in place before it is read (minidl has no version counters).

``MINIDL_FUSION=0`` in the environment, or ``with minidl.fusion.disabled():``,
runs every op as called.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import weakref

import numpy as np

from . import backend
from .ops.arith import ReLU
from .ops.conv import Conv2dFunction, MaxPool2dFunction
from .ops.conv_block import Conv2dReLU, ConvPoolReLU, fusable
from .ops.norm import BatchNormFunction
from .tensor import Tensor, _grad_mode, _Size, fusion_handlers

__all__ = ["disabled", "is_enabled"]


class _State(threading.local):
    enabled = os.environ.get("MINIDL_FUSION", "1") != "0"


_state = _State()


def is_enabled() -> bool:
    """Whether ops are fused in this thread (see the module docstring)."""
    return _state.enabled


@contextlib.contextmanager
def disabled():
    """Run every op as called inside the block (the unfused oracle in tests)."""
    before = _state.enabled
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = before


_DATA = Tensor.__dict__["_data"]          # the slots of Tensor, written directly
_CREATOR = Tensor.__dict__["creator"]


class _Deferred(Tensor):
    """A tensor whose values an op will compute when first read.

    ``_fn`` is the Function called (None once computed), ``_args`` its input
    tensors, ``_grad`` the grad mode of the call, ``_kind`` 'conv', 'relu' (of
    a deferred conv) or 'pool' (of a deferred conv), ``_meta`` (shape, dtype,
    device). Reading ``_data`` or ``creator`` computes it; shape, dtype and
    device are known without.
    """

    __slots__ = ("_fn", "_args", "_grad", "_kind", "_meta")

    def _read_data(self):
        if self._fn is not None:
            self._compute()
        return _DATA.__get__(self)

    def _write_data(self, array):
        if self._fn is not None:   # replaced before ever being read: nothing to compute
            self._fn = self._args = None
        _DATA.__set__(self, array)

    def _read_creator(self):
        if self._fn is not None:
            self._compute()
        return _CREATOR.__get__(self)

    _data = property(_read_data, _write_data)
    creator = property(_read_creator, _CREATOR.__set__)
    shape = property(lambda self: self._meta[0])
    dtype = property(lambda self: self._meta[1])
    ndim = property(lambda self: len(self._meta[0]))
    device = property(lambda self: self._meta[2])
    size = property(lambda self: _Size(self._meta[0]))

    def retain_grad(self):
        if self._fn is not None:   # its gradient is wanted: computed as called, never fused away
            self._compute()
        super().retain_grad()

    def numel(self):
        return math.prod(self._meta[0])

    def dim(self):
        return len(self._meta[0])

    def _compute(self):
        fn, args, kind = self._fn, self._args, self._kind
        self._fn = self._args = None
        before = _grad_mode.enabled
        _grad_mode.enabled = self._grad
        try:
            if kind == "relu" and _pending(args[0], "conv") and args[0]._grad == self._grad:
                # relu of a conv not yet run: both in one op
                conv = args[0]
                real = _conv_relu(conv._fn)._run(*conv._args)
            else:
                real = fn._run(*args)
        finally:
            _grad_mode.enabled = before
        _DATA.__set__(self, real._data)
        creator = _CREATOR.__get__(real)
        _CREATOR.__set__(self, creator)
        self._requires_grad, self.generation = real._requires_grad, real.generation
        self._out_index = real._out_index
        if creator is not None:
            creator.outputs[real._out_index] = weakref.ref(self)


def _defer(kind, fn, args, shape, like):
    t = object.__new__(_Deferred)
    t._fn, t._args, t._kind = fn, args, kind
    t._grad = _grad_mode.enabled
    t._meta = (shape, like.dtype, like.device)
    t.grad = None
    t._requires_grad = t._grad and any(a.requires_grad for a in args)
    _CREATOR.__set__(t, None)
    t.generation = 0
    t._out_index = 0
    t._retains_grad = False
    return t


def _pending(x, kind):
    return type(x) is _Deferred and x._fn is not None and x._kind == kind


def _joinable(x, kind):
    """A pending ``kind`` whose call had this call's grad mode: the two may run as one."""
    return _pending(x, kind) and x._grad == _grad_mode.enabled


def _conv_relu(conv):
    fused = Conv2dReLU.__new__(Conv2dReLU)
    fused.__dict__.update(conv.__dict__)   # stride, padding, dilation, groups
    return fused


def _plain_2x2(pool):
    return (pool.kernel_size == (2, 2) and pool.stride == (2, 2) and pool.padding == (0, 0)
            and pool.dilation == (1, 1) and not pool.return_indices)


def _block(src, pool):
    """relu(pool(src)): for a deferred conv, fused when the kernels allow;
    else the pool with the ReLU in the same pass (computing src if deferred)."""
    fn = src._fn if _joinable(src, "conv") else None
    if (fn is not None and _plain_2x2(pool)
            and fn.stride == (1, 1) and fn.dilation == (1, 1) and fn.groups == 1):
        x, w, b = (src._args + (None,))[:3]
        OH, OW = src.shape[2:]
        if pool.output_size == (OH // 2, OW // 2) and fusable(x, w, b, fn.padding):
            return ConvPoolReLU(fn.padding)._run(*src._args)
    fused_pool = MaxPool2dFunction(pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                   pool.output_size, relu=True)
    return fused_pool._run(src)


def _float32_or_64(*tensors):
    """The dtypes the fused kernels take (half precision, integers: the op as written)."""
    return all(t.dtype in (np.float32, np.float64) for t in tensors)


def _on_conv(fn, inputs):
    if not _state.enabled or fn.groups != 1 or len(inputs) < 2:
        return None
    x, w = inputs[0], inputs[1]
    if not (isinstance(x, Tensor) and isinstance(w, Tensor)) or x.ndim != 4 \
            or not _float32_or_64(x, w):
        return None   # as written: its own checks name what is wrong, at the call
    N, _, H, W = x.shape
    Co, _, KH, KW = w.shape
    *_, OH, OW = fn._geometry((N, 0, H, W), (Co, 0, KH, KW))
    return _defer("conv", fn, tuple(inputs), (N, Co, OH, OW), x)


def _on_relu(fn, inputs):
    x = inputs[0]
    if _joinable(x, "pool"):
        return _block(x._args[0], x._fn)
    if not _state.enabled or _pending(x, "relu") or not isinstance(x, Tensor) or x.ndim != 4 \
            or not _float32_or_64(x):
        return None
    # relu(conv) may become one op with the conv and a pool after it; relu(any
    # 4-D x) pooled is the pool with the ReLU in its pass (no full-size ReLU)
    return _defer("relu", fn, (x,), x.shape, x)


def _on_pool(fn, inputs):
    x = inputs[0]
    if fn.return_indices or len(fn.kernel_size) != 2:
        return None
    if _joinable(x, "conv"):
        if fn.relu:   # max_pool2d_relu(conv2d(...)) called directly
            return _block(x, fn)
        return _defer("pool", fn, (x,), x.shape[:2] + tuple(fn.output_size), x)
    if _joinable(x, "relu"):   # relu(relu(x)) pooled is relu(x) pooled
        return _block(x._args[0], fn)
    return None


def _recording(tensors):
    return _grad_mode.enabled and any(t.requires_grad for t in tensors)


def _on_batch_norm(fn, inputs):
    """Eval-mode batch norm of a deferred conv with nothing to differentiate
    (inference): folded into the conv's weight and bias, as onnxruntime and
    oneDNN fuse Conv+BatchNormalization, so a ReLU and pool after it fuse too.
    The same function; float rounding differs only in the last bits."""
    x = inputs[0]
    if (fn.training or not _joinable(x, "conv") or x._fn.groups != 1 or _recording(inputs)
            or _recording(x._args)):
        return None
    conv, w = x._fn, x._args[1]._data
    dtype = w.dtype
    xp = backend.get_array_module(w)
    scale = (1 / xp.sqrt(fn.rv + fn.eps)).astype(dtype, copy=False)
    if len(inputs) > 1:
        scale = scale * inputs[1]._data
    shift = -fn.rm.astype(dtype, copy=False)
    if len(x._args) > 2:
        shift = shift + x._args[2]._data
    shift = shift * scale
    if len(inputs) > 2:
        shift = shift + inputs[2]._data
    folded = Conv2dFunction.__new__(Conv2dFunction)
    folded.__dict__.update(conv.__dict__)   # stride, padding, dilation, groups
    args = (x._args[0], Tensor._wrap(w * scale.reshape(-1, 1, 1, 1)), Tensor._wrap(shift))
    return _defer("conv", folded, args, x.shape, x)


fusion_handlers.update({Conv2dFunction: _on_conv, ReLU: _on_relu, MaxPool2dFunction: _on_pool,
                        BatchNormFunction: _on_batch_norm})
