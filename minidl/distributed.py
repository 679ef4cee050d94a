"""Data-parallel training over MPI: ``mpiexec -n N python train.py``.

Each of the N processes (ranks) holds the whole model and trains on its own
share of every batch; :class:`minidl.nn.parallel.DistributedDataParallel`
averages the gradients after each backward, so every rank takes the same
optimizer step. MPI (through mpi4py; ``pip install 'minidl[distributed]'``
brings mpi4py and MPICH, whose ``mpiexec`` lands in the environment's bin/)
starts the ranks, carries the CPU collectives and hands out NCCL's unique
id; on the GPU the collectives run in NCCL through CuPy.

:func:`init` is lazy and idempotent, and every function here calls it: run
without a launcher, a program sees one process of rank 0 and never imports
mpi4py. Under a launcher with N > 1 it also

* gives each rank the threads of the cores it has: by default every rank
  would start one thread per core of the machine, and N ranks on one machine
  would fight over its cores (2 ranks on 2 cores: a step 2.6-2.9x slower).
  A thread count the user set (``minidl.set_num_threads``,
  ``MINIDL_NUM_THREADS``, ``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``) is kept;
* makes an uncaught exception on any rank abort all of them (``MPI_Abort``)
  instead of leaving the others waiting in a collective for ever; call
  :func:`abort` for a non-zero exit of your own (``sys.exit`` on one rank
  is not seen by the others);
* gives this rank its own stream for dropout and augmentation
  (:func:`minidl.random.rank_generator`), while initialisation and shuffles
  share the seeded default stream;
* selects the GPU ``local rank % GPUs`` when CuPy sees GPUs.

Collectives take a :class:`minidl.Tensor` or a NumPy/CuPy array and work in
place, as PyTorch's ``torch.distributed`` does.
"""
from __future__ import annotations

import collections
import importlib.util
import os
import sys
import time

import numpy as np

from . import backend

# Variables a launcher sets to the number of processes: MPICH and Intel MPI
# (hydra, also under Slurm's PMI), Open MPI, MVAPICH.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_THREAD_VARIABLES = ("MINIDL_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS")

_initialized = False
_comm = None            # mpi4py's COMM_WORLD when N > 1, else None
_rank, _size, _local_rank = 0, 1, 0
_nccl = None            # the NCCL communicator, made on the first GPU collective
_previous_excepthook = None


class ReduceOp:
    """PyTorch's names of the reductions ``all_reduce`` takes."""
    SUM, AVG, MAX, MIN = "sum", "avg", "max", "min"


def launched_size() -> int:
    """The number of processes a launcher started (1 without one)."""
    for var in _SIZE_VARIABLES:
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return 1


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            f"minidl.distributed: this program runs under an MPI launcher "
            f"({launched_size()} processes) but mpi4py cannot be imported ({exc}). "
            "Install it with: pip install 'minidl[distributed]'  (mpi4py and MPICH; "
            "then launch with that environment's mpiexec)") from None
    return MPI


def init() -> None:
    """Join the launcher's processes (no-op without a launcher, or when done).

    PyTorch's ``init_process_group`` for MPI: the rank and the world size
    come from the launcher, so it takes no arguments."""
    global _initialized, _comm, _rank, _size, _local_rank, _previous_excepthook
    if _initialized:
        return
    if launched_size() > 1:
        MPI = _import_mpi()
        comm = MPI.COMM_WORLD
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        _comm, _rank, _size, _local_rank = comm, comm.Get_rank(), comm.Get_size(), node.Get_rank()
        _previous_excepthook = sys.excepthook
        sys.excepthook = _abort_on_exception
        _share_cores(node)
        node.Free()
        from . import random
        random.set_rank(_rank)
        _select_gpu()
    _initialized = True


def is_initialized() -> bool:
    return _initialized


def is_available() -> bool:
    """Whether mpi4py is installed (what runs of several processes need)."""
    return importlib.util.find_spec("mpi4py") is not None


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1."""
    init()
    return _rank


def world_size() -> int:
    """The number of processes (1 without a launcher)."""
    init()
    return _size


def local_rank() -> int:
    """This process's rank among those on its machine."""
    init()
    return _local_rank


