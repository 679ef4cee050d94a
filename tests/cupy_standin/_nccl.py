"""``cupy.cuda.nccl`` for the stand-in: NCCL's communicator over MPI.

The API is CuPy's, as minidl uses it: ``get_unique_id()``,
``NcclCommunicator(ndev, commId, rank)`` with ``allReduce(sendbuf, recvbuf,
count, datatype, op, stream)`` and ``bcast(buff, count, datatype, root,
stream)`` taking raw device pointers (``a.data.ptr``), the ``NCCL_*``
constants and ``available``. It is as strict as NCCL, and stricter where NCCL
would hang or corrupt memory silently:

* a pointer must come from the ``.data.ptr`` of a live stand-in array on the
  communicator's GPU (the current one when it was made), C-contiguous, with
  ``count`` elements of ``datatype`` inside it from that pointer, and
  ``datatype`` must be that array's dtype (NCCL would reinterpret the bytes);
* a communicator of ``ndev`` ranks is made by ``ndev`` processes together
  (MPI's COMM_WORLD, so ``ndev`` must be its size), each with its own rank,
  the same unique id and its own GPU (NCCL refuses two ranks on one GPU);
* every collective must be called by every rank with the same arguments
  (count, datatype, op, root): NCCL would hang or mix up buffers, the
  stand-in raises on every rank, naming what differed.

With ``ndev == 1`` the collectives are local copies; with more, the bytes
travel over MPI (mpi4py), reduced in rank order.
"""
from __future__ import annotations

import os
import socket
import types
import weakref

import numpy as np

NCCL_UNIQUE_ID_BYTES = 128
# NCCL's enum values (nccl.h), as cupy.cuda.nccl exports them
_TYPES = {"NCCL_INT8": 0, "NCCL_CHAR": 0, "NCCL_UINT8": 1, "NCCL_INT32": 2, "NCCL_INT": 2,
          "NCCL_UINT32": 3, "NCCL_INT64": 4, "NCCL_UINT64": 5, "NCCL_FLOAT16": 6,
          "NCCL_HALF": 6, "NCCL_FLOAT32": 7, "NCCL_FLOAT": 7, "NCCL_FLOAT64": 8,
          "NCCL_DOUBLE": 8}
_DTYPES = {0: np.dtype(np.int8), 1: np.dtype(np.uint8), 2: np.dtype(np.int32),
           3: np.dtype(np.uint32), 4: np.dtype(np.int64), 5: np.dtype(np.uint64),
           6: np.dtype(np.float16), 7: np.dtype(np.float32), 8: np.dtype(np.float64)}
_OPS = {"NCCL_SUM": 0, "NCCL_PROD": 1, "NCCL_MAX": 2, "NCCL_MIN": 3, "NCCL_AVG": 4}
_REDUCE = {0: np.add, 1: np.multiply, 2: np.maximum, 3: np.minimum, 4: np.add}
_OP_NAMES = {v: k for k, v in _OPS.items()}
_TYPE_NAMES = {v: k for k, v in reversed(_TYPES.items())}   # the sized names: NCCL_FLOAT32


class NcclError(RuntimeError):
    """cupy.cuda.nccl.NcclError: what NCCL reports (ncclInvalidArgument...)."""


# ------------------------------------------------------------ device memory

# What ``.data.ptr`` was taken from: pointer -> (the NumPy buffer that owns the
# memory, held weakly, its device, dtype, the bytes from the pointer to the
# array's end or None when the array is not C-contiguous). The owner, not the
# stand-in array, is kept: a view made for ``.data.ptr`` may die at once while
# its memory lives on, as on a GPU. Where arrays start at one address (x and
# x[::2]), the pointer stands for the one whose ``.data`` was taken last.
_memory: dict = {}


def register(array):
    """Record ``array``'s device pointer (called by ``ndarray.data``); returns it."""
    a = array._a
    ptr = a.__array_interface__["data"][0]
    owner = a
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    if not (owner.flags.c_contiguous or owner.flags.f_contiguous):   # as_strided's odd base
        owner = a
    extent = a.nbytes if a.flags.c_contiguous else None
    if len(_memory) > 256:   # forget freed memory
        for p in [p for p, rec in _memory.items() if rec[0]() is None]:
            del _memory[p]
    _memory[ptr] = (weakref.ref(owner), array._d, a.dtype, extent)
    return ptr


