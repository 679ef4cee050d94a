"""Matrix products on Numba's threads: each thread calls NumPy's OpenBLAS, single-threaded.

Why not let OpenBLAS thread its own GEMMs: a training step of the small models
here alternates a dozen GEMMs with a dozen Numba kernels, and on a virtual
machine waking a sleeping worker costs from 15 us to several milliseconds
(the idle virtual CPU must be rescheduled by the host). With two pools, each
GEMM woke OpenBLAS's worker and each kernel Numba's: the GEMMs of the
model's attention MLP took 2-3x their one-thread time at the median, and
20-90x in the slowest tenth of calls. With one pool, whose workers spin
briefly between kernels (``GOMP_SPINCOUNT``, see :mod:`.cpu_numba`), a
product is one more parallel region: its output is cut into one block per
thread (or its long inner dimension, for a tiny output, into partial
products summed after) and every block is one single-threaded
``cblas_?gemm`` call, so NumPy's OpenBLAS is held to one thread (see
:func:`limit_blas_threads`).

The cblas function is NumPy's own (its OpenBLAS, ILP64 or not, found by
threadpoolctl) and reaches the compiled code as an external symbol, so the
kernels stay in Numba's on-disk cache. Without it (NumPy on MKL or
Accelerate, an unknown symbol) :func:`available` is False and minidl keeps
NumPy's matmul with BLAS's own threads.

Shapes: ``matmul(a, b)`` for a (M, K), b (K, N) -> (M, N); each operand may be
a transpose (a unit stride on either axis), anything else is copied first.
"""
from __future__ import annotations

import ctypes
import math
import os

import numpy as np
from llvmlite import binding as llvm_binding
from numba import get_num_threads, njit, prange, types

_CACHE = os.environ.get("MINIDL_NUMBA_CACHE", "1") != "0"

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

# Below this many multiply-adds a product runs in the calling thread: a
# parallel region's dispatch (~3-15 us) would cost more than it saves.
_PARALLEL_MIN_MACS = 1 << 18
# A tiny output over a long inner dimension (the first conv's weight gradient:
# 10 x 8 over 50,176) is summed from partial products over slices this long:
# OpenBLAS then multiplies each slice with its unpacked small-matrix kernel
# instead of copying ("packing") the long operands first (2.5x faster).
_SLICE = 6272
_TINY_OUTPUT = 4096
# A tiny first operand against a long second one (the first conv's forward:
# 8 x 10 times 10 x 50,176) is cut into column blocks at most this wide, for
# the same reason.
_TINY_A = 256


def _find_openblas():
    """(sgemm address, dgemm address, integer type, get/set thread-count
    functions) of NumPy's OpenBLAS, or None."""
    try:
        import threadpoolctl
        infos = [i for i in threadpoolctl.threadpool_info()
                 if i.get("internal_api") == "openblas"]
    except Exception:   # threadpoolctl missing or failing: keep NumPy's matmul
        return None
    numpy_libs = os.path.dirname(os.path.abspath(np.__file__)) + ".libs"
    ours = [i for i in infos if os.path.dirname(i["filepath"]) == numpy_libs] or \
        (infos if len(infos) == 1 else [])
    if not ours:
        return None
    try:
        lib = ctypes.CDLL(ours[0]["filepath"])
    except OSError:
        return None
    for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
        try:
            sgemm = getattr(lib, f"{prefix}cblas_sgemm{suffix}")
            dgemm = getattr(lib, f"{prefix}cblas_dgemm{suffix}")
            get_threads = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
            set_threads = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}")
        except AttributeError:
            continue
        int64 = bool(suffix)
        if not suffix:   # plain names: ILP64 only if the build says so
            try:
                config = lib.openblas_get_config
            except AttributeError:
                return None
            config.restype = ctypes.c_char_p
            int64 = b"USE64BITINT" in config()
        get_threads.restype, set_threads.argtypes = ctypes.c_int, [ctypes.c_int]
        return (ctypes.cast(sgemm, ctypes.c_void_p).value,
                ctypes.cast(dgemm, ctypes.c_void_p).value,
                types.int64 if int64 else types.int32, get_threads, set_threads)
    return None


