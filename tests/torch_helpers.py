"""PyTorch as a test oracle: one helper, :func:`check_vs_torch`.

minidl never imports torch; only tests do, through here, and they skip
cleanly when torch is not installed.
"""
from __future__ import annotations

import numpy as np
import pytest

import minidl
from minidl.testing import assert_close


def check_vs_torch(fn, inputs, minidl_fn=None, *, dtype=np.float64, rtol=None, atol=None,
                   grad_rtol=None, grad_atol=None, seed=0, backward=True):
    """Run ``fn`` in PyTorch and in minidl on the same arrays; compare everything.

    ``fn(*tensors)`` is written once when the two APIs agree (``x @ y``,
    ``x.exp()``, ``x.sum(dim=1, keepdim=True)``, ...). When they differ, pass
    the torch version as ``fn`` and the minidl one as ``minidl_fn``.

    ``inputs`` lists shapes (tuples; filled with standard normals from
    ``seed``) or arrays (used as they are). Floating inputs are cast to
    ``dtype`` and require a gradient; integer/bool arrays (indices, masks)
    are passed as constant tensors.

    Checked: output shape, dtype and values; then, after a backward pass
    with the same *random* ``grad_output`` in both (all-ones would hide
    transposition errors), the gradient of every floating input. ``fn`` may
    return one tensor or a tuple. Tolerances default to
    :func:`minidl.testing.assert_close`'s per-dtype ones; ``grad_rtol`` and
    ``grad_atol`` default to ``rtol``/``atol``.

    Returns ``(minidl_outputs, torch_outputs)`` as lists, for extra checks.

    Example::

        check_vs_torch(lambda x, w: (x @ w).relu().sum(dim=-1), [(4, 3), (3, 5)])
        check_vs_torch(lambda x: x.amax(dim=1), [x_np], lambda x: x.max(axis=1))
    """
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    arrays = []
    for x in inputs:
        a = rng.standard_normal(x) if isinstance(x, tuple) else np.asarray(x)
        arrays.append(a.astype(dtype) if a.dtype.kind == "f" else a)
    floating = [a.dtype.kind == "f" for a in arrays]
    t_in = [torch.tensor(a, requires_grad=f) for a, f in zip(arrays, floating)]
    m_in = [minidl.tensor(a.copy(), requires_grad=f) for a, f in zip(arrays, floating)]

    def _listed(out):
        return list(out) if isinstance(out, (tuple, list)) else [out]

    t_out = _listed(fn(*t_in))
    m_out = _listed((minidl_fn or fn)(*m_in))
    assert len(m_out) == len(t_out), f"{len(m_out)} minidl outputs, {len(t_out)} torch outputs"
    for k, (m, t) in enumerate(zip(m_out, t_out)):
        assert tuple(m.shape) == tuple(t.shape), \
            f"output {k}: minidl shape {tuple(m.shape)}, torch shape {tuple(t.shape)}"
        assert np.dtype(m.dtype).name == str(t.dtype).removeprefix("torch."), \
            f"output {k}: minidl dtype {m.dtype}, torch dtype {t.dtype}"
        assert_close(m, t.detach().numpy(), rtol=rtol, atol=atol, msg=f"output {k}: ")

    if not backward:
        return m_out, t_out
    pairs = [(m, t) for m, t in zip(m_out, t_out) if t.requires_grad]
    for k, (m, t) in enumerate(pairs):
        g = rng.standard_normal(tuple(t.shape)).astype(dtype)
        last = k == len(pairs) - 1
        t.backward(torch.tensor(g), retain_graph=not last)
        m.backward(g, retain_graph=not last)
    for i, (m, t, f) in enumerate(zip(m_in, t_in, floating)):
        if not f:
            continue
        expected = np.zeros(arrays[i].shape, dtype) if t.grad is None else t.grad.numpy()
        assert m.grad is not None or not expected.any(), f"input {i}: minidl gave no gradient"
        actual = np.zeros_like(expected) if m.grad is None else m.grad.numpy()
        assert actual.dtype == expected.dtype, \
            f"input {i}: minidl grad dtype {actual.dtype}, torch {expected.dtype}"
        assert_close(actual, expected, rtol=grad_rtol if grad_rtol is not None else rtol,
                     atol=grad_atol if grad_atol is not None else atol,
                     msg=f"input {i} gradient: ")
    return m_out, t_out
