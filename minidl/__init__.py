"""minidl: a small deep-learning framework on NumPy, with an optional CuPy backend.

Layout (one module per concern):
  tensor.py    Tensor, Function, the iterative backward engine, no_grad
  backend.py   the array-module shim (NumPy/CuPy), kernel dispatch, threads
  cuda.py      minidl.cuda.is_available(), PyTorch's spelling
  kernels/     raw-array kernels, one module per backend (NumPy, Numba, CuPy)
  ops/         differentiable ops, forward and backward side by side
  nn/          Module, layers, functional (F), init
  optim/       optimizers and learning-rate schedulers
  data/        datasets, DataLoader, transforms, MNIST
  models/      the CNN+Attention model
  train.py     the trainer;  serialization.py  safe checkpoints
  testing.py   gradcheck and comparison helpers
"""
from __future__ import annotations

from . import backend  # first: its thread settings must reach NumPy's BLAS before it loads

import numpy as np  # noqa: E402

from . import cuda, data, nn, ops, optim  # noqa: E402
from . import distributed  # noqa: E402
from . import fusion  # noqa: E402  (registers the fused CNN blocks; see its docstring)
from .backend import cuda_is_available, get_num_threads, set_num_threads
from .creation import (arange, empty, eye, from_numpy, full, linspace, ones, ones_like, rand,
                       randint, randn, randperm, tensor, zeros, zeros_like)
from .ops import (abs, add, amax, amin, argmax, argmin, broadcast_to, cat, chunk, clamp, clip,
                  concat, cos, div, exp, expand, flatten, flip, gather, log, logsumexp,
                  masked_fill, matmul, max, maximum, mean, min, minimum, mul, neg, pad, permute,
                  pow, relu, repeat, reshape, sigmoid, sin, split, sqrt, squeeze, stack, std, sub,
                  sum, swapaxes, tanh, transpose, tril, triu, unsqueeze, var, where)
from .ops import bmm, einsum
from .random import default_generator, manual_seed
from .serialization import load, save
from .tensor import (Function, Tensor, enable_grad, inference_mode, is_grad_enabled, no_grad,
                     set_grad_enabled)

float32, float64, int64, int32, bool_ = np.float32, np.float64, np.int64, np.int32, np.bool_
# PyTorch's dtype names (``x.to(minidl.long)``). NumPy dtype objects, not the scalar
# types: like torch's they cannot be called, so ``from minidl import *`` cannot turn
# int(3.9) or isinstance(x, int) silently into NumPy's; nothing below this line may
# call the builtins float(), int() or bool()
float, double, long, int, bool = (np.dtype(t) for t in (  # noqa: A001
    np.float32, np.float64, np.int64, np.int32, np.bool_))
device = backend.Device

# PyTorch's spellings of what minidl has (issue 20), and the error for what it lacks
from . import accelerator, onnx, utils  # noqa: E402
from .precision import float16  # noqa: E402
from .ops import argsort, multinomial, sort, topk  # noqa: E402
from .ops.activation import log_softmax, softmax  # noqa: E402
from . import precision as _half  # noqa: E402
from . import _missing  # noqa: E402

half = float16
_half.install()
from . import aliases as _aliases  # noqa: E402
from .aliases import (as_tensor, empty_like, full_like, int8, int16,  # noqa: E402
                      is_floating_point, mm, movedim, rand_like, randn_like, ravel, square,
                      uint8, unbind)
from .random import get_rng_state, set_rng_state  # noqa: E402

moveaxis = movedim
_aliases.install()


def is_tensor(obj):
    """Whether ``obj`` is a minidl Tensor, as ``torch.is_tensor``."""
    return isinstance(obj, Tensor)


def numel(input):
    """The number of elements of ``input``, as ``torch.numel``."""
    return input.numel()


def __getattr__(name):
    if name == "bfloat16":   # ml_dtypes' dtype, or the error that says how to get it
        return _half.check_bfloat16()
    return _missing.module_getattr("minidl", globals())(name)


__version__ = "0.1.0"
