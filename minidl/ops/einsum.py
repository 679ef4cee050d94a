"""``bmm`` and ``einsum``, built on the batched matmul (so they run as its GEMMs do).

``einsum(equation, *operands)`` contracts operands pairwise, left to right:
for each pair, letters that only one operand has and nothing later needs are
summed first, then both are permuted and reshaped to (batch, rows, inner)
and (batch, inner, cols) and multiplied with :func:`matmul` (one batched GEMM
on the CPU's thread pool, cuBLAS on CuPy); the result is permuted to the
output's letters. Gradients come from those ops. Supported: explicit (``->``)
or implicit output, ``...`` for leading dims. Not supported: a letter
repeated within one operand (diagonals), and size-1 broadcasting of a letter.
"""
from __future__ import annotations

import math
import string

from ..tensor import as_tensor
from .arith import matmul
from .reduce import sum as _sum
from .shape import permute, reshape

_ELLIPSIS_LETTERS = string.ascii_uppercase   # the dims '...' stands for


def bmm(input, mat2):
    """Batched matrix product as ``torch.bmm``: input (B, n, m), mat2 (B, m, p) -> (B, n, p)."""
    a, b = as_tensor(input), as_tensor(mat2)
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"bmm: expected (B, n, m) and (B, m, p) tensors, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return matmul(a, b)


def _parse(equation, operands):
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    specs = lhs.split(",")
    if len(specs) != len(operands):
        raise ValueError(f"einsum: the equation {equation!r} names {len(specs)} operands, "
                         f"got {len(operands)}")
    width = 0
    out_specs = []
    for spec, x in zip(specs, operands):
        if "..." in spec:
            n = x.ndim - (len(spec) - 3)
            if n < 0:
                raise ValueError(f"einsum: operand {spec!r} has more letters than its "
                                 f"{x.ndim} dims")
            width = max(width, n)
            spec = spec.replace("...", _ELLIPSIS_LETTERS[len(_ELLIPSIS_LETTERS) - n:])
        if len(spec) != x.ndim or not spec.isalpha():
            raise ValueError(f"einsum: operand spec {spec!r} does not fit a tensor of shape "
                             f"{tuple(x.shape)} (one letter per dim)")
        if len(set(spec)) != len(spec):
            raise ValueError(f"einsum: a letter repeated within one operand ({spec!r}, a "
                             f"diagonal) is not supported")
        out_specs.append(spec)
    dots = _ELLIPSIS_LETTERS[len(_ELLIPSIS_LETTERS) - width:] if width else ""
    if arrow:
        out = rhs.replace("...", dots)
    else:
        letters = "".join(out_specs)
        out = dots + "".join(sorted(c for c in set(letters) if letters.count(c) == 1
                                    and c not in dots))
    return out_specs, out


def _sizes(specs, operands):
    sizes = {}
    for spec, x in zip(specs, operands):
        for c, n in zip(spec, x.shape):
            if sizes.setdefault(c, n) != n:
                raise ValueError(f"einsum: letter {c!r} has sizes {sizes[c]} and {n}")
    return sizes


def _sum_out(x, spec, keep):
    drop = [i for i, c in enumerate(spec) if c not in keep]
    if drop:
        x = _sum(x, axis=tuple(drop))
        spec = "".join(c for c in spec if c in keep)
    return x, spec


def _to(x, spec, order):
    return x if spec == order else permute(x, *[spec.index(c) for c in order])


def _contract(a, sa, b, sb, keep, sizes):
    """a (sa) times b (sb), keeping the letters in ``keep``: -> (tensor, spec)."""
    a, sa = _sum_out(a, sa, set(keep) | set(sb))
    b, sb = _sum_out(b, sb, set(keep) | set(sa))
    batch = [c for c in sa if c in sb and c in keep]
    inner = [c for c in sa if c in sb and c not in keep]
    rows = [c for c in sa if c not in sb]
    cols = [c for c in sb if c not in sa]
    n = [math.prod(sizes[c] for c in group) for group in (batch, rows, inner, cols)]
    a = reshape(_to(a, sa, "".join(batch + rows + inner)), n[0], n[1], n[2])
    b = reshape(_to(b, sb, "".join(batch + inner + cols)), n[0], n[2], n[3])
    spec = batch + rows + cols
    return reshape(matmul(a, b), *[sizes[c] for c in spec]), "".join(spec)


def einsum(equation, *operands):
    """Einstein summation as ``torch.einsum`` (see the module docstring for the forms)."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not operands:
        raise ValueError("einsum: needs at least one operand")
    xs = [as_tensor(x) for x in operands]
    specs, out = _parse(equation, xs)
    sizes = _sizes(specs, xs)
    unknown = set(out) - set(sizes)
    if unknown or len(set(out)) != len(out):
        raise ValueError(f"einsum: output {out!r} names letters no operand has, or one twice")
    x, spec = xs[0], specs[0]
    for i in range(1, len(xs)):
        keep = set(out).union(*specs[i + 1:])
        x, spec = _contract(x, spec, xs[i], specs[i], keep, sizes)
    x, spec = _sum_out(x, spec, set(out))
    return _to(x, spec, out)
