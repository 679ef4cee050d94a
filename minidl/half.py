"""Half precision: float16 and bfloat16 tensors for storage and conversion.

``minidl.float16`` (``half``) is NumPy's; ``minidl.bfloat16`` comes from the
``ml_dtypes`` package when it is installed (``pip install ml_dtypes``), and
asking for it without raises an error that says so. Half tensors can be
made, stored, reshaped, indexed, concatenated, moved and cast
(``x.half()``, ``x.bfloat16()``, ``x.float()``, ``module.to(minidl.float16)``);
any other op on them raises a TypeError naming the op and telling to cast
to float32 first: minidl's kernels compute in float32/float64 only, and
silently computing in float32 would hide that.
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


def unsupported(function, dtype):
    """The TypeError for ``function`` (a Function) given a half-precision input."""
    return TypeError(f"{type(function).__name__}: {dtype} tensors are supported for storage "
                     f"and conversion only (minidl's kernels compute in float32/float64); "
                     f"convert with .float() first, e.g. model.float() or x.float()")


def install():
    """Mark the ops that only move or cast data as half-safe and add
    ``Tensor.half()`` / ``Tensor.bfloat16()``."""
    from .ops import arith, shape
    from .tensor import Tensor
    for cls in (arith.Cast, arith.Clone, shape.Reshape, shape.Transpose, shape.GetItem,
                shape.Concat, shape.Stack, shape.BroadcastTo, shape.Pad, shape.Repeat):
        cls.supports_half = True
    Tensor.half = lambda self: self.astype(float16)
    Tensor.bfloat16 = lambda self: self.astype(check_bfloat16())
