"""A restricted unpickler for pickles that hold only NumPy arrays.

A pickle can name any importable callable and call it while loading
(``os.system`` included). :class:`ArrayUnpickler` resolves only the globals
NumPy's array pickling uses; any other name raises ``UnpicklingError`` in
``find_class``, before the stream can call it, so nothing runs.

Even NumPy's own globals are not handed to the stream: its BUILD opcode
calls ``__setstate__`` on whatever object it likes, and ``dtype.__setstate__``
lets a crafted state set a dtype's item size, after which an array built on
it reads and writes past its buffer. So the stream only ever builds inert
stand-ins (:class:`_DtypeSpec`, :class:`_ArraySpec`, ...) whose
``__setstate__`` checks NumPy's documented state layout; :func:`load_arrays`
then makes the real dtypes and arrays from the checked values, copying each
array's bytes after checking their length against its shape and dtype.
(Bytes in a protocol-2 pickle written by Python 3 go through
``_codecs.encode``: that is admitted for latin-1 only.)
"""
from __future__ import annotations

import math
import pickle

import numpy as np

# numeric dtypes only: an object, string, void or datetime array has no place
# in a data file
_NUMERIC_KINDS = "biufc"
_MAX_DEPTH = 100


def _refuse(message):
    raise pickle.UnpicklingError(message)


class _StandIn:
    """What the pickle stream gets instead of a NumPy object. BUILD
    (``__setstate__``) is refused unless a subclass checks its state."""

    __slots__ = ()

    def __setstate__(self, state):
        _refuse(f"refused BUILD on {type(self).__name__}: this pickle is not plain NumPy data")


class _Guarded(_StandIn):
    """An allowed callable as the stream sees it: a plain function or class
    could be given attributes (``__defaults__``...) by BUILD; this refuses it."""

    __slots__ = ("_function",)

    def __init__(self, function):
        object.__setattr__(self, "_function", function)

    def __call__(self, *args):
        return self._function(*args)

    def __repr__(self):
        return f"<allowed {self._function.__name__}>"


def _as_bytes(raw):
    """Array or scalar data as bytes: a Python 2 pickle's str is read as
    latin-1, a protocol-5 in-band buffer arrives as a memoryview."""
    if isinstance(raw, str):
        return raw.encode("latin1")
    if isinstance(raw, memoryview):
        return raw.tobytes()
    return raw


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as protocol 2 uses it for bytes, latin-1 only (other
    codecs, such as zlib_codec, have no place in a data file)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        _refuse(f"refused _codecs.encode with {encoding!r}")
    return text.encode("latin1")


class _NdarrayClass(_StandIn):
    """``numpy.ndarray`` as the class argument of ``_reconstruct``."""

    __slots__ = ()


class _DtypeSpec(_StandIn):
    """``numpy.dtype(spec, align, copy)``, then BUILD with the byte order."""

    __slots__ = ("dtype",)

    def __init__(self, spec, align=False, copy=False):
        if not isinstance(spec, str):
            _refuse(f"refused dtype {spec!r}: expected a type code such as 'f4'")
        try:
            dtype = np.dtype(spec)
        except TypeError:
            dtype = None
        if dtype is None:
            _refuse(f"refused dtype {spec!r}: not a NumPy type code")
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype:
            _refuse(f"refused dtype {spec!r}: only numeric dtypes are allowed in a data pickle")
        self.dtype = dtype

    def __setstate__(self, state):
        # NumPy's layout: (version, byte order, subarray, names, fields,
        # item size, alignment, flags[, metadata]); for a plain numeric dtype
        # all but the byte order are fixed, and must be exactly those.
        expected = self.dtype.__reduce__()[2]
        if (not isinstance(state, tuple) or len(state) not in (8, 9)
                or state[0] not in (3, 4) or state[1] not in ("<", ">", "|", "=")
                or state[2:8] != expected[2:8] or (len(state) == 9 and state[8])):
            _refuse(f"refused the state {state!r} of dtype {self.dtype.str!r}: only a byte "
                    "order may be set on a numeric dtype")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _ArraySpec(_StandIn):
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``, then BUILD
    with (version, shape, dtype, is_fortran, raw bytes)."""

    __slots__ = ("shape", "dtype", "fortran", "raw")

    def __init__(self, cls, shape=(0,), typecode=b"b"):
        if not isinstance(cls, _NdarrayClass):
            _refuse(f"refused _reconstruct of {cls!r}: only numpy.ndarray is allowed")
        self.raw = None

    def __setstate__(self, state):
        if self.raw is not None:
            _refuse("refused a second BUILD on one array")
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            _refuse("refused an array state: expected (version, shape, dtype, is_fortran, data)")
        shape, dtype, fortran, raw = state
        if (not isinstance(shape, tuple)
                or not all(type(n) is int and n >= 0 for n in shape)):
            _refuse(f"refused an array shape {shape!r}: expected a tuple of sizes")
        if not isinstance(dtype, _DtypeSpec):
            _refuse(f"refused an array dtype {dtype!r}")
        raw = _as_bytes(raw)
        if not isinstance(raw, (bytes, bytearray)):
            _refuse("refused an array whose data are not bytes (an object array?)")
        expected = math.prod(shape) * dtype.dtype.itemsize
        if len(raw) != expected:
            _refuse(f"refused an array of shape {shape} and dtype {dtype.dtype.str!r}: its data "
                    f"hold {len(raw)} bytes, expected {expected}")
        self.shape, self.dtype, self.fortran, self.raw = shape, dtype.dtype, bool(fortran), raw

    def build(self):
        if self.raw is None:
            _refuse("refused an array that was never given its data (no BUILD)")
        flat = np.frombuffer(self.raw, dtype=self.dtype)
        # a copy: writable, and owning its memory rather than the pickle's bytes
        return flat.reshape(self.shape, order="F" if self.fortran else "C").copy(order="K")


def _frombuffer(buffer, dtype, shape, order):
    """``numpy._core.numeric._frombuffer``, protocol 5's array constructor."""
    spec = _ArraySpec(_NDARRAY)
    if order not in ("C", "F"):
        _refuse(f"refused an array of order {order!r}")
    spec.__setstate__((shape, dtype, order == "F", buffer))
    return spec