def _buffer(what, ptr, count, dtype, device):
    """The ``count`` elements of ``dtype`` at device pointer ``ptr``, as a
    writable NumPy view of the stand-in's memory."""
    if not isinstance(ptr, int) or isinstance(ptr, bool):
        raise TypeError(f"NCCL {what}: expected a device pointer (an int, a.data.ptr), got "
                        f"{type(ptr).__name__}")
    rec = _memory.get(ptr)
    owner = rec[0]() if rec else None
    if owner is None:
        raise NcclError(f"NCCL {what}: {ptr:#x} is not the device pointer of a live array "
                        "(pass a.data.ptr of a cupy.ndarray that is still alive)")
    _, on, array_dtype, extent = rec
    if on != device:
        raise NcclError(f"NCCL {what}: the buffer is on GPU {on}, the communicator on GPU "
                        f"{device}")
    if dtype != array_dtype:
        raise NcclError(f"NCCL {what}: datatype {dtype} for an array of {array_dtype} (NCCL "
                        "would reinterpret its bytes)")
    if extent is None:
        raise NcclError(f"NCCL {what}: the array behind {ptr:#x} is not C-contiguous (NCCL "
                        "reads count elements straight from the pointer)")
    if count * dtype.itemsize > extent:
        raise NcclError(f"NCCL {what}: count {count} of {dtype} is {count * dtype.itemsize} "
                        f"bytes, the array has {extent} from that pointer")
    start = owner.__array_interface__["data"][0]
    flat = owner.reshape(-1, order="A").view(np.uint8)
    return np.ndarray((count,), dtype=dtype, buffer=flat, offset=ptr - start)


# ---------------------------------------------------------------- the API

def get_unique_id():
    """A fresh id (NCCL's 128 bytes, as CuPy's tuple of signed chars)."""
    return tuple(int(b) for b in np.frombuffer(os.urandom(NCCL_UNIQUE_ID_BYTES), np.int8))


def _check_unique_id(comm_id):
    if not (isinstance(comm_id, tuple) and len(comm_id) == NCCL_UNIQUE_ID_BYTES
            and all(isinstance(b, int) and -128 <= b < 128 for b in comm_id)):
        raise TypeError(f"NcclCommunicator: commId must be the tuple of {NCCL_UNIQUE_ID_BYTES} "
                        "bytes get_unique_id() returns")


def _int(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"NCCL: {name} must be an int, got {type(value).__name__}")
    return int(value)


