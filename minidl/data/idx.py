"""IDX files, the format of MNIST and Fashion-MNIST.

Layout, all big-endian: two zero bytes, a type code, the number of
dimensions D; then D uint32 sizes; then the values in C order. MNIST images
are ``0x00000803`` (uint8, 3 dimensions), labels ``0x00000801`` (uint8, 1).

Every error is an :class:`IDXError` whose message names the file and says
what is wrong (truncated, wrong magic number, trailing bytes, corrupt gzip).
"""
from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib

import numpy as np

# type code -> big-endian dtype
_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_TYPES = {np.dtype(v).newbyteorder("="): k for k, v in _CODES.items()}
GZIP_MAGIC = b"\x1f\x8b"
MAX_BYTES = 1 << 30   # refuse to inflate a gzip past this (a corrupt or hostile file)


class IDXError(ValueError):
    """A file that is not a valid IDX file (or not a valid gzip of one)."""


def magic_of(dtype, ndim: int) -> int:
    """The magic number for an array of ``dtype`` with ``ndim`` dimensions."""
    dtype = np.dtype(dtype).newbyteorder("=")
    if dtype not in _TYPES:
        raise TypeError(f"IDX has no type code for dtype {dtype}; "
                        f"it stores {sorted(str(t) for t in _TYPES)}")
    if not 0 < ndim < 256:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {ndim}")
    return (_TYPES[dtype] << 8) | ndim


def describe_magic(magic: int) -> str:
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    kind = np.dtype(_CODES[code]).name if code in _CODES else f"unknown type 0x{code:02x}"
    return f"0x{magic:08x} ({kind}, {ndim} dimensions)"


def gunzip(data: bytes, name: str, max_bytes: int = MAX_BYTES) -> bytes:
    """Inflate gzip ``data``; errors name the file and say what is wrong."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            raw = f.read(max_bytes + 1)
    except EOFError:
        raise IDXError(f"{name}: truncated gzip file ({len(data)} bytes): "
                       "the compressed stream ends early") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise IDXError(f"{name}: corrupt gzip file: {exc}") from None
    if len(raw) > max_bytes:
        raise IDXError(f"{name}: gzip inflates past {max_bytes} bytes; refused")
    return raw


def parse_idx(data, name: str = "<bytes>", magic: int | None = None) -> np.ndarray:
    """The array stored in the IDX bytes ``data`` (native byte order).

    ``magic``, when given, is the magic number the file must have. A uint8
    result is a view of ``data`` (writable when ``data`` is a bytearray).
    """
    size = len(data)
    if size < 4:
        raise IDXError(f"{name}: truncated: {size} bytes, an IDX header has at least 4")
    found = int.from_bytes(data[:4], "big")
    if data[0] or data[1] or data[2] not in _CODES or data[3] == 0:
        raise IDXError(f"{name}: wrong magic number 0x{found:08x}: not an IDX file "
                       "(one starts with two zero bytes, a type code 0x08-0x0e "
                       "and the number of dimensions)")
    if magic is not None and found != magic:
        raise IDXError(f"{name}: wrong magic number {describe_magic(found)}, "
                       f"expected {describe_magic(magic)}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if size < header:
        raise IDXError(f"{name}: truncated: {size} bytes, the header of a "
                       f"{ndim}-dimensional IDX file has {header}")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    dtype = np.dtype(_CODES[data[2]])
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if size != expected:
        what = "truncated" if size < expected else "trailing bytes"
        raise IDXError(f"{name}: {what}: {size} bytes, but the header says "
                       f"{'x'.join(map(str, dims))} {dtype.name} values, "
                       f"which take {expected} bytes")
    array = np.frombuffer(data, dtype, count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def idx_header(dtype, shape) -> bytes:
    return struct.pack(f">I{len(shape)}I", magic_of(dtype, len(shape)), *shape)


def to_idx_bytes(array) -> bytes:
    """The IDX encoding of ``array`` (uncompressed)."""
    array = np.asarray(array)
    big = array.astype(array.dtype.newbyteorder(">"), copy=False)
    return idx_header(array.dtype, array.shape) + np.ascontiguousarray(big).tobytes()


def read_idx(path, magic: int | None = None) -> np.ndarray:
    """Read an IDX file, gzipped (detected by its first bytes) or not."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == GZIP_MAGIC:
        data = gunzip(data, path)
    return parse_idx(bytearray(data), path, magic)


def write_idx(path, array, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file, gzipped when ``compress`` (default: the
    name ends in ``.gz``). The file appears only once complete."""
    from .files import atomic_write_bytes
    path = os.fspath(path)
    data = to_idx_bytes(array)
    if compress if compress is not None else path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(path, data)
