"""Layers: a few lines each, parameters made in ``__init__``, one expression in ``forward``.

Default initialisation is PyTorch's (Linear/Conv2d weights
``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))), drawn from minidl's generator.
Layers check their input's rank and feature size and name themselves and
the expected shape when it is wrong.
"""
from __future__ import annotations

import math

import numpy as np

from ..ops import conv as _conv
from ..ops import shape as _shape
from ..ops.activation import dropout, gelu, leaky_relu, negative_slope_of, silu, softmax
from ..ops.arith import relu, sigmoid, tanh
from ..ops.bce import dropout2d
from ..ops.inplace import apply_inplace
from ..ops.linear import linear
from . import init
from .module import Module, Parameter


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def check_int(layer, name, value, minimum):
    """``value`` as an int >= ``minimum``, else an error naming ``layer`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{layer}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_pair(layer, name, value, minimum):
    """An int or a pair of ints, each >= ``minimum``, as a tuple of two."""
    pair = _pair(value)
    if len(pair) != 2:
        raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")
    return tuple(check_int(layer, name, v, minimum) for v in pair)


def factory_dtype(layer, dtype):
    """PyTorch's ``dtype=`` of a layer: None gives float32; parameters must be floating."""
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    if dtype.kind != "f":
        raise TypeError(f"{layer}: dtype must be a floating dtype, got {dtype}")
    return dtype


def to_factory_device(module, device):
    """Move a freshly built layer's parameters to ``device`` (PyTorch's ``device=``)."""
    if device is not None:
        module.to(device)


class Identity(Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Linear(Module):
    """y = x W^T + b; x (*, in_features) -> (*, out_features)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        dtype = factory_dtype("Linear", dtype)
        self.in_features = check_int("Linear", "in_features", in_features, 0)
        self.out_features = check_int("Linear", "out_features", out_features, 0)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dtype))
        if bias:
            self.bias = Parameter(np.empty(self.out_features, dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        to_factory_device(self, device)

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        if getattr(x, "ndim", 0) < 1 or x.shape[-1] != self.in_features:
            raise self._bad_input(f"(*, {self.in_features})", x)
        return linear(x, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Conv2d(Module):
    """2-D convolution, (N, C_in, H, W) -> (N, C_out, OH, OW), PyTorch's arguments."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        if padding_mode != "zeros":
            raise NotImplementedError(f"Conv2d: padding_mode {padding_mode!r}; only 'zeros'")
        dtype = factory_dtype("Conv2d", dtype)
        in_channels = check_int("Conv2d", "in_channels", in_channels, 1)
        out_channels = check_int("Conv2d", "out_channels", out_channels, 1)
        groups = check_int("Conv2d", "groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = check_pair("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = check_pair("Conv2d", "stride", stride, 1)
        if isinstance(padding, str):
            _conv.check_string_padding("Conv2d", padding, stride)
        self.padding = padding if isinstance(padding, str) else \
            check_pair("Conv2d", "padding", padding, 0)
        self.dilation, self.groups = check_pair("Conv2d", "dilation", dilation, 1), groups
        self.weight = Parameter(np.empty((out_channels, in_channels // groups) + self.kernel_size,
                                         dtype))
        if bias:
            self.bias = Parameter(np.empty(out_channels, dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        to_factory_device(self, device)

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        if getattr(x, "ndim", 0) not in (3, 4) or x.shape[-3] != self.in_channels:
            raise self._bad_input(f"(N, {self.in_channels}, H, W)", x)
        return _conv.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                            self.groups)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class MaxPool2d(Module):
    """Max pooling (pads with -inf; ``stride`` defaults to ``kernel_size``)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, x):
        if getattr(x, "ndim", 0) not in (3, 4):
            raise self._bad_input("(N, C, H, W) or (C, H, W)", x)
        return _conv.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                self.ceil_mode, self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride if stride is not None else kernel_size
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, x):
        if getattr(x, "ndim", 0) not in (3, 4):
            raise self._bad_input("(N, C, H, W) or (C, H, W)", x)
        return _conv.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                self.count_include_pad, self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        if getattr(x, "ndim", 0) not in (3, 4):
            raise self._bad_input("(N, C, H, W) or (C, H, W)", x)
        return _conv.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class ReLU(Module):
    """max(x, 0); ``inplace=True`` writes the result into the input, as PyTorch's
    (see :mod:`minidl.ops.inplace`)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        return apply_inplace("ReLU", relu, x) if self.inplace else relu(x)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """x where positive, else ``negative_slope * x``; ``inplace`` as :class:`ReLU`."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = negative_slope_of("LeakyReLU", negative_slope)

    def forward(self, x):
        return leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class SiLU(Module):
    """x * sigmoid(x); ``inplace`` as :class:`ReLU`."""

    def __init__(self, inplace=False):
        super().__init__()

    def forward(self, x):
        return silu(x)


class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate='{self.approximate}'"


class Sigmoid(Module):
    def forward(self, x):
        return sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return tanh(x)


class Softmax(Module):
    """Softmax over ``dim`` (default the last dim; PyTorch's implicit choice is deprecated)."""

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class Dropout(Module):
    """Inverted dropout: in training zero with probability p and scale by 1/(1-p);
    the identity in eval mode."""

    _dropout = staticmethod(dropout)

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x):
        return self._dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Dropout2d(Dropout):
    """Zero whole channels of (N, C, H, W) with probability ``p`` in training
    (the rest scaled by 1/(1-p)); the identity in eval mode, as PyTorch's."""

    _dropout = staticmethod(dropout2d)


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return _shape.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
