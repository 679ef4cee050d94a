"""Gradient checking and array comparison, for minidl's tests and for users' ops.

``gradcheck`` follows ``torch.autograd.gradcheck``: float64 central
differences with ``eps=1e-6, atol=1e-5, rtol=1e-3``, a random ``grad_output``
(all-ones would hide transposition errors), every differentiable input
checked in one call, plus structural checks (a zero ``grad_output`` gives
zero gradients; two backward passes agree).
"""
from __future__ import annotations

import numpy as np

from . import backend
from .tensor import Tensor, no_grad, raw


def _to_numpy(x):
    return backend.as_numpy(raw(x))


# float itemsize -> torch.testing.assert_close's default (rtol, atol)
_TOLERANCES = {2: (1e-3, 1e-5), 4: (1.3e-6, 1e-5), 8: (1e-7, 1e-7)}


def assert_close(actual, expected, rtol=None, atol=None, msg=""):
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

    Default tolerances per dtype as ``torch.testing.assert_close``: float16
    rtol 1e-3 / atol 1e-5, float32 1.3e-6 / 1e-5, float64 1e-7 / 1e-7 (the
    least precise of the two dtypes decides), integers and bools exact.
    An infinite expected value is met only by the same infinity; NaN matches
    nothing, not even NaN (``torch.testing.assert_close``'s default). The message gives the number of mismatches and the worst absolute
    and relative difference with its index.
    """
    a, e = np.asarray(_to_numpy(actual)), np.asarray(_to_numpy(expected))
    if a.shape != e.shape:
        raise AssertionError(f"{msg}shape mismatch: actual {a.shape}, expected {e.shape}")
    exact = a.dtype.kind in "iub" and e.dtype.kind in "iub"
    floats = [d.itemsize for d in (a.dtype, e.dtype) if d.kind == "f"]
    default_rtol, default_atol = (0, 0) if exact else _TOLERANCES[min(floats, default=8)]
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    with np.errstate(invalid="ignore"):   # inf - inf
        diff = np.abs(a64 - e64)
    if exact and rtol == 0 and atol == 0:   # no float64 rounding of big integers
        bad = a != e
    else:
        bad = ~(diff <= atol + rtol * np.abs(e64))
        # rtol * inf would accept anything: an infinity must be matched exactly
        bad = np.where(np.isinf(e64), a64 != e64, bad)
        bad |= np.isnan(a64) != np.isnan(e64)
    if bad.any():
        # A NaN mismatch ranks worst (nanargmax would skip it, or fail when
        # every mismatch is NaN).
        score = np.where(bad, np.where(np.isnan(diff), np.inf, diff), -1.0)
        worst = np.unravel_index(np.argmax(score), diff.shape) if diff.ndim else ()
        with np.errstate(invalid="ignore"):   # inf / inf
            rel = diff[worst] / max(abs(e64[worst]), 1e-300)
        raise AssertionError(
            f"{msg}{int(bad.sum())} of {bad.size} elements differ (rtol={rtol}, atol={atol}); "
            f"worst at index {tuple(int(i) for i in worst)}: actual {a64[worst]!r}, expected "
            f"{e64[worst]!r} (abs diff {diff[worst]:.3g}, rel diff {rel:.3g})")


def _prepare_inputs(inputs):
    """float64 copies of the inputs (the caller's arrays are never touched)."""
    prepared, differentiable = [], []
    for x in inputs:
        if isinstance(x, Tensor):
            data, wants = x._data, x.requires_grad
        elif x is None or (isinstance(x, (int, float)) and not isinstance(x, np.generic)):
            # Python numbers are constants; NumPy scalars (what NumPy gives
            # for 0-d results) are checked like arrays.
            prepared.append(x)
            differentiable.append(False)
            continue
        else:
            data, wants = x, True
        if np.dtype(data.dtype).kind == "f":
            # A copy (the caller's array is never touched) in the same memory
            # layout: ops take layout-specific paths (conv2d's C-major one),
            # and those must be checked too.
            xp = backend.get_array_module(data)
            copy = xp.empty_like(data, dtype=np.float64)
            copy[...] = data
            t = Tensor._wrap(copy)
            t.requires_grad = wants
            prepared.append(t)
            differentiable.append(wants)
        else:
            # integer inputs (indices, targets) stay on their device, as they are
            prepared.append(Tensor._wrap(data if isinstance(x, Tensor) or
                                         backend.is_cuda_array(data) else np.asarray(data)))
            differentiable.append(False)
    return prepared, differentiable


def _outputs(fn, inputs):
    out = fn(*inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in outs if isinstance(o, Tensor) and o._data.dtype.kind == "f"]


def _analytic(fn, inputs, diff_idx, grad_outputs):
    for i in diff_idx:
        inputs[i].grad = None
    outs = _outputs(fn, inputs)
    for k, (o, g) in enumerate(zip(outs, grad_outputs)):
        if o.requires_grad:
            o.backward(g, retain_graph=k < len(outs) - 1)
    return [np.zeros(inputs[i].shape) if inputs[i].grad is None else
            backend.as_numpy(inputs[i].grad._data).astype(np.float64) for i in diff_idx]


def _objective(fn, inputs, grad_outputs):
    with no_grad():
        outs = _outputs(fn, inputs)
    return sum(float((backend.as_numpy(o._data) * g).sum()) for o, g in zip(outs, grad_outputs))


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, directional=False, seed=0,
              structural=True):
    """Check the analytic gradients of ``fn(*inputs)`` against central differences.

    ``inputs``: Tensors or arrays; floating ones are copied to float64 and
    checked unless they are Tensors with ``requires_grad=False``. ``fn`` returns
    a Tensor or a tuple of them. ``directional=True`` compares one random
    direction (two forward calls) instead of every element, for larger shapes.
    Returns True or raises AssertionError naming the input, the worst element,
    both values and the tolerance.
    """
    rng = np.random.default_rng(seed)
    inputs, differentiable = _prepare_inputs(inputs)
    diff_idx = [i for i, d in enumerate(differentiable) if d]
    if not diff_idx:
        raise ValueError("gradcheck: no floating-point input requires a gradient")
    outs = _outputs(fn, inputs)
    if not outs:
        raise ValueError("gradcheck: fn returned no floating-point tensor")
    xp = backend.get_array_module(inputs[diff_idx[0]]._data)
    grad_outputs = [rng.standard_normal(o.shape) for o in outs]
    device_grads = [xp.asarray(g) for g in grad_outputs]
    analytic = _analytic(fn, inputs, diff_idx, device_grads)

    if directional:
        directions = [rng.standard_normal(inputs[i].shape) for i in diff_idx]
        norm = np.sqrt(sum(float((d * d).sum()) for d in directions)) or 1.0
        directions = [d / norm for d in directions]
        originals = [inputs[i]._data for i in diff_idx]
        shifted = [xp.empty_like(base) for base in originals]   # the same memory layout
        values = []
        for sign in (1, -1):
            for i, d, base, out in zip(diff_idx, directions, originals, shifted):
                xp.add(base, xp.asarray(sign * eps * d), out=out)
                inputs[i]._data = out
            values.append(_objective(fn, inputs, grad_outputs))
        for i, base in zip(diff_idx, originals):
            inputs[i]._data = base
        numeric = (values[0] - values[1]) / (2 * eps)
        predicted = sum(float((a * d).sum()) for a, d in zip(analytic, directions))
        if not abs(predicted - numeric) <= atol + rtol * abs(numeric):
            raise AssertionError(
                f"gradcheck (directional): analytic {predicted!r} vs numeric {numeric!r} "
                f"(atol={atol}, rtol={rtol})")
    else:
        for k, i in enumerate(diff_idx):
            data = inputs[i]._data
            numeric = np.zeros(data.shape)
            for j in np.ndindex(data.shape):   # in place, whatever the layout
                old = data[j].item()
                data[j] = old + eps
                plus = _objective(fn, inputs, grad_outputs)
                data[j] = old - eps
                minus = _objective(fn, inputs, grad_outputs)
                data[j] = old
                numeric[j] = (plus - minus) / (2 * eps)
            try:
                assert_close(analytic[k], numeric, rtol=rtol, atol=atol,
                             msg=f"gradcheck: input {i} (shape {data.shape}) analytic vs "
                                 "numeric gradient: ")
            except AssertionError as exc:
                raise AssertionError(str(exc)) from None

    if structural:
        zeros = [xp.zeros(g.shape) for g in grad_outputs]
        for k, g in zip(diff_idx, _analytic(fn, inputs, diff_idx, zeros)):
            if np.any(g != 0):
                raise AssertionError(f"gradcheck: input {k} got a non-zero gradient from a zero "
                                     "grad_output")
        again = _analytic(fn, inputs, diff_idx, device_grads)
        for k, a, b in zip(diff_idx, analytic, again):
            assert_close(b, a, rtol=1e-10, atol=1e-12,
                         msg=f"gradcheck: input {k}: a second backward disagrees with the first: ")
    return True
