"""Parameter initialisation, as ``torch.nn.init`` (in place, under no graph).

Every draw comes from minidl's CPU generator (``minidl.manual_seed`` seeds
it) and is copied to the tensor's device, so a seed gives the same initial
weights on CPU and GPU.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from .. import backend
from ..random import default_generator


def _fill(tensor, values):
    xp = backend.get_array_module(tensor._data)
    tensor._data[...] = xp.asarray(values.astype(tensor._data.dtype, copy=False))
    return tensor


def _calculate_fan_in_and_fan_out(tensor):
    shape = tensor.shape
    if len(shape) < 2:
        raise ValueError(f"init: fan in and fan out need a tensor of at least 2 dims, got shape "
                         f"{tuple(shape)}")
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity, param=None):
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, numbers.Real) and not isinstance(param, (bool, np.bool_)):
            slope = float(param)
        else:  # a bool is an int to Python, but True is no slope (PyTorch refuses it too)
            raise ValueError(f"calculate_gain: the leaky_relu negative slope must be a number, "
                             f"got {param!r}")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    gen = generator or default_generator()
    return _fill(tensor, gen.uniform(a, b, tensor.shape))


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    gen = generator or default_generator()
    return _fill(tensor, gen.normal(mean, std, tensor.shape))


def constant_(tensor, val):
    tensor._data[...] = val
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0)


def ones_(tensor):
    return constant_(tensor, 1)


def _kaiming_fan(op, tensor, mode):
    """The fan that ``mode`` ('fan_in' or 'fan_out', any case, as PyTorch) names,
    or None for a zero-element tensor, which is left as it is with PyTorch's
    warning (its fan may be 0, and there is nothing to fill)."""
    valid_modes = ("fan_in", "fan_out")
    if not isinstance(mode, str) or mode.lower() not in valid_modes:
        raise ValueError(f"{op}: mode must be one of {valid_modes}, got {mode!r}")
    if 0 in tensor.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", UserWarning, stacklevel=3)
        return None
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode.lower() == "fan_in" else fan_out


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """U(-b, b) with b = gain * sqrt(3 / fan); ``a=sqrt(5)`` gives PyTorch's
    Linear/Conv2d default, b = 1/sqrt(fan_in). A zero-element tensor is left
    as it is, with a warning (PyTorch's behaviour; ``nn.Linear(0, n)`` works)."""
    fan = _kaiming_fan("kaiming_uniform_", tensor, mode)
    if fan is None:
        return tensor
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """N(0, std^2) with std = gain / sqrt(fan); a zero-element tensor is left as
    it is, with a warning (as PyTorch)."""
    fan = _kaiming_fan("kaiming_normal_", tensor, mode)
    if fan is None:
        return tensor
    return normal_(tensor, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(fan), generator)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)
