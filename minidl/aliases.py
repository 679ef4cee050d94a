"""PyTorch's names for what minidl already has (``torch.mm``, ``x.type_as(y)``,
``torch.full_like``, ``x.new_zeros(...)``, ...): each one line over an existing
op or creation function, so gradients flow wherever the op's do."""
from __future__ import annotations

import numpy as np

from . import backend
from .creation import full, rand, randn, tensor
from .ops import bmm, matmul, mul, permute, reshape, split, squeeze
from .tensor import Tensor


def _like(op):
    def make(input, *, dtype=None, device=None, requires_grad=False, **kwargs):
        return op(*input.shape, dtype=input.dtype if dtype is None else dtype,
                  device=input.device if device is None else device,
                  requires_grad=requires_grad, **kwargs)
    make.__name__ = f"{op.__name__}_like"
    make.__doc__ = f"``{op.__name__}`` of ``input``'s shape, dtype and device."
    return make


rand_like, randn_like = _like(rand), _like(randn)


def full_like(input, fill_value, *, dtype=None, device=None, requires_grad=False):
    return full(tuple(input.shape), fill_value, dtype=input.dtype if dtype is None else dtype,
                device=input.device if device is None else device, requires_grad=requires_grad)


def empty_like(input, *, dtype=None, device=None, requires_grad=False):
    """Uninitialised in PyTorch; zeros here (NumPy's empty would leak old memory into
    programs that read it by mistake)."""
    return full_like(input, 0, dtype=dtype, device=device, requires_grad=requires_grad)


def as_tensor(data, dtype=None, device=None):
    """``data`` itself when it is a Tensor already of that dtype and device, else a
    Tensor sharing an array's memory where it can, as ``torch.as_tensor``."""
    if isinstance(data, Tensor):
        return data.to(device=device, dtype=dtype) if (dtype or device) else data
    return Tensor(data, dtype=dtype, device=device)


def mm(input, mat2):
    """Matrix product of two 2-D tensors."""
    if input.ndim != 2 or mat2.ndim != 2:
        raise ValueError(f"mm: expects 2-D tensors, got {tuple(input.shape)} and "
                         f"{tuple(mat2.shape)}")
    return matmul(input, mat2)


def square(input):
    return mul(input, input)


def unbind(input, dim=0):
    """The slices along ``dim``, that dim removed."""
    return tuple(squeeze(p, dim) for p in split(input, 1, dim))


def movedim(input, source, destination):
    order = list(range(input.ndim))
    order.remove(source % input.ndim)
    order.insert(destination % input.ndim, source % input.ndim)
    return permute(input, order)


def ravel(input):
    return reshape(input, (-1,))


def is_floating_point(input):
    return input.dtype.kind == "f" or input.dtype in _half_dtypes()


def _half_dtypes():
    from .precision import HALF_DTYPES
    return HALF_DTYPES


def _new(fill):
    def method(self, *size, dtype=None, device=None, requires_grad=False, **kwargs):
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        value = fill if fill is not None else kwargs.pop("fill_value")
        return full(tuple(shape), value, dtype=self.dtype if dtype is None else dtype,
                    device=self.device if device is None else device,
                    requires_grad=requires_grad)
    return method


def _new_tensor(self, data, dtype=None, device=None, requires_grad=False):
    return tensor(data, dtype=self.dtype if dtype is None else dtype,
                  device=self.device if device is None else device, requires_grad=requires_grad)


def _new_full(self, size, fill_value, *, dtype=None, device=None, requires_grad=False):
    return _new(None)(self, size, dtype=dtype, device=device, requires_grad=requires_grad,
                      fill_value=fill_value)


def _type(self, dtype=None):
    """``x.type()`` names the dtype; ``x.type(dtype)`` casts to it."""
    if dtype is None:
        return str(self.dtype)
    return self.to(dtype=dtype)


def install():
    from .ops.inplace import apply_inplace
    from .ops import relu
    methods = {
        "mm": mm, "bmm": bmm, "square": square, "unbind": unbind, "movedim": movedim,
        "moveaxis": movedim, "ravel": ravel, "is_floating_point": is_floating_point,
        "type": _type, "type_as": lambda self, other: self.to(dtype=other.dtype),
        "reshape_as": lambda self, other: reshape(self, tuple(other.shape)),
        "ndimension": lambda self: self.ndim,
        "is_contiguous": lambda self: bool(self._data.flags.c_contiguous),
        "element_size": lambda self: self._data.itemsize,
        "nbytes": property(lambda self: self._data.nbytes),
        "stride": lambda self, dim=None: (tuple(s // self._data.itemsize
                                                for s in self._data.strides)
                                          if dim is None else
                                          self._data.strides[dim] // self._data.itemsize),
        "new_zeros": _new(0), "new_ones": _new(1), "new_empty": _new(0),
        "new_full": _new_full, "new_tensor": _new_tensor,
        "relu_": lambda self: apply_inplace("relu_", relu, self),
        "isnan": lambda self: Tensor._wrap(backend.get_array_module(self._data).isnan(
            self._data)),
    }
    for name, fn in methods.items():
        if not hasattr(Tensor, name):   # never shadow what the Tensor has itself
            setattr(Tensor, name, fn)


uint8, int8, int16 = np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int16)

__all__ = ["rand_like", "randn_like", "full_like", "empty_like", "as_tensor", "mm",
           "square", "unbind", "movedim", "ravel", "is_floating_point", "uint8", "int8",
           "int16"]
