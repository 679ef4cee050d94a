"""Safe checkpoints: ``save(obj, path)`` / ``load(path)`` in the safetensors format.

No pickle: a file holds only arrays and JSON, so loading a checkpoint can
never run code, and other frameworks can read it (``safetensors.torch.
load_file`` gives a PyTorch state dict).

Layout. ``obj`` may nest dicts, lists and tuples of tensors/arrays and
JSON values (numbers, strings, bools, None); dict keys may be strings or
ints (an optimizer's state is keyed by parameter index). Every array is
stored as one safetensors tensor; its key is the path of names to it
joined by '.' (``model.fc1.weight``, ``optimizer.state.0.momentum_buffer``),
so a plain state dict is stored under its own names and loads in PyTorch
as it is. The structure itself (where each array goes, and every
non-array value) is JSON in the header's metadata, under ``minidl``.

Writing is atomic: a temporary file in the same directory, flushed and
fsync'd, then ``os.replace``, so a crash never leaves half a checkpoint.
A truncated or foreign file raises :class:`CheckpointError` naming it.
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import backend
from .fileio import atomic_write_bytes
from .tensor import Tensor, raw

FORMAT = "minidl.checkpoint/1"

# The safetensors dtypes NumPy can hold (what safetensors.numpy reads). Others,
# such as BF16 or F8_E4M3 from PyTorch, have no NumPy equivalent.
NUMPY_DTYPES = ("BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32",
                "F64", "C64")


class CheckpointError(ValueError):
    """The file is not a readable minidl/safetensors checkpoint."""


def _is_array(v):
    return isinstance(v, np.ndarray) or (backend.cupy_module() is not None and
                                         isinstance(v, backend.cupy_module().ndarray))


def _encode(obj, path, tensors):
    """JSON skeleton of ``obj``; arrays go to ``tensors`` under their dotted path."""
    if isinstance(obj, Tensor) or _is_array(obj):
        array = backend.as_numpy(raw(obj))
        key = ".".join(path) if path else "tensor"
        if key in tensors:
            raise ValueError(f"save: two arrays would be stored under the key {key!r}")
        tensors[key] = np.ascontiguousarray(array)
        node = {"__tensor__": key, "kind": "tensor" if isinstance(obj, Tensor) else "ndarray"}
        if array.ndim == 0:   # safetensors' NumPy API stores a 0-d array as shape (1,)
            node["shape"] = []
        return node
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "__tensor__" not in obj:
            return {"__dict__": {k: _encode(v, path + [k], tensors) for k, v in obj.items()}}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, bool)) and k is not None:
                raise TypeError(f"save: dict keys must be str or int, got {type(k).__name__} at "
                                f"{'.'.join(path) or '<root>'}")
            items.append([k, _encode(v, path + [str(k)], tensors)])
        return {"__items__": items}
    if isinstance(obj, (list, tuple)):
        enc = [_encode(v, path + [str(i)], tensors) for i, v in enumerate(obj)]
        return {"__tuple__": enc} if isinstance(obj, tuple) else {"__list__": enc}
    if isinstance(obj, np.generic):
        return {"__value__": obj.item()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"__value__": obj}
    raise TypeError(f"save: cannot store a {type(obj).__name__} at "
                    f"{'.'.join(path) or '<root>'}: only tensors, arrays, dicts, lists, tuples, "
                    "numbers, strings, bools and None (no pickle)")


def _decode(node, tensors, path):
    if not isinstance(node, dict):
        raise CheckpointError(f"load: {path} has corrupt minidl metadata: expected an entry "
                              f"(a JSON object), found {type(node).__name__} {node!r:.80}")
    if "__tensor__" in node:
        array = tensors[node["__tensor__"]]
        if "shape" in node:
            array = array.reshape(node["shape"])
        return Tensor._wrap(array) if node.get("kind") == "tensor" else array
    if "__dict__" in node:
        return {k: _decode(v, tensors, path) for k, v in node["__dict__"].items()}
    if "__items__" in node:
        return {k: _decode(v, tensors, path) for k, v in node["__items__"]}
    if "__list__" in node:
        return [_decode(v, tensors, path) for v in node["__list__"]]
    if "__tuple__" in node:
        return tuple(_decode(v, tensors, path) for v in node["__tuple__"])
    if "__value__" in node:
        return node["__value__"]
    raise CheckpointError(f"load: {path} has an unknown entry in its minidl metadata: {node!r}")


def save(obj, path):
    """Write ``obj`` (a state dict, or nested dicts of them and metadata) to ``path``
    in the safetensors format, atomically."""
    from safetensors.numpy import save as st_save
    tensors = {}
    skeleton = _encode(obj, [], tensors)
    metadata = {"format": "pt", "minidl": json.dumps(skeleton), "minidl_format": FORMAT}
    blob = st_save(tensors, metadata=metadata)
    path = os.fspath(path)
    atomic_write_bytes(path, blob)
    return path


def load(path, map_location=None, weights_only=True):
    """Read a checkpoint written by :func:`save` (arrays come back as Tensors
    where Tensors were saved). A safetensors file from elsewhere loads as a
    flat dict name -> Tensor. Raises :class:`CheckpointError` naming the file
    when it is truncated, corrupt or not safetensors, or holds a dtype NumPy
    cannot represent (BF16, FP8).

    PyTorch's arguments: ``map_location`` puts every tensor on a device: a
    device ('cpu', 'cuda'), a dict from saved to wanted device (all tensors are
    read onto the CPU, so its values are used), or a function ``f(tensor,
    'cpu')`` returning the tensor to use; ``weights_only`` is accepted and always
    true in effect (a minidl file holds data only, never code to run)."""
    if map_location is not None:
        state = load(path)
        if callable(map_location):
            return _map_tensors(state, lambda t: map_location(t, "cpu"))
        if isinstance(map_location, dict):
            targets = {backend.parse_device(v) for v in map_location.values()}
            if len(targets) != 1:
                raise ValueError(f"load: map_location {map_location!r} maps to several "
                                 "devices; give one")
            map_location = targets.pop()
        device = backend.parse_device(map_location)
        return _map_tensors(state, lambda t: t.to(device))
    from safetensors.numpy import load as st_load
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()
    header = _read_header(blob, path)
    _check_dtypes(header, path)
    try:
        tensors = _load_bfloat16(blob, header) if _has_bfloat16(header) else st_load(blob)
    except Exception as exc:
        raise CheckpointError(f"load: {path} is not a valid safetensors file (truncated or "
                              f"corrupt?): {exc}") from None
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"load: {path} is damaged: its __metadata__ is not a JSON object")
    if "minidl" not in metadata:
        return {k: Tensor._wrap(v) for k, v in tensors.items()}
    try:
        skeleton = json.loads(metadata["minidl"])
    except (json.JSONDecodeError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"load: {path} has corrupt minidl metadata: "
                              f"{_describe(exc)}") from None
    try:
        return _decode(skeleton, tensors, path)
    except KeyError as exc:
        raise CheckpointError(f"load: {path} names a tensor {exc} that it does not "
                              "contain") from None
    except (AttributeError, TypeError, ValueError, RecursionError) as exc:
        # tampered metadata: entries of the wrong type, shapes that do not fit the
        # stored tensor, nesting deeper than Python's stack
        raise CheckpointError(f"load: {path} has corrupt minidl metadata (the structure "
                              f"does not describe the stored tensors): {_describe(exc)}") from None


def _describe(exc):
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return f"{type(exc).__name__}: {exc}"


def _map_tensors(obj, fn):
    """``obj`` (a loaded state: dicts, lists, tuples, tensors) with ``fn`` applied to
    every tensor."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _has_bfloat16(header):
    return any(name != "__metadata__" and entry["dtype"] == "BF16"
               for name, entry in header.items())


