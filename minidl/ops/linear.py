"""``linear(x, W, b) = x @ W.T + b`` as one op (one GEMM each way, no transpose node).

Shapes: x (..., in), W (out, in), b (out,) -> (..., out). Backward:
gx = gy @ W, gW = gy2.T @ x2 over all leading rows, gb = gy2.sum(0).
"""
from __future__ import annotations

import math

from .. import backend
from ..tensor import Function, as_tensor
from .arith import _matmul
from .reduce import sum_of


def _rows_times(a, b):
    """a (..., k) @ b (k, n) as one 2-D product of a's rows (the backend's
    matmul: on the CPU, split over Numba's threads)."""
    rows = a.reshape(math.prod(a.shape[:-1]), a.shape[-1])   # -1 is ambiguous when empty
    return _matmul(rows, b).reshape(*a.shape[:-1], b.shape[1])


class LinearFunction(Function):
    def forward(self, x, w, b=None):
        y = _rows_times(x, w.T)
        if b is not None:
            y += b
        self.x, self.w = (x if self.needs_input_grad[1] else None), \
            (w if self.needs_input_grad[0] else None)
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        gx = gw = gb = None
        if self.needs_input_grad[0]:
            gx = _rows_times(gy, self.w)
        gy2 = gy.reshape(-1, gy.shape[-1])
        if self.needs_input_grad[1]:
            x2 = self.x.reshape(-1, self.x.shape[-1])
            # one row (batch 1): NumPy's matmul takes a plain loop for a 1-long
            # inner dimension (140 us for 128 x 784 here); dot calls BLAS
            gw = xp.dot(gy2.T, x2) if gy2.shape[0] == 1 else _matmul(gy2.T, x2)
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            gb = sum_of(gy2, (0,), False)   # float64 over many rows (see sum_dtype)
        return gx, gw, gb


def linear(input, weight, bias=None):
    """``input @ weight.T + bias`` as ``torch.nn.functional.linear``."""
    x = as_tensor(input)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input {tuple(x.shape)} does not match weight "
                         f"{tuple(weight.shape)}: expected (*, {weight.shape[1]})")
    if x.dtype != weight.dtype:
        raise TypeError(f"linear: input dtype {x.dtype} and weight dtype {weight.dtype} differ "
                        "(cast one; minidl never promotes silently)")
    if bias is not None and bias.dtype != weight.dtype:
        raise TypeError(f"linear: bias dtype {bias.dtype} differs from the input and weight "
                        f"dtype {weight.dtype} (cast one; minidl never promotes silently)")
    fn = LinearFunction()
    return fn(x, weight) if bias is None else fn(x, weight, bias)