class NcclCommunicator:
    """One rank of an NCCL communicator of ``ndev`` ranks, bound to the
    current GPU. ``ndev > 1``: made by ``ndev`` MPI processes together."""

    def __init__(self, ndev, commId, rank):
        from . import cuda
        ndev, rank = _int("ndev", ndev), _int("rank", rank)
        _check_unique_id(commId)
        if ndev < 1 or not 0 <= rank < ndev:
            raise NcclError(f"ncclInvalidArgument: rank {rank} of a communicator of {ndev}")
        self._ndev, self._rank, self._device = ndev, rank, cuda.runtime.getDevice()
        self._mpi = None
        if ndev > 1:
            self._mpi = _join(ndev, commId, rank, self._device)

    def rank_id(self):
        return self._rank

    def size(self):
        return self._ndev

    def device_id(self):
        return self._device

    def destroy(self):
        if self._mpi is not None:
            self._mpi.Free()
        self._ndev = None

    abort = destroy

    def _check(self, what, stream):
        if self._ndev is None:
            raise NcclError(f"NCCL {what}: the communicator was destroyed")
        from . import Stream
        stream = _int("stream", stream)
        if stream not in Stream._ptrs:
            raise NcclError(f"NCCL {what}: {stream:#x} is not a stream (pass "
                            "cupy.cuda.get_current_stream().ptr)")

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        """``recvbuf[:count] = op over the ranks of sendbuf[:count]``."""
        call = ("allReduce", _int("count", count), _int("datatype", datatype), _int("op", op))
        try:
            self._check("allReduce", stream)
            if datatype not in _DTYPES or op not in _REDUCE:
                raise NcclError(f"ncclInvalidArgument: allReduce datatype {datatype}, op {op}")
            send = _buffer("allReduce sendbuf", sendbuf, count, _DTYPES[datatype], self._device)
            recv = _buffer("allReduce recvbuf", recvbuf, count, _DTYPES[datatype], self._device)
            error = None
        except (NcclError, TypeError) as exc:
            error = exc
        self._agree(call, error)
        if self._ndev == 1:
            recv[...] = send
            return
        everyone = np.empty((self._ndev, send.nbytes), np.uint8)
        self._mpi.Allgather(np.ascontiguousarray(send).view(np.uint8), everyone)
        total = _REDUCE[op].reduce(everyone.view(send.dtype), axis=0)
        if op == _OPS["NCCL_AVG"]:
            total = total / self._ndev if total.dtype.kind == "f" else \
                np.trunc(total / self._ndev).astype(total.dtype)
        recv[...] = total

    def bcast(self, buff, count, datatype, root, stream):
        """``buff[:count] = root's buff[:count]`` on every rank."""
        call = ("bcast", _int("count", count), _int("datatype", datatype), _int("root", root))
        try:
            self._check("bcast", stream)
            if datatype not in _DTYPES or not 0 <= root < self._ndev:
                raise NcclError(f"ncclInvalidArgument: bcast datatype {datatype}, root {root} "
                                f"of {self._ndev} ranks")
            buf = _buffer("bcast buff", buff, count, _DTYPES[datatype], self._device)
            error = None
        except (NcclError, TypeError) as exc:
            error = exc
        self._agree(call, error)
        if self._ndev > 1:
            self._mpi.Bcast(buf.view(np.uint8), root=root)

    def _agree(self, call, error):
        """Every rank learns every rank's call and error before any data moves,
        so a mistake on one rank raises on all instead of leaving them waiting."""
        if self._ndev is None or self._mpi is None:
            if error is not None:
                raise error
            return
        calls = self._mpi.allgather((call, None if error is None else str(error)))
        if error is not None:
            raise error
        for r, (theirs, their_error) in enumerate(calls):
            if their_error is not None:
                raise NcclError(f"NCCL {call[0]}: rank {r} failed: {their_error}")
        if any(theirs != call for theirs, _ in calls):
            raise NcclError("NCCL collectives must match on every rank (NCCL would hang or mix "
                            "up buffers): " + "; ".join(
                                f"rank {r}: {_describe(c)}" for r, (c, _) in enumerate(calls)))


def _describe(call):
    kind, count, datatype, last = call
    name = _TYPE_NAMES.get(datatype, datatype)
    last = f"op={_OP_NAMES.get(last, last)}" if kind == "allReduce" else f"root={last}"
    return f"{kind}(count={count}, {name}, {last})"


def _join(ndev, comm_id, rank, device):
    """Make the MPI side of a communicator of ``ndev`` ranks (collective over
    COMM_WORLD): checks what NCCL's ncclCommInitRank checks, then a
    communicator whose ranks are NCCL's."""
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    if world.Get_size() != ndev:
        raise NcclError(f"NcclCommunicator: a communicator of {ndev} ranks, but the stand-in's "
                        f"NCCL runs over MPI's COMM_WORLD of {world.Get_size()} processes (each "
                        "must take part)")
    everyone = world.allgather((comm_id, rank, socket.gethostname(), device))
    if any(c != comm_id for c, _, _, _ in everyone):
        raise NcclError("NcclCommunicator: the ranks were given different unique ids (rank 0's "
                        "get_unique_id() must reach every rank)")
    ranks = sorted(r for _, r, _, _ in everyone)
    if ranks != list(range(ndev)):
        raise NcclError(f"NcclCommunicator: the ranks given were {ranks}, expected each of "
                        f"0..{ndev - 1} once")
    places = [(host, dev) for _, _, host, dev in everyone]
    if len(set(places)) != ndev:
        raise NcclError("ncclInvalidUsage: Duplicate GPU detected: two ranks on one GPU "
                        f"(host, GPU of each process: {places})")
    return world.Split(0, rank)


def module():
    """The ``cupy.cuda.nccl`` module object."""
    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.__doc__ = __doc__
    nccl.available = True
    nccl.NCCL_UNIQUE_ID_BYTES = NCCL_UNIQUE_ID_BYTES
    nccl.NcclError = NcclError
    nccl.NcclCommunicator = NcclCommunicator
    nccl.get_unique_id = get_unique_id
    nccl.get_version = lambda: 22000
    for name, value in {**_TYPES, **_OPS}.items():
        setattr(nccl, name, value)
    return nccl