def _load_bfloat16(blob, header):
    """The tensors of a file holding BF16 ones (safetensors' NumPy reader has no
    bfloat16; ml_dtypes gives NumPy one): each read at its checked offsets."""
    from .precision import check_bfloat16
    from safetensors.numpy import _TYPES
    types = dict(_TYPES, BF16=check_bfloat16())
    start = 8 + int.from_bytes(blob[:8], "little")
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = np.dtype(types[entry["dtype"]]).newbyteorder("<")
        array = np.frombuffer(blob, dtype, (end - begin) // dtype.itemsize, start + begin)
        tensors[name] = array.reshape(entry["shape"]).copy()
    return tensors


def _check_dtypes(header, path):
    """Refuse, by name, a well-formed file whose tensors NumPy cannot represent
    (``header`` as :func:`_read_header` checked it: each entry names a dtype);
    BF16 is read when ml_dtypes is installed."""
    from .precision import bfloat16
    for name, entry in header.items():
        if name == "__metadata__" or (entry["dtype"] == "BF16" and bfloat16 is not None):
            continue
        if entry["dtype"] not in NUMPY_DTYPES:
            raise CheckpointError(
                f"load: {path}: tensor {name!r} has dtype {entry['dtype']}, which minidl (NumPy) "
                f"does not support; supported dtypes are {', '.join(NUMPY_DTYPES)}. Convert it "
                "before saving (in PyTorch, e.g. tensor.float() for BF16)")


def _read_header(blob, path):
    """The JSON header, checked before anything is parsed further."""
    if len(blob) < 8:
        raise CheckpointError(f"load: {path} is not a safetensors checkpoint ({len(blob)} bytes: "
                              "empty or truncated)")
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or 8 + n > len(blob):
        raise CheckpointError(f"load: {path} is not a safetensors checkpoint (its header claims "
                              f"{n} bytes but the file has {len(blob)}: truncated, or another "
                              "format such as a pickle/.pt file)")
    try:
        header = json.loads(blob[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"load: {path} is not a safetensors checkpoint (its header is not "
                              "JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"load: {path} is not a safetensors checkpoint")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]
                and isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)
                and isinstance(entry.get("dtype"), str)):
            raise CheckpointError(f"load: {path} is damaged: the header's entry for {key!r} is "
                                  f"not a dtype, shape and (begin, end) data offsets: {entry!r}")
        end = max(end, offsets[1])
    if 8 + n + end > len(blob):
        raise CheckpointError(f"load: {path} is truncated: the header describes "
                              f"{8 + n + end} bytes, the file has {len(blob)}")
    return header