_OPENBLAS = _find_openblas()


def available():
    """Whether the threaded products can run (NumPy's OpenBLAS was found)."""
    return _OPENBLAS is not None


def _external(name, address, scalar, integer):
    """``name`` bound to ``address`` for the JIT linker; pointers pass as uintp
    (the same register as a pointer), so arrays' ``ctypes.data`` go straight in."""
    llvm_binding.add_symbol(name, address)
    enum, ptr = types.int32, types.uintp
    return types.ExternalFunction(name, types.void(
        enum, enum, enum, integer, integer, integer, scalar, ptr, integer, ptr, integer,
        scalar, ptr, integer))


# The on-disk cache keys on this file, not on the library: it holds the ILP64
# build only (NumPy's wheels), and a 32-bit one is compiled afresh each process.
_CACHE = _CACHE and _OPENBLAS is not None and _OPENBLAS[2] == types.int64
# Sizes and leading dimensions must fit cblas's integers.
_INT_LIMIT = 2**62 if _OPENBLAS is None or _OPENBLAS[2] == types.int64 else 2**31

if _OPENBLAS is not None:
    _sgemm = _external("minidl_cblas_sgemm", _OPENBLAS[0], types.float32, _OPENBLAS[2])
    _dgemm = _external("minidl_cblas_dgemm", _OPENBLAS[1], types.float64, _OPENBLAS[2])
else:   # never called: available() is False; the names keep the kernels compilable
    _sgemm = _dgemm = None


@njit(inline="always", cache=_CACHE)
def _gemm(c, ta, tb, m, n, k, pa, lda, pb, ldb, pc, ldc, beta):
    """One single-threaded C (m, n) = op(A) op(B) + beta C at raw addresses
    (row-major; ``c`` only tells the dtype)."""
    if c.itemsize == 4:
        _sgemm(ROW_MAJOR, ta, tb, m, n, k, np.float32(1), pa, lda, pb, ldb, np.float32(beta),
               pc, ldc)
    else:
        _dgemm(ROW_MAJOR, ta, tb, m, n, k, 1.0, pa, lda, pb, ldb, beta, pc, ldc)


@njit(parallel=True, cache=_CACHE)
def _gemm_blocks(a, b, c, ta, tb, lda, ldb, ldc, M, N, K, tasks, by_rows):
    """C in ``tasks`` blocks of rows (``by_rows``) or of columns, one call each.
    The element offset of a block's start in A (rows) or B (columns) depends
    on whether that operand is stored transposed."""
    size = a.itemsize
    for t in prange(tasks):
        if by_rows:
            r0, r1 = t * M // tasks, (t + 1) * M // tasks
            if r1 > r0:
                off_a = r0 * lda if ta == NO_TRANS else r0
                _gemm(c, ta, tb, r1 - r0, N, K, a.ctypes.data + size * off_a, lda,
                      b.ctypes.data, ldb, c.ctypes.data + size * r0 * ldc, ldc, 0.0)
        else:
            c0, c1 = t * N // tasks, (t + 1) * N // tasks
            if c1 > c0:
                off_b = c0 if tb == NO_TRANS else c0 * ldb
                _gemm(c, ta, tb, M, c1 - c0, K, a.ctypes.data, lda,
                      b.ctypes.data + size * off_b, ldb, c.ctypes.data + size * c0, ldc, 0.0)


@njit(parallel=True, cache=_CACHE)
def _gemm_partials(a, b, parts, ta, tb, lda, ldb, M, N, K):
    """parts[t] (M, N) = the product over the t-th slice of the inner dimension."""
    size, tasks = a.itemsize, parts.shape[0]
    for t in prange(tasks):
        k0, k1 = t * K // tasks, (t + 1) * K // tasks
        off_a = k0 if ta == NO_TRANS else k0 * lda
        off_b = k0 * ldb if tb == NO_TRANS else k0
        _gemm(parts, ta, tb, M, N, k1 - k0, a.ctypes.data + size * off_a, lda,
              b.ctypes.data + size * off_b, ldb, parts[t].ctypes.data, N, 0.0)


