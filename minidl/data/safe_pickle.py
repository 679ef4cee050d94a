"""A restricted unpickler for pickles that hold only NumPy arrays.

A pickle can name any importable callable and call it while loading
(``os.system`` included). :class:`ArrayUnpickler` resolves only the globals
NumPy's array pickling uses; any other name raises ``UnpicklingError`` in
``find_class``, before the stream can call it, so nothing runs. (Bytes in a
protocol-2 pickle written by Python 3 go through ``_codecs.encode``: that is
admitted for latin-1 only.)
"""
from __future__ import annotations

import pickle

import numpy as np

try:  # NumPy 2 moved numpy.core to numpy._core; old pickles name the old path.
    from numpy._core import multiarray as _mod
except ImportError:  # NumPy 1.x
    from numpy.core import multiarray as _mod


def _latin1_bytes(text, encoding="latin1"):
    """``_codecs.encode`` as protocol 2 uses it for bytes, latin-1 only (other
    codecs, such as zlib_codec, have no place in a data file)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with {encoding!r}")
    return text.encode("latin1")


# Both numpy.core names resolve to the objects themselves, never by importing
# numpy.core (deprecated in NumPy 2).
ALLOWED = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy.core.multiarray", "_reconstruct"): _mod._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _mod._reconstruct,
    ("numpy.core.multiarray", "scalar"): _mod.scalar,
    ("numpy._core.multiarray", "scalar"): _mod.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles tuples, lists, numbers, strings and NumPy arrays; refuses
    every other global. Python 2 pickles need ``encoding="latin1"``."""

    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only NumPy array "
                "reconstruction is allowed in this pickle") from None


def load_arrays(file, encoding="latin1"):
    """Load a pickle of NumPy arrays from an open binary file, safely.

    Object arrays are refused too (their items could only be plain pickle
    values here, but a data file has no business holding them).
    """
    obj = ArrayUnpickler(file, encoding=encoding).load()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise pickle.UnpicklingError("refused an object array in a data pickle")
    return obj
