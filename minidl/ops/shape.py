"""Shape ops: reshape, transpose, indexing, concatenation, broadcasting, padding.

Forwards return views wherever NumPy does; backwards are the inverse view
(or, for indexing, a scatter-add into zeros).
"""
from __future__ import annotations

import operator

import numpy as np

from .. import backend
from ..tensor import Function, Tensor, as_array, as_tensor


class DimError(IndexError, ValueError):
    """A dim out of range: an IndexError as in PyTorch, and a ValueError as
    minidl's reductions raised before (NumPy's AxisError is both too)."""


def normalize_dim(op, dim, ndim, new_dim=False):
    """``dim`` (negative counts from the end) as an index in ``range(ndim)``.

    ``new_dim=True`` is for a dim being inserted (unsqueeze, stack): any of the
    ndim + 1 positions. A 0-d tensor accepts dim 0 and -1, as in PyTorch
    (it returns 0; the caller decides what that means for no dims).
    Raises DimError naming the dim and the valid range.
    """
    size = ndim + 1 if new_dim else max(ndim, 1)
    dim = operator.index(dim)  # NumPy integers too; a float is a TypeError
    if not -size <= dim < size:
        raise DimError(f"{op}: dim {dim} is out of range for a tensor of {ndim} dimensions "
                       f"(expected a dim in [{-size}, {size - 1}])")
    return dim % size


def _shape_arg(op, shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: expected integer sizes, got {shape!r}") from None


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} "
                             f"({x.size} elements) to {self.shape}") from None

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Transpose(Function):
    """Permute the axes; ``axes`` is a full permutation."""

    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        return x.transpose(self.axes)

    def backward(self, gy):
        return gy.transpose(tuple(np.argsort(self.axes)))


def _is_int(k):
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def _is_advanced(key):
    parts = key if isinstance(key, tuple) else (key,)
    return any(not isinstance(k, (int, slice, type(None), type(Ellipsis))) for k in parts)


def raw_key(key):
    """Replace tensors in an index by their arrays, and integer scalars (NumPy's, 0-d
    arrays and tensors, such as ``t.argmax()``) by Python ints: PyTorch treats all
    of them as ints."""
    if isinstance(key, tuple):
        return tuple(raw_key(k) for k in key)
    if isinstance(key, Tensor):
        key = key._data
    if isinstance(key, np.integer) or (getattr(key, "ndim", None) == 0
                                       and getattr(key, "dtype", np.dtype(bool)).kind in "iu"):
        return int(key)
    if isinstance(key, list):
        # An empty list selects nothing along the dim: an integer index (as in
        # PyTorch), where as_array would make it float32 and NumPy refuse it.
        return as_array(key) if key else np.zeros(0, dtype=np.int64)
    return key


class GetItem(Function):
    """``x[key]``; backward scatter-adds, so repeated indices accumulate."""

    def __init__(self, key):
        self.key = key

    def forward(self, x):
        self.in_shape, self.in_dtype = x.shape, x.dtype
        try:
            return x[self.key]
        except IndexError as exc:
            raise IndexError(f"getitem: index {self.key!r} is invalid for a tensor of shape "
                             f"{x.shape}: {exc}") from None

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        gx = xp.zeros(self.in_shape, dtype=gy.dtype)
        if _is_advanced(self.key):
            backend.scatter_add(gx, self.key, gy)
        else:
            gx[self.key] = gy
        return gx


