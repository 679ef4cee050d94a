"""Half precision: float16 and bfloat16 tensors.

``minidl.float16`` (``half``) is NumPy's; ``minidl.bfloat16`` comes from the
``ml_dtypes`` package when it is installed (``pip install ml_dtypes``), and
asking for it without raises an error that says so. Half tensors can be
made, stored, reshaped, indexed, concatenated, moved and cast
(``x.half()``, ``x.bfloat16()``, ``x.float()``, ``module.to(minidl.float16)``),
and float16 computes in the ops that are NumPy expressions (elementwise
arithmetic, exp, tanh, softmax, matmul, norms...), with gradients. The
compiled kernels (convolution, pooling) take float32/float64 only, and
bfloat16 is for storage and conversion only (NumPy would silently promote it
to float32/float64 in arithmetic): those ops, and any other op that fails on
a half input, raise a TypeError naming the op and telling to convert with
``.float()``.
"""
from __future__ import annotations

import numpy as np

float16 = np.dtype(np.float16)

try:
    import ml_dtypes
except ImportError:  # bfloat16 stays unavailable; minidl.bfloat16 says why
    ml_dtypes = None
    bfloat16 = None
    HALF_DTYPES = frozenset([float16])
else:
    bfloat16 = np.dtype(ml_dtypes.bfloat16)
    HALF_DTYPES = frozenset([float16, bfloat16])

BFLOAT16_MISSING = ("minidl.bfloat16 needs the ml_dtypes package (NumPy has no bfloat16): "
                    "pip install ml_dtypes; or use minidl.float16")


def check_bfloat16():
    if bfloat16 is None:
        raise TypeError(BFLOAT16_MISSING)
    return bfloat16


def unsupported(function, dtype, cause=None):
    """The TypeError for ``function`` (a Function) given a half-precision input."""
    why = ""
    if cause is not None:
        first = (str(cause).strip().splitlines() or [""])[0][:160]
        why = f" (it failed: {type(cause).__name__}: {first})"
    return TypeError(f"{type(function).__name__}: does not support {dtype} tensors{why}; "
                     f"minidl's compiled kernels compute in float32/float64: convert with "
                     f".float() first, e.g. model.float() or x.float()")


def install():
    """Refuse float16 upfront in the ops run by compiled kernels, allow bfloat16 in
    the ops that move or cast data, and add ``Tensor.half()`` / ``Tensor.bfloat16()``."""
    from .ops import arith, conv, conv_block, shape
    from .tensor import Tensor
    for cls in (conv.Conv2dFunction, conv_block.ConvPoolReLU, conv.MaxPool2dFunction,
                conv.AvgPool2dFunction):
        cls.supports_half = False
    for cls in (arith.Cast, arith.Clone, shape.Reshape, shape.Transpose, shape.GetItem,
                shape.Concat, shape.Stack, shape.BroadcastTo, shape.Pad, shape.Repeat):
        cls.supports_bfloat16 = True
    Tensor.half = lambda self: self.astype(float16)
    Tensor.bfloat16 = lambda self: self.astype(check_bfloat16())