def _empty_bytes(*args):
    """``bytes()``, which protocol 2 writes for b''; nothing else."""
    if args:
        _refuse("refused bytes(...) with arguments")
    return b""


class _ScalarSpec(_StandIn):
    """``numpy.core.multiarray.scalar(dtype, raw bytes)``."""

    __slots__ = ("dtype", "raw")

    def __init__(self, dtype, raw=None):
        if not isinstance(dtype, _DtypeSpec):
            _refuse(f"refused a scalar of dtype {dtype!r}")
        raw = _as_bytes(raw)
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != dtype.dtype.itemsize:
            _refuse(f"refused a {dtype.dtype.str!r} scalar: expected "
                    f"{dtype.dtype.itemsize} bytes of data")
        self.dtype, self.raw = dtype, bytes(raw)

    def build(self):
        # the dtype's byte order may still be set by a BUILD after this call
        return np.frombuffer(self.raw, dtype=self.dtype.dtype)[0]


# Old pickles name numpy.core, NumPy 2's numpy._core: both map to the same
# stand-ins, so numpy.core (deprecated in NumPy 2) is never imported.
_NDARRAY = _NdarrayClass()
ALLOWED = {
    ("_codecs", "encode"): _Guarded(_latin1_encode),
    ("__builtin__", "bytes"): _Guarded(_empty_bytes),
    ("builtins", "bytes"): _Guarded(_empty_bytes),
    ("numpy.core.multiarray", "_reconstruct"): _Guarded(_ArraySpec),
    ("numpy._core.multiarray", "_reconstruct"): _Guarded(_ArraySpec),
    ("numpy.core.numeric", "_frombuffer"): _Guarded(_frombuffer),
    ("numpy._core.numeric", "_frombuffer"): _Guarded(_frombuffer),
    ("numpy.core.multiarray", "scalar"): _Guarded(_ScalarSpec),
    ("numpy._core.multiarray", "scalar"): _Guarded(_ScalarSpec),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Guarded(_DtypeSpec),
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles tuples, lists, dicts, numbers, strings and stand-ins for
    NumPy arrays; refuses every other global. Use :func:`load_arrays`, which
    turns the stand-ins into arrays. Python 2 pickles need ``encoding="latin1"``."""

    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only NumPy array "
                "reconstruction is allowed in this pickle") from None


_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray)


def _materialise(obj):
    """The unpickled structure with each stand-in replaced by its NumPy
    object; shared items stay shared, and cycles or deep nesting are refused."""
    done, active = {}, set()

    def convert(item, depth):
        if isinstance(item, _PLAIN):
            return item
        key = id(item)
        if key in done:
            return done[key]
        if key in active or depth > _MAX_DEPTH:
            _refuse("refused a self-referencing or too deeply nested pickle")
        active.add(key)
        if isinstance(item, (_ArraySpec, _ScalarSpec)):
            result = item.build()
        elif isinstance(item, _DtypeSpec):
            result = item.dtype
        elif isinstance(item, (tuple, list)):
            result = type(item)(convert(x, depth + 1) for x in item)
        elif isinstance(item, dict):
            result = {}
            for k, v in item.items():
                if not isinstance(k, _PLAIN):
                    _refuse(f"refused a dict key of type {type(k).__name__}")
                result[k] = convert(v, depth + 1)
        elif isinstance(item, (set, frozenset)) and all(isinstance(x, _PLAIN) for x in item):
            result = item
        else:
            _refuse(f"refused a {type(item).__name__} in a data pickle")
        active.discard(key)
        done[key] = result
        return result

    return convert(obj, 0)


def load_arrays(file, encoding="latin1"):
    """Load a pickle of NumPy arrays (in tuples, lists and dicts) from an open
    binary file, safely: only numeric arrays, dtypes and scalars are made,
    each array a fresh writable copy. Anything else raises
    ``pickle.UnpicklingError`` (object arrays included)."""
    return _materialise(ArrayUnpickler(file, encoding=encoding).load())