class Concat(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        xp = backend.get_array_module(*xs)
        self.sizes = [x.shape[self.axis] for x in xs]
        try:
            return xp.concatenate(xs, axis=self.axis)
        except ValueError:
            shapes = ", ".join(str(x.shape) for x in xs)
            raise ValueError(f"concat: shapes {shapes} differ outside axis {self.axis}") from None

    def backward(self, gy):
        grads, start = [], 0
        lead = (slice(None),) * (self.axis % gy.ndim)
        for size in self.sizes:
            grads.append(gy[lead + (slice(start, start + size),)])
            start += size
        return tuple(grads)


class Stack(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        xp = backend.get_array_module(*xs)
        if len({x.shape for x in xs}) > 1:
            shapes = ", ".join(str(x.shape) for x in xs)
            raise ValueError(f"stack: expected tensors of one shape, got {shapes}")
        return xp.stack(xs, axis=self.axis)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        return tuple(xp.moveaxis(gy, self.axis, 0))


class BroadcastTo(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        xp = backend.get_array_module(x)
        try:
            return xp.broadcast_to(x, self.shape)
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to "
                             f"{self.shape}") from None

    def backward(self, gy):
        return gy  # the engine sums it back to the input's shape


class Pad(Function):
    """Constant padding; ``widths`` is NumPy's ((before, after), ...) per axis."""

    def __init__(self, widths, value):
        self.widths, self.value = widths, value

    def forward(self, x):
        xp = backend.get_array_module(x)
        return xp.pad(x, self.widths, mode="constant", constant_values=x.dtype.type(self.value))

    def backward(self, gy):
        return gy[tuple(slice(b, gy.shape[i] - a) for i, (b, a) in enumerate(self.widths))]


# ---------------------------------------------------------------- wrappers

def reshape(x, *shape):
    shape = _shape_arg("reshape", shape)
    if shape == x.shape:
        return x
    return Reshape(shape)(x)


view = reshape


def flatten(x, start_dim=0, end_dim=-1):
    """Merge dims ``start_dim..end_dim`` into one (PyTorch's flatten); a 0-d tensor gives (1,)."""
    start = normalize_dim("flatten", start_dim, x.ndim)
    end = normalize_dim("flatten", end_dim, x.ndim)
    if x.ndim == 0:
        return reshape(x, 1)
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    merged = 1
    for s in x.shape[start:end + 1]:
        merged *= s
    return reshape(x, x.shape[:start] + (merged,) + x.shape[end + 1:])


def squeeze(x, axis=None, *, dim=None):
    """Drop the given size-1 dims (all of them without ``axis``); other dims stay."""
    axis = dim if dim is not None else axis
    if axis is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    axes = (axis,) if not isinstance(axis, (tuple, list)) else axis
    axes = {normalize_dim("squeeze", a, x.ndim) for a in axes}
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if not (i in axes and s == 1)))


def unsqueeze(x, dim):
    dim = normalize_dim("unsqueeze", dim, x.ndim, new_dim=True)
    return reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])


expand_dims = unsqueeze


def permute(x, *dims):
    dims = _shape_arg("permute", dims)
    if len(dims) != x.ndim:
        raise ValueError(f"permute: got {len(dims)} dims {dims} for a tensor of shape {x.shape}; "
                         f"expected a permutation of its {x.ndim} dims")
    axes = tuple(normalize_dim("permute", d, x.ndim) for d in dims)
    if len(set(axes)) != len(axes):
        raise ValueError(f"permute: {dims} repeats a dim; expected a permutation of the "
                         f"{x.ndim} dims of a tensor of shape {x.shape}")
    return Transpose(axes)(x)


def transpose(x, *axes):
    """No axes: reverse them. Two axes: swap them (PyTorch's ``transpose(dim0,
    dim1)``; on 2-D this differs from NumPy only for the identity ``(0, 1)``,
    which nobody means). A full list otherwise: permute (NumPy)."""
    axes = _shape_arg("transpose", axes) if axes else ()
    if not axes:
        return Transpose(tuple(reversed(range(x.ndim))))(x)
    if len(axes) == 2:
        return swapaxes(x, *axes)
    return permute(x, *axes)


def swapaxes(x, axis1, axis2):
    a = normalize_dim("swapaxes", axis1, x.ndim)
    b = normalize_dim("swapaxes", axis2, x.ndim)
    if x.ndim == 0:  # dims 0 and -1 of a 0-d tensor: nothing to swap
        return x
    perm = list(range(x.ndim))
    perm[a], perm[b] = perm[b], perm[a]
    return Transpose(tuple(perm))(x)


def split_int_indices(key, ndim):
    """PyTorch applies a key's integer indices first, NumPy counts them as advanced
    indices: ``x[0, :, [1, 2]]`` of a (2, 3, 4) x is (3, 2) in PyTorch and (2, 3)
    in NumPy. For a key with ints and arrays, returns (ints_key, rest_key) such
    that ``x[ints_key][rest_key]`` is PyTorch's result; else None."""
    parts = key if isinstance(key, tuple) else (key,)
    # a bool scalar is an advanced index to NumPy (a new dim, moved to the front when
    # ints stand apart from it), a new dim in place to PyTorch
    if not (any(_is_int(k) for k in parts)
            and (_is_advanced(parts) or any(isinstance(k, (bool, np.bool_)) for k in parts))):
        return None

    def dims_used(k):
        if getattr(k, "dtype", None) == np.bool_:   # a mask uses as many dims as it has
            return k.ndim
        return 0 if k is None or k is Ellipsis or isinstance(k, bool) else 1

    consumed = sum(dims_used(k) for k in parts)
    expanded = []
    for k in parts:   # Ellipsis -> the slices it stands for
        expanded.extend([slice(None)] * (ndim - consumed) if k is Ellipsis else [k])
    ints_key, rest_key = [], []
    for k in expanded:
        if _is_int(k):
            ints_key.append(k)
        elif k is None or isinstance(k, bool):   # new dims: for the second step
            rest_key.append(k)
        else:   # a slice or an array: kept for the second step, its dims kept by the first
            ints_key.extend([slice(None)] * dims_used(k))
            rest_key.append(k)
    return tuple(ints_key), tuple(rest_key)