def is_main() -> bool:
    """Whether this is rank 0: the process that prints and writes files."""
    return rank() == 0


get_rank, get_world_size = rank, world_size   # PyTorch's spellings


# ------------------------------------------------------------ setting up

def _share_cores(node):
    """Give each rank the threads of its share of the machine's cores.

    A core that k ranks of this machine may run on counts 1/k to each: ranks
    bound to their own cores keep them all, unbound ranks split the machine."""
    if backend._num_threads is not None or any(backend._env_threads(v) for v in _THREAD_VARIABLES):
        return   # the user chose
    try:
        mine = sorted(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux: all cores, shared alike
        mine = list(range(os.cpu_count() or 1))
    users = collections.Counter(c for cores in node.allgather(mine) for c in cores)
    threads = max(1, int(sum(1 / users[c] for c in mine) + 1e-9))
    if "numba" not in sys.modules:   # Numba's pool then starts at this size, not one per core
        os.environ["NUMBA_NUM_THREADS"] = str(threads)
    backend.set_num_threads(threads)


def _select_gpu():
    if importlib.util.find_spec("cupy") is None or not backend.cuda_is_available():
        return
    cupy = backend.cupy_module()
    cupy.cuda.Device(_local_rank % cupy.cuda.runtime.getDeviceCount()).use()


def _abort_on_exception(kind, value, traceback):
    """sys.excepthook under N > 1: report, then end every rank (MPI_Abort)."""
    _previous_excepthook(kind, value, traceback)
    abort(130 if issubclass(kind, KeyboardInterrupt) else 1)


def abort(code: int = 1):
    """End every rank now with exit status ``code`` (one process: ``sys.exit``)."""
    init()
    sys.stdout.flush()
    sys.stderr.flush()
    if _comm is None:
        sys.exit(code)
    # the launcher stops forwarding a rank's output once the abort reaches it: give
    # it a moment to pass on what this rank just wrote (the report of why it ends)
    time.sleep(0.5)
    _comm.Abort(code)
    # MPICH's MPI_Abort returns once it has asked the launcher to end the job;
    # this rank must not go on meanwhile (into a collective with the others)
    os._exit(code)


# ------------------------------------------------------------ collectives

def _array(tensor):
    from .tensor import Tensor
    array = tensor._data if isinstance(tensor, Tensor) else tensor
    if not hasattr(array, "dtype"):
        raise TypeError(f"expected a minidl Tensor or a NumPy/CuPy array, got "
                        f"{type(tensor).__name__}")
    return array


def _check_op(op, array):
    if op not in (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.MAX, ReduceOp.MIN):
        raise ValueError(f"all_reduce: unknown op {op!r}: expected one of ReduceOp.SUM, "
                         "AVG, MAX, MIN ('sum', 'avg', 'max', 'min')")
    if op == ReduceOp.AVG and array.dtype.kind not in "fc":
        raise TypeError(f"all_reduce: ReduceOp.AVG needs a floating dtype, got {array.dtype}")


def all_reduce(tensor, op=ReduceOp.SUM):
    """Reduce ``tensor`` over all ranks, in place: every rank gets the result."""
    array = _array(tensor)
    _check_op(op, array)
    init()
    if _size == 1:
        return tensor
    work = array if array.flags.c_contiguous else array.copy()
    if backend.device_of(work) == "cuda":
        _nccl_all_reduce(_nccl_comm(work), work, ReduceOp.SUM if op == ReduceOp.AVG else op)
    else:
        MPI = _import_mpi()
        reduce = {ReduceOp.SUM: MPI.SUM, ReduceOp.AVG: MPI.SUM, ReduceOp.MAX: MPI.MAX,
                  ReduceOp.MIN: MPI.MIN}[op]
        _comm.Allreduce(MPI.IN_PLACE, work, op=reduce)
    if op == ReduceOp.AVG:
        work /= work.dtype.type(_size)
    if work is not array:
        array[...] = work
    return tensor


def broadcast(tensor, src=0):
    """Copy ``tensor`` of rank ``src`` into ``tensor`` on every rank, in place."""
    array = _array(tensor)
    init()
    if _size == 1:
        return tensor
    work = array if array.flags.c_contiguous else array.copy()
    if backend.device_of(work) == "cuda":
        _nccl_broadcast(_nccl_comm(work), work, src)
    else:
        _comm.Bcast(work, root=src)
    if work is not array:
        array[...] = work
    return tensor


def broadcast_object_list(object_list, src=0):
    """Replace ``object_list``'s items by rank ``src``'s (pickled), in place."""
    init()
    if _size > 1:
        object_list[:] = _comm.bcast(list(object_list), root=src)
    return object_list


def all_gather_object(object_list, obj):
    """Fill ``object_list`` (of world_size() items) with every rank's ``obj``."""
    init()
    gathered = [obj] if _size == 1 else _comm.allgather(obj)
    if len(object_list) != len(gathered):
        raise ValueError(f"all_gather_object: object_list has {len(object_list)} items, "
                         f"expected world_size() = {len(gathered)}")
    object_list[:] = gathered


def barrier():
    """Wait until every rank gets here."""
    init()
    if _size > 1:
        _comm.Barrier()


# ------------------------------------------------------------------ NCCL

_NCCL_TYPES = {np.dtype(np.float16): "NCCL_FLOAT16", np.dtype(np.float32): "NCCL_FLOAT32",
               np.dtype(np.float64): "NCCL_FLOAT64", np.dtype(np.int32): "NCCL_INT32",
               np.dtype(np.int64): "NCCL_INT64", np.dtype(np.uint8): "NCCL_UINT8"}
_NCCL_OPS = {ReduceOp.SUM: "NCCL_SUM", ReduceOp.MAX: "NCCL_MAX", ReduceOp.MIN: "NCCL_MIN"}


def _nccl_module():
    try:
        from cupy.cuda import nccl
    except ImportError:
        nccl = None
    if not getattr(nccl, "available", nccl is not None):
        raise RuntimeError("minidl.distributed: collectives of CUDA tensors run in NCCL, which "
                           "this CuPy cannot load (pip install nvidia-nccl-cu12, or train on the "
                           "CPU)")
    return nccl


def _nccl_comm(array):
    """This world's NCCL communicator: rank 0 makes the unique id, MPI sends it.

    It runs on this rank's GPU (chosen by init()); ``array`` must be there: a
    tensor put on 'cuda' before init() lands on GPU 0 on every rank, and NCCL
    would read it from the wrong GPU."""
    global _nccl
    here = backend.cupy_module().cuda.runtime.getDevice()
    if array.device.id != here:
        raise RuntimeError(f"minidl.distributed: rank {_rank} runs on GPU {here}, but this "
                           f"tensor is on GPU {array.device.id}: call minidl.distributed.init() "
                           "before putting the model or data on 'cuda'")
    if _nccl is None:
        nccl = _nccl_module()
        uid = _comm.bcast(nccl.get_unique_id() if _rank == 0 else None, root=0)
        _nccl = nccl.NcclCommunicator(_size, uid, _rank)
    return _nccl


def _nccl_type(array):
    try:
        return getattr(_nccl_module(), _NCCL_TYPES[np.dtype(array.dtype)])
    except KeyError:
        raise TypeError(f"NCCL collectives take {sorted(str(t) for t in _NCCL_TYPES)}, "
                        f"got {array.dtype}") from None


def _nccl_all_reduce(comm, array, op):
    """Sum (max, min) a contiguous CuPy array over ``comm``'s ranks, in place,
    on the current stream (later work on that stream waits for it)."""
    stream = backend.cupy_module().cuda.get_current_stream().ptr
    comm.allReduce(array.data.ptr, array.data.ptr, array.size, _nccl_type(array),
                   getattr(_nccl_module(), _NCCL_OPS[op]), stream)


def _nccl_broadcast(comm, array, src):
    stream = backend.cupy_module().cuda.get_current_stream().ptr
    comm.bcast(array.data.ptr, array.size, _nccl_type(array), src, stream)