def _operand(x):
    """``(x, transposed, leading dimension)`` for cblas: x itself when either
    axis has a unit stride and the other a valid one (a row-major matrix or
    the transpose of one), else a C-contiguous copy."""
    item = x.itemsize
    (s0, s1), (rows, cols) = x.strides, x.shape
    if s1 == item and (rows == 1 or (s0 % item == 0 and s0 >= cols * item)):
        return x, NO_TRANS, s0 // item if rows > 1 else cols
    if s0 == item and (cols == 1 or (s1 % item == 0 and s1 >= rows * item)):
        return x, TRANS, s1 // item if cols > 1 else rows
    return np.ascontiguousarray(x), NO_TRANS, cols


def matmul(a, b, out=None):
    """``a @ b`` for 2-D a (M, K), b (K, N) of one float dtype, split over
    Numba's threads, into ``out`` (M, N) if given (rows of unit stride).
    NumPy's matmul does anything else (other shapes or dtypes, byte-swapped,
    misaligned, empty or overlapping operands, a read-only ``out``, small
    products, no cblas, or BLAS threads raised by the user since: concurrent
    calls would then share its pool)."""
    if (_OPENBLAS is None or type(a) is not np.ndarray or type(b) is not np.ndarray
            or a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or not a.dtype.isnative
            or a.dtype.type not in (np.float32, np.float64) or a.shape[1] != b.shape[0]):
        return np.matmul(a, b, out=out)
    (M, K), N = a.shape, b.shape[1]
    threads = get_num_threads()
    if (threads == 1 or M * N * K < _PARALLEL_MIN_MACS or 0 in (M, N, K)
            or not (a.flags.aligned and b.flags.aligned)
            or (out is not None and (out.shape != (M, N) or out.dtype != a.dtype
                                     or not (out.flags.writeable and out.flags.aligned)
                                     or out.strides[1] != out.itemsize
                                     or out.strides[0] < N * out.itemsize
                                     or out.strides[0] % out.itemsize
                                     or np.may_share_memory(out, a)
                                     or np.may_share_memory(out, b)))
            or _OPENBLAS[3]() != 1):
        return np.matmul(a, b, out=out)
    c = np.empty((M, N), dtype=a.dtype) if out is None else out
    ldc = c.strides[0] // c.itemsize
    a, ta, lda = _operand(a)
    b, tb, ldb = _operand(b)
    if max(M, N, K, lda, ldb, ldc) >= _INT_LIMIT:   # a 32-bit cblas cannot take them
        return np.matmul(a, b, out=out)
    if M * N <= _TINY_OUTPUT and K >= 2 * _SLICE:
        parts = np.empty((max(threads, K // _SLICE), M, N), dtype=c.dtype)
        _gemm_partials(a, b, parts, ta, tb, lda, ldb, M, N, K)
        parts.sum(axis=0, out=c)
    elif N >= M:
        tasks = max(threads, -(-N // _SLICE)) if M * K <= _TINY_A else threads
        _gemm_blocks(a, b, c, ta, tb, lda, ldb, ldc, M, N, K, min(tasks, N), False)
    else:
        _gemm_blocks(a, b, c, ta, tb, lda, ldb, ldc, M, N, K, min(threads, M), True)
    return c


def blocks(x, lead):
    """``(x, address, offsets, transposed, leading dimension)``: the (..., R, C) array x
    broadcast to the leading shape ``lead`` as per-block element offsets (int64, one
    per block in C order) for cblas, without a copy when one of its last two dims has
    a unit stride and every stride is a non-negative multiple of the item size, else a
    C-contiguous copy of the broadcast array. Keep the returned x alive while the
    address is used."""
    item = x.itemsize
    x = np.broadcast_to(x, tuple(lead) + x.shape[-2:])
    (rows, cols), st = x.shape[-2:], x.strides
    fine = all(s >= 0 and s % item == 0 for s in st)
    if fine and (st[-1] == item or cols == 1) and (rows == 1 or st[-2] >= cols * item):
        trans, ld = NO_TRANS, st[-2] // item if rows > 1 else cols
    elif fine and (st[-2] == item or rows == 1) and (cols == 1 or st[-1] >= rows * item):
        trans, ld = TRANS, st[-1] // item if cols > 1 else rows
    else:
        x = np.ascontiguousarray(x)
        st, trans, ld = x.strides, NO_TRANS, cols
    offsets = np.zeros(lead, dtype=np.int64)
    for axis, n in enumerate(lead):
        shape = [1] * len(lead)
        shape[axis] = n
        offsets = offsets + (np.arange(n, dtype=np.int64) * (st[axis] // item)).reshape(shape)
    return x, x.ctypes.data, offsets.reshape(-1), trans, ld


@njit(parallel=True, cache=_CACHE)
def _gemm_batch(c, pa, aoff, ta, lda, pb, boff, tb, ldb, M, N, K):
    """c[n] (M, N) = A_n B_n for the blocks at pa + aoff[n], pb + boff[n] (elements)."""
    size = c.itemsize
    for n in prange(c.shape[0]):
        _gemm(c, ta, tb, M, N, K, pa + size * aoff[n], lda, pb + size * boff[n], ldb,
              c[n].ctypes.data, N, 0.0)


def batched_matmul(a, b):
    """``a @ b`` for a (..., M, K), b (..., K, N) with at least one of them above 2-D
    (batch dims broadcast): one single-threaded cblas GEMM per product, the products
    split over Numba's threads (each one over them, as :func:`matmul`, when there are
    fewer products than threads). NumPy's matmul does what cblas cannot (see
    :func:`matmul`)."""
    if (_OPENBLAS is None or type(a) is not np.ndarray or type(b) is not np.ndarray
            or a.ndim < 2 or b.ndim < 2 or a.dtype != b.dtype or not a.dtype.isnative
            or a.dtype.type not in (np.float32, np.float64) or a.shape[-1] != b.shape[-2]
            or _OPENBLAS[3]() != 1):
        return np.matmul(a, b)
    if b.ndim == 2:     # a shared right operand: one 2-D product over all rows of a
        rows = math.prod(a.shape[:-1])     # not -1: NumPy cannot infer it over size 0
        return matmul(a.reshape(rows, a.shape[-1]), b).reshape(a.shape[:-1] + b.shape[-1:])
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    (M, K), N = a.shape[-2:], b.shape[-1]
    batch = math.prod(lead)
    c = np.empty(tuple(lead) + (M, N), dtype=a.dtype)
    if 0 in (M, N, K, batch) or max(M, N, K) >= _INT_LIMIT:
        return np.matmul(a, b, out=c)
    flat = c.reshape(batch, M, N)
    if batch < get_num_threads():
        ab, bb = np.broadcast_to(a, lead + (M, K)), np.broadcast_to(b, lead + (K, N))
        for n, idx in enumerate(np.ndindex(*lead)):
            matmul(ab[idx], bb[idx], out=flat[n])
        return c
    a, pa, aoff, ta, lda = blocks(a, lead)
    b, pb, boff, tb, ldb = blocks(b, lead)
    if max(lda, ldb) >= _INT_LIMIT:
        return np.matmul(a, b, out=c)
    _gemm_batch(flat, pa, aoff, ta, lda, pb, boff, tb, ldb, M, N, K)
    return c


def limit_blas_threads():
    """Hold NumPy's OpenBLAS to one thread (each Numba thread calls it on its
    own); returns whether it did (False without cblas: BLAS keeps its threads)."""
    if _OPENBLAS is None:
        return False
    _OPENBLAS[4](1)
    return True