def getitem(x, key):
    key = raw_key(key)
    split = split_int_indices(key, x.ndim)
    if split is not None:
        return GetItem(split[1])(GetItem(split[0])(x))
    return GetItem(key)(x)


def concat(tensors, axis=0, *, dim=None):
    axis = dim if dim is not None else axis
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concat: expected at least one tensor")
    if any(t.ndim == 0 for t in tensors):
        raise ValueError("concat: cannot concatenate 0-d tensors; use stack, or unsqueeze "
                         "them to shape (1,) first")
    return Concat(normalize_dim("concat", axis, tensors[0].ndim))(*tensors)


cat = concatenate = concat


def stack(tensors, axis=0, *, dim=None):
    axis = dim if dim is not None else axis
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected at least one tensor")
    return Stack(normalize_dim("stack", axis, tensors[0].ndim, new_dim=True))(*tensors)


def broadcast_to(x, *shape):
    shape = _shape_arg("broadcast_to", shape)
    if shape == x.shape:
        return x
    return BroadcastTo(shape)(x)


def expand(x, *sizes):
    """PyTorch's expand: -1 keeps a dim's size."""
    sizes = _shape_arg("expand", sizes)
    lead = len(sizes) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(sizes))
    return broadcast_to(x, shape)


def split(x, split_size_or_sections, dim=0):
    """Pieces of ``x`` along ``dim``, as ``torch.split``: an int gives pieces of that
    size (the last may be smaller); a list gives pieces of those sizes, which must
    add up to the dim's size. Each piece is a slice, with its own gradient."""
    if x.ndim == 0:
        raise ValueError("split: cannot split a 0-d tensor")
    dim = normalize_dim("split", dim, x.ndim)
    size = x.shape[dim]
    if isinstance(split_size_or_sections, (list, tuple)):
        sizes = [operator.index(s) for s in split_size_or_sections]
        if any(s < 0 for s in sizes) or sum(sizes) != size:
            raise ValueError(f"split: sections {sizes} must be non-negative and add up to "
                             f"{size}, the size of dim {dim} of shape {tuple(x.shape)}")
    else:
        step = operator.index(split_size_or_sections)
        if step <= 0 and not (step == 0 and size == 0):
            raise ValueError(f"split: split_size must be positive, got {step}")
        sizes = [min(step, size - start) for start in range(0, size, step or 1)] or [0]
    lead = (slice(None),) * dim
    pieces, start = [], 0
    for s in sizes:
        pieces.append(getitem(x, lead + (slice(start, start + s),)))
        start += s
    return tuple(pieces)


def chunk(x, chunks, dim=0):
    """``chunks`` pieces (or fewer) of equal size along ``dim``, the last smaller if
    the size does not divide, as ``torch.chunk``."""
    chunks = operator.index(chunks)
    if chunks <= 0:
        raise ValueError(f"chunk: chunks must be positive, got {chunks}")
    if x.ndim == 0:
        raise ValueError("chunk: cannot chunk a 0-d tensor")
    dim = normalize_dim("chunk", dim, x.ndim)
    size = x.shape[dim]
    if size == 0:   # PyTorch: `chunks` empty pieces
        return tuple(getitem(x, (slice(None),) * dim + (slice(0, 0),)) for _ in range(chunks))
    return split(x, -(-size // chunks), dim)


def flip(x, *dims):
    """``x`` reversed along ``dims`` (``flip(x, 0, 2)`` or ``flip(x, (0, 2))``), as
    ``torch.flip``."""
    dims = _shape_arg("flip", dims)
    axes = {normalize_dim("flip", d, x.ndim) for d in dims}
    if len(axes) != len(dims):
        raise ValueError(f"flip: dims {dims} name a dim twice")
    return getitem(x, tuple(slice(None, None, -1) if d in axes else slice(None)
                            for d in range(x.ndim)))


class Repeat(Function):
    """``x`` tiled ``reps`` times per dim (``len(reps) >= x.ndim``; x gets leading 1s)."""

    def __init__(self, reps):
        self.reps = reps

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.in_shape = x.shape
        return xp.tile(x, self.reps)

    def backward(self, gy):
        # y viewed as (r0, s0, r1, s1, ...): every copy of x, summed over the r axes
        shape = (1,) * (len(self.reps) - len(self.in_shape)) + tuple(self.in_shape)
        pairs = [v for r, s in zip(self.reps, shape) for v in (r, s)]
        gx = gy.reshape(pairs).sum(axis=tuple(range(0, len(pairs), 2)))
        return gx.reshape(self.in_shape)


def repeat(x, *sizes):
    """``x`` repeated ``sizes[d]`` times along each dim, as ``torch.Tensor.repeat``
    (``numpy.tile``): ``sizes`` has at least x's number of dims."""
    sizes = _shape_arg("repeat", sizes)
    if len(sizes) < x.ndim:
        raise ValueError(f"repeat: {len(sizes)} repeat counts {sizes} for a tensor of "
                         f"{x.ndim} dimensions; expected at least {x.ndim}")
    if any(s < 0 for s in sizes):
        raise ValueError(f"repeat: repeat counts must be non-negative, got {sizes}")
    return Repeat(sizes)(x)


def gather(input, dim, index):
    """``out[i][j] = input[index[i][j]][j]`` (dim 0) and so on, as ``torch.gather``:
    ``index`` (integer, same number of dims as input, no larger than input outside
    ``dim``) gives the output's shape. The gradient scatter-adds back, so an index
    used twice gets both gradients."""
    x = as_tensor(input)
    idx = as_array(index)
    xp = backend.get_array_module(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"gather: index must be an integer tensor, got dtype {idx.dtype}")
    dim = normalize_dim("gather", dim, x.ndim)
    if idx.ndim != max(x.ndim, 1) and not (x.ndim == 0 and idx.ndim == 0):
        raise ValueError(f"gather: index {tuple(idx.shape)} must have as many dims as the "
                         f"input {tuple(x.shape)}")
    lo, hi = (int(idx.min()), int(idx.max())) if idx.size else (None, None)
    if x.ndim == 0:   # a scalar: every index must be 0, and the result has the index's shape
        if idx.size and (lo != 0 or hi != 0):
            raise IndexError(f"gather: index {hi or lo} is out of bounds for a 0-d input")
        return getitem(reshape(x, 1), xp.zeros(idx.shape, dtype=np.int64))
    if any(idx.shape[d] > x.shape[d] for d in range(x.ndim) if d != dim):
        raise ValueError(f"gather: index {tuple(idx.shape)} is larger than the input "
                         f"{tuple(x.shape)} outside dim {dim}")
    if idx.size and (lo < 0 or hi >= x.shape[dim]):
        bad = lo if lo < 0 else hi
        raise IndexError(f"gather: index {bad} is out of bounds for dim {dim} of size "
                         f"{x.shape[dim]}")
    key = tuple(idx if d == dim else
                xp.arange(idx.shape[d]).reshape((-1,) + (1,) * (idx.ndim - d - 1))
                for d in range(idx.ndim))
    return getitem(x, key)


def pad(x, pad, mode="constant", value=None):
    """PyTorch's ``F.pad``: ``pad`` lists (before, after) pairs from the last dim back;
    the new elements are ``value`` (None means 0, as in PyTorch)."""
    if value is None:
        value = 0  # x.dtype.type(None) would be NaN
    if mode != "constant":
        raise NotImplementedError(f"pad: mode {mode!r} is not supported; only 'constant'")
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: expected an even number of sizes, at most 2 per dim of a tensor "
                         f"of shape {x.shape}, got {pad}")
    if any(p < 0 for p in pad):
        raise ValueError(f"pad: negative padding {pad} is not supported")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    return Pad(tuple(widths), value)(x)


def one_hot(tensor, num_classes=-1):
    """Class indices (any shape, integer) -> (*shape, num_classes) int64 of 0s and a
    1 at each index, as ``torch.nn.functional.one_hot``; ``num_classes=-1`` means
    the largest index + 1. No gradient (the input is indices)."""
    t = as_array(tensor)
    xp = backend.get_array_module(t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"one_hot: expected a tensor of integer class indices, got dtype "
                        f"{t.dtype}")
    num_classes = operator.index(num_classes)
    if t.size and int(t.min()) < 0:
        raise ValueError(f"one_hot: class values must be non-negative, got {int(t.min())}")
    if num_classes == -1:
        if not t.size:
            raise ValueError("one_hot: cannot infer the number of classes from an empty "
                             "tensor; pass num_classes")
        num_classes = int(t.max()) + 1
    elif num_classes < 0:
        raise ValueError(f"one_hot: num_classes must be -1 or non-negative, got {num_classes}")
    elif t.size and int(t.max()) >= num_classes:
        raise ValueError(f"one_hot: class value {int(t.max())} is not smaller than "
                         f"num_classes={num_classes}")
    return Tensor._wrap((t[..., None] == xp.arange(num_classes)).astype(np.int64))
