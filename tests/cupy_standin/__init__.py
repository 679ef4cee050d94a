"""A strict CuPy stand-in on NumPy, so minidl's GPU path runs where no GPU is.

Installed as ``cupy`` (and ``cupyx``) by ``tests/conftest.py`` only when the
real CuPy is absent (:func:`install`); with real CuPy present, the GPU tests use it.
What it holds minidl to, as real CuPy does:

* its ``ndarray`` refuses implicit conversion to NumPy (``np.asarray(x)``
  raises CuPy's TypeError), and an op mixing a NumPy array with a CuPy one
  raises ``TypeError: Unsupported type <class 'numpy.ndarray'>``;
  ``fill()`` and item assignment refuse a non-scalar NumPy array;
* only names CuPy really has exist, module functions and array methods alike
  (an explicit allow-list; anything else is an AttributeError), and keyword
  arguments CuPy lacks (``where=``, ``initial=``, ``like=``...) are refused;
* ``ElementwiseKernel`` bodies are compiled by the C compiler and run on the
  CPU with bounds-checked raw arrays (:mod:`._kernels`);
* every device -> host transfer (``asnumpy``, ``get``, ``item``, ``tolist``,
  ``bool()``/``float()``/``int()``, ``repr``) is counted, and
  :func:`forbid_transfers` turns them into errors; kernel launches are counted
  (one per ufunc, reduction, copy or custom kernel, roughly CuPy's own count);
* ``cupy.cuda.nccl`` takes only device pointers of live arrays, of the right
  dtype and size, and its communicators of several ranks run over MPI with
  every rank taking part (:mod:`._nccl`). ``CUPY_STANDIN_GPUS`` sets how many
  GPUs it models (default 1); :func:`child_environment` hands the stand-in to
  child processes.

What it cannot show: speed, streams and asynchrony, races between CUDA
threads, cuBLAS/cuRAND numerics (matmul and random draws are NumPy's).
"""
from __future__ import annotations

import builtins as _b
import contextlib
import ctypes
import itertools
import operator
import os
import sys
import types
import weakref

import numpy as _np

from . import _kernels, _nccl

__version__ = "13.0.0-standin"
STANDIN = True

# ------------------------------------------------------------ counters

counters = {"d2h": 0, "h2d": 0, "launches": 0}
_forbid = [0]


def reset_counters():
    for k in counters:
        counters[k] = 0


class HostTransferError(RuntimeError):
    """A device -> host transfer happened inside :func:`forbid_transfers`."""


@contextlib.contextmanager
def forbid_transfers():
    """Inside, any device -> host transfer raises HostTransferError."""
    _forbid[0] += 1
    try:
        yield
    finally:
        _forbid[0] -= 1


def _d2h(what):
    counters["d2h"] += 1
    if _forbid[0]:
        raise HostTransferError(f"device -> host transfer ({what}) where none is allowed")


def _launch(n=1):
    counters["launches"] += n


# ------------------------------------------------------------- ndarray

_NO_KWARGS = frozenset({"where", "initial", "like", "device", "subok", "copy"})
_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
             "construct a NumPy array explicitly.")


def _unsupported(x):
    return TypeError(f"Unsupported type {type(x)}")


def _dev(x):
    """A raw NumPy array from a stand-in argument; NumPy arrays are refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray):
        raise _unsupported(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_dev(v) for v in x)
    return x


def _operand(x):
    """An operand of a ufunc or operator: CuPy takes its arrays and scalars,
    not NumPy arrays, lists or tuples."""
    if isinstance(x, (_np.ndarray, list, tuple)):
        raise _unsupported(x)
    return _dev(x)


def _wrap(r):
    if isinstance(r, _np.ndarray):
        return ndarray._of(r)
    if isinstance(r, _np.generic):
        return ndarray._of(_np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


def _check_kwargs(name, kwargs, allowed=()):
    bad = [k for k in kwargs if k in _NO_KWARGS and k not in allowed]
    if bad:
        raise TypeError(f"{name}() got an unexpected keyword argument {bad[0]!r} "
                        "(CuPy does not take it)")


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata

    def __getitem__(self, key):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[key]


class ndarray:
    """CuPy's ndarray, held as a NumPy array in ``_a`` (the "device memory")."""

    __slots__ = ("_a", "_d", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("stand-in: ndarray(memptr=, strides=) is not modelled")
        self._a = _np.empty(shape, dtype=dtype, order=order)
        self._d = _current[0]

    @classmethod
    def _of(cls, a):
        self = object.__new__(cls)
        self._a, self._d = a, _current[0]   # made on the current device
        return self

    # attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: ndarray._of(self._a.T))
    base = property(lambda self: None if self._a.base is None else ndarray._of(self._a.base))
    device = property(lambda self: cuda.Device(self._d))
    data = property(lambda self: MemoryPointer(self))

    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or ufunc.__name__ not in _UFUNCS:
            return NotImplemented
        return globals()[ufunc.__name__](*inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        mine = globals().get(func.__name__)
        if func.__name__ not in _FUNCTIONS or mine is None:
            return NotImplemented
        return mine(*args, **kwargs)

    # transfers
    def get(self, stream=None, order="C", out=None, blocking=True):
        _d2h("ndarray.get()")
        return _np.array(self._a, order=order)

    def set(self, arr, stream=None):
        if not isinstance(arr, _np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray (got {type(arr)})")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        counters["h2d"] += 1
        self._a[...] = arr

    def item(self):
        _d2h("ndarray.item()")
        return self._a.item()

    def tolist(self):
        _d2h("ndarray.tolist()")
        return self._a.tolist()

    def __format__(self, spec):
        _d2h("format(ndarray)")
        return format(self._a, spec)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[k] for k in range(len(self)))

    # indexing
    def __getitem__(self, key):
        _check_mask(key)
        r = self._a[_index(key)]
        if not _np.may_share_memory(r, self._a):   # advanced indexing: a gather kernel
            _launch()
        return _wrap(r)

    def __setitem__(self, key, value):
        if isinstance(value, _np.ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        _check_mask(key)
        _launch()
        self._a[_index(key)] = _dev(value)

    def fill(self, value):
        if isinstance(value, _np.ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        if isinstance(value, ndarray):
            raise TypeError(f"Unsupported type {type(value)}")
        _launch()
        self._a.fill(value)

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and _np.dtype(dtype) == self.dtype:
            return self
        _launch()
        return ndarray._of(self._a.astype(dtype, order=order,
                                          casting=casting or "unsafe"))

    def copy(self, order="C"):
        _launch()
        return ndarray._of(self._a.copy(order=order))

    def view(self, dtype=None):
        return ndarray._of(self._a.view() if dtype is None else self._a.view(dtype))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):   # pickling copies through the host, as CuPy's
        _d2h("pickle(ndarray)")
        return (array, (self._a.copy(),))


def _reader(name, convert):
    """A method that reads the value back to the host (a counted transfer)."""
    def method(self):
        _d2h(f"{name}(ndarray)")
        return convert(self._a)
    method.__name__ = f"__{name}__"
    return method


for _name, _convert in (("bool", bool), ("float", float), ("int", int), ("complex", complex),
                        ("index", operator.index), ("repr", repr), ("str", str)):
    setattr(ndarray, f"__{_name}__", _reader(_name, _convert))


def _check_mask(key):
    """CuPy's boolean-mask indexing, read or write, counts the mask's true
    elements on the host (``int(mask_scanned[-1])`` in _prepare_mask_indexing_single):
    a device -> host transfer."""
    keys = key if isinstance(key, tuple) else (key,)
    if _b.any(getattr(k, "dtype", None) == _np.bool_ and getattr(k, "ndim", 0) > 0
              for k in keys):
        _d2h("boolean-mask indexing (CuPy counts the mask on the host)")


def _index(key):
    """An index for the device array: CuPy arrays and NumPy index arrays both go
    (CuPy copies a NumPy index array to the device)."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, ndarray):
        return key._a
    if isinstance(key, list):
        return [_index(k) for k in key]
    return key


def _method(name, launches=1, allowed_kwargs=()):
    def method(self, *args, **kwargs):
        _check_kwargs(f"ndarray.{name}", kwargs, allowed_kwargs)
        _launch(launches)
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = _dev(out)
        r = getattr(self._a, name)(*_dev(args), **{k: _dev(v) for k, v in kwargs.items()})
        return out if out is not None else _wrap(r)
    method.__name__ = name
    return method


# views and reductions CuPy's ndarray has (no launch for views)
for _name in ("reshape", "transpose", "ravel", "swapaxes", "squeeze", "diagonal"):
    setattr(ndarray, _name, _method(_name, launches=0))
for _name in ("flatten", "sum", "mean", "max", "min", "argmax", "argmin", "prod", "var", "std",
              "cumsum", "clip", "any", "all", "dot", "take", "repeat", "round", "sort",
              "argsort", "conj", "nonzero", "trace", "cumprod", "partition"):
    setattr(ndarray, _name, _method(_name))
ndarray.nonzero = lambda self: (_d2h("ndarray.nonzero() (its size)"),
                                _wrap(self._a.nonzero()))[1]


def _binary(name, reflected=False):
    def op(self, other):
        if getattr(other, "__array_priority__", 0) > ndarray.__array_priority__ \
                and not isinstance(other, ndarray):
            return NotImplemented
        _launch()
        other = _operand(other)
        a = getattr(self._a, name)(other)
        return NotImplemented if a is NotImplemented else _wrap(a)
    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lshift", "rshift"):
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _binary(f"__r{_name}__"))
    setattr(ndarray, f"__i{_name}__", _binary(f"__i{_name}__"))
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__"))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda n: lambda self: (_launch(), _wrap(
        getattr(self._a, f"__{n}__")()))[1])(_name))


# ------------------------------------------------------- module functions

_FUNCTION_KWARGS = {"copyto": ("where",)}   # where CuPy takes what it mostly lacks


def _function(name, np_func=None):
    np_func = np_func or getattr(_np, name)

    def fn(*args, **kwargs):
        _check_kwargs(name, kwargs, _FUNCTION_KWARGS.get(name, ()))
        _launch()
        out = kwargs.get("out")
        kwargs = {k: _dev(v) for k, v in kwargs.items()}
        r = np_func(*_dev(args), **kwargs)
        return out if out is not None else _wrap(r)
    fn.__name__ = name
    return fn


class _Ufunc:
    """CuPy's ufunc: ``__call__`` with out=, dtype=, casting=; no where=."""

    def __init__(self, name):
        self.__name__ = name
        self._np = getattr(_np, name)
        self.nin, self.nout = self._np.nin, self._np.nout

    def __call__(self, *args, **kwargs):
        _check_kwargs(self.__name__, kwargs)
        if not _b.any(isinstance(a, ndarray) for a in args):
            raise TypeError(f"{self.__name__}: no cupy.ndarray among the inputs "
                            f"({[type(a).__name__ for a in args]})")
        _launch()
        out = kwargs.get("out")
        kwargs = {k: _dev(v) for k, v in kwargs.items()}
        r = self._np(*[_operand(a) for a in args], **kwargs)
        return out if out is not None else _wrap(r)

    def __repr__(self):
        return f"<ufunc '{self.__name__}'>"


_UFUNCS = """add subtract multiply divide true_divide floor_divide power negative positive abs
absolute sign exp exp2 expm1 log log2 log10 log1p sqrt square reciprocal sin cos tan arcsin
arccos arctan arctan2 sinh cosh tanh arcsinh arccosh arctanh maximum minimum fmax fmin
logaddexp equal not_equal less less_equal greater greater_equal logical_and logical_or
logical_not logical_xor bitwise_and bitwise_or bitwise_xor invert isnan isinf isfinite floor
ceil trunc rint fmod remainder mod signbit copysign hypot""".split()
_FUNCTIONS = """where broadcast_to reshape concatenate stack tile pad moveaxis expand_dims
transpose swapaxes squeeze flip repeat take take_along_axis sum mean amax amin
max min argmax argmin prod var std cumsum all any dot matmul tensordot einsum outer tril triu
tri zeros_like ones_like empty_like full_like copyto argsort sort count_nonzero around
clip diag broadcast_arrays atleast_1d atleast_2d shape ndim size result_type can_cast
array_equal allclose isclose linspace logspace may_share_memory shares_memory""".split()

for _name in _UFUNCS:
    globals()[_name] = _Ufunc(_name)
for _name in _FUNCTIONS:
    globals()[_name] = _function(_name)
nonzero = lambda a: a.nonzero()  # noqa: E731
shape = _np.shape
ndim = _np.ndim
size = _np.size
result_type = lambda *args: _np.result_type(*_dev(args))  # noqa: E731
can_cast = _np.can_cast
allclose = lambda *a, **k: bool(_function("allclose")(*a, **k))  # noqa: E731

# dtypes and constants are NumPy's in CuPy too
for _name in ("float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 "
              "bool_ intp complex64 complex128 dtype finfo iinfo newaxis inf nan pi e "
              "issubdtype floating integer number").split():
    globals()[_name] = getattr(_np, _name)


def _creation(name):
    np_func = getattr(_np, name)

    def fn(*args, **kwargs):
        _check_kwargs(name, kwargs)
        _launch()
        return ndarray._of(np_func(*args, **kwargs))
    fn.__name__ = name
    return fn


for _name in ("zeros", "ones", "full", "arange", "eye", "identity"):
    globals()[_name] = _creation(_name)


def empty(shape, dtype=float, order="C"):
    return ndarray._of(_np.empty(shape, dtype=dtype, order=order))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        _launch()
        return ndarray._of(_np.array(obj._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    if isinstance(obj, (list, tuple)) and _b.any(isinstance(v, ndarray) for v in obj):
        return stack([asarray(v, dtype=dtype) for v in obj])
    counters["h2d"] += 1
    return ndarray._of(_np.array(obj, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        if dtype is None or _np.dtype(dtype) == a.dtype:
            return a
        return a.astype(dtype)
    return array(a, dtype=dtype, order=order or "K")


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        return asarray(_np.ascontiguousarray(a, dtype=dtype))
    if a._a.flags.c_contiguous and (dtype is None or _np.dtype(dtype) == a.dtype):
        return a
    _launch()
    return ndarray._of(_np.ascontiguousarray(a._a, dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order)
    return _np.asarray(a, order=order)


def get_array_module(*args):
    return sys.modules[__name__] if _b.any(isinstance(a, ndarray) for a in args) else _np


# ---------------------------------------------------------------- linalg, lib

linalg = types.ModuleType("cupy.linalg")
linalg.norm = _function("norm", _np.linalg.norm)
lib = types.ModuleType("cupy.lib")
lib.stride_tricks = types.ModuleType("cupy.lib.stride_tricks")


def _as_strided(x, shape=None, strides=None):
    return ndarray._of(_np.lib.stride_tricks.as_strided(x._a, shape=shape, strides=strides))


lib.stride_tricks.as_strided = _as_strided


# -------------------------------------------------------------------- random

class _Generator:
    """cupy.random.Generator: random, standard_normal, integers (cuRAND's
    streams differ from NumPy's: only the API is modelled)."""

    def __init__(self, seed):
        self._g = _np.random.default_rng(seed)

    def random(self, size=None, dtype=_np.float64, out=None):
        _launch()
        return ndarray._of(_np.asarray(self._g.random(size, dtype=dtype)))

    def standard_normal(self, size=None, dtype=_np.float64, out=None):
        _launch()
        return ndarray._of(_np.asarray(self._g.standard_normal(size, dtype=dtype)))

    def integers(self, low, high=None, size=None, dtype=_np.int64, endpoint=False):
        _launch()
        return ndarray._of(_np.asarray(self._g.integers(low, high, size, dtype=dtype,
                                                        endpoint=endpoint)))


random = types.ModuleType("cupy.random")
random.default_rng = lambda seed=None: _Generator(seed)


# ---------------------------------------------------------------------- cuda

cuda = types.ModuleType("cupy.cuda")
cuda.runtime = types.ModuleType("cupy.cuda.runtime")

def _gpus_from_environment():
    """How many GPUs the stand-in models: CUPY_STANDIN_GPUS (default 1), so
    child processes (ranks under mpiexec) can be given several."""
    value = os.environ.get("CUPY_STANDIN_GPUS", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"CUPY_STANDIN_GPUS={value!r}: expected a count of GPUs >= 1")
    return int(value)


_device_count = [_gpus_from_environment()]
_current = [0]


def _get_device_count():
    return _device_count[0]


def _set_device(i):
    if not 0 <= i < _device_count[0]:
        raise RuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
    _current[0] = i


cuda.runtime.getDeviceCount = _get_device_count
cuda.runtime.getDevice = lambda: _current[0]
cuda.runtime.setDevice = _set_device
cuda.runtime.deviceSynchronize = lambda: None
cuda.runtime.getDeviceProperties = lambda i: {"name": b"CuPy stand-in (NumPy on the CPU)",
                                              "totalGlobalMem": 0, "major": 0, "minor": 0}
cuda.runtime.runtimeGetVersion = lambda: 0


class Device:
    """cupy.cuda.Device: ``with Device(i):`` makes device i current."""

    def __init__(self, device=None):
        self.id = _current[0] if device is None else int(device)

    def __enter__(self):
        self._prev = _current[0]
        _set_device(self.id)
        return self

    def __exit__(self, *exc):
        _current[0] = self._prev
        return False

    def use(self):
        _set_device(self.id)

    def synchronize(self):
        pass

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


class Stream:
    """cupy.cuda.Stream; ``ptr`` is the cudaStream_t NCCL takes (0: the null stream)."""
    null = None
    _ptrs = weakref.WeakValueDictionary()
    _next = itertools.count(0x7000)

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0 if null else next(Stream._next) * 0x100
        Stream._ptrs[self.ptr] = self

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class MemoryPointer:
    """cupy.cuda.MemoryPointer of an array (``a.data``): ``ptr`` is the address of
    its first element; the stand-in's NCCL resolves it back to the memory."""

    def __init__(self, array):
        self._array = array   # holds the memory alive, as CuPy's holds its Memory
        self.ptr = _nccl.register(array)
        self.device_id = array._d

    device = property(lambda self: Device(self.device_id))


class _MemoryPool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass


_pool = _MemoryPool()
cuda.Device = Device
cuda.Stream = Stream
Stream.null = Stream(null=True)
cuda.MemoryPool = _MemoryPool
cuda.MemoryPointer = MemoryPointer
cuda.nccl = _nccl.module()
cuda.get_current_stream = lambda device=None: Stream.null
cuda.alloc_pinned_memory = lambda nbytes: memoryview(bytearray(nbytes))
get_default_memory_pool = lambda: _pool  # noqa: E731
get_default_pinned_memory_pool = lambda: _pool  # noqa: E731


# ------------------------------------------------------------------- kernels

class ElementwiseKernel:
    """CuPy's ElementwiseKernel: the body compiled by the C compiler on first
    call (per dtype combination), then one loop iteration per element."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True,
                 preamble="", no_return=False, return_tuple=False, loop_prep="",
                 after_loop="", options=()):
        if loop_prep or after_loop:
            raise NotImplementedError("stand-in: loop_prep/after_loop are not modelled")
        self.in_params = _kernels.parse_params(in_params)
        self.out_params = _kernels.parse_params(out_params)
        self.operation, self.name, self.preamble = operation, name, preamble
        self.no_return, self.return_tuple = no_return, return_tuple
        self._libs = {}

    def __call__(self, *args, size=None, block_size=None):
        params = self.in_params + self.out_params
        if len(args) != len(params):
            raise TypeError(f"Wrong number of arguments for {self.name!r}: expected "
                            f"{len(params)}, got {len(args)} (the stand-in wants the outputs "
                            "passed)")
        types_ = {}
        for (raw, typ, pname), a in zip(params, args):
            if isinstance(a, _np.ndarray):
                raise _unsupported(a)
            if typ not in _kernels._C_TYPES and isinstance(a, (ndarray, _np.generic)):
                types_.setdefault(typ, a.dtype)
        out_names = {p[2] for p in self.out_params}
        out_arrays = [a for (raw, _, n), a in zip(params, args) if n in out_names and not raw]
        n = size if size is not None else (out_arrays[0].size if out_arrays else None)
        if n is None:
            raise ValueError(f"{self.name}: cannot tell the loop size (give size=)")
        key = tuple(sorted((k, str(v)) for k, v in types_.items()))
        if key not in self._libs:
            src = _kernels.c_source(params, out_names, self.operation, self.preamble, types_)
            self._libs[key] = _kernels.compile_source(src, self.name)
        c_args, write_back = [ctypes.c_longlong(n)], []
        keep = []
        for (raw, typ, pname), a in zip(params, args):
            dtype = types_.get(typ) or _np.dtype(typ if typ != "bool" else _np.bool_)
            if isinstance(a, ndarray):
                if a.dtype != dtype:
                    raise TypeError(f"{self.name}: {pname} is {a.dtype}, the kernel wants {dtype}")
                buf = a._a if a._a.flags.c_contiguous else _np.ascontiguousarray(a._a)
                if not raw and pname not in out_names and buf.size != n:
                    buf = _np.ascontiguousarray(_np.broadcast_to(buf, out_arrays[0].shape))
                if buf is not a._a and pname in out_names:
                    write_back.append((a._a, buf))
                keep.append(buf)
                c_args += [_kernels.pointer(buf), ctypes.c_longlong(buf.size if raw else 1)]
            else:
                buf = _np.asarray([a], dtype=dtype)
                keep.append(buf)
                c_args += [_kernels.pointer(buf), ctypes.c_longlong(buf.size if raw else 0)]
        err = _np.zeros(4, dtype=_np.int64)
        c_args.append(_kernels.pointer(err))
        _launch()
        if self._libs[key].run(*c_args):
            names = [p[2] for p in params if p[0]]
            raise _kernels.KernelIndexError(
                f"kernel {self.name!r}: raw array {names[err[0]]!r} indexed at {err[1]}, "
                f"outside its {err[2]} elements (thread i={err[3]})")
        for dst, buf in write_back:
            dst[...] = buf
        outs = [a for (raw, _, n_), a in zip(params, args) if n_ in out_names]
        if self.no_return:
            return None
        return outs[0] if len(outs) == 1 and not self.return_tuple else tuple(outs)


# -------------------------------------------------------------------- cupyx

cupyx = types.ModuleType("cupyx")
cupyx.__path__ = []


def _scatter_add(a, slices, value):
    if isinstance(value, _np.ndarray) and value.shape != ():   # indices may be NumPy's
        raise _unsupported(value)
    _launch()
    _np.add.at(a._a, _index(slices), _dev(value))


cupyx.scatter_add = _scatter_add


def _empty_pinned(shape, dtype=float, order="C"):
    """As CuPy's: a NumPy array (host memory; page-locked on a real GPU)."""
    return _np.empty(shape, dtype=dtype, order=order)


def _zeros_pinned(shape, dtype=float, order="C"):
    return _np.zeros(shape, dtype=dtype, order=order)


cupyx.empty_pinned, cupyx.zeros_pinned = _empty_pinned, _zeros_pinned
cupyx.scipy = types.ModuleType("cupyx.scipy")
cupyx.scipy.__path__ = []
cupyx.scipy.special = types.ModuleType("cupyx.scipy.special")


def _erf(x, out=None):
    import math
    if not isinstance(x, ndarray):
        raise _unsupported(x)
    _launch()
    v = _np.vectorize(math.erf, otypes=[x.dtype])(x._a)
    return ndarray._of(v.astype(x.dtype, copy=False))


cupyx.scipy.special.erf = _erf


def install():
    """Register the stand-in as ``cupy``/``cupyx`` when the real CuPy is absent
    and a C compiler is at hand (for the kernels). Returns True when installed
    (False: the real CuPy is there, or no compiler: the gpu tests then skip)."""
    import importlib.util
    import shutil
    if sys.modules.get("cupy") is sys.modules[__name__]:
        return True
    if importlib.util.find_spec("cupy") is not None or shutil.which(_kernels.CC) is None:
        return False
    me = sys.modules[__name__]
    for name, mod in {"cupy": me, "cupy.cuda": cuda, "cupy.cuda.runtime": cuda.runtime,
                      "cupy.cuda.nccl": cuda.nccl,
                      "cupy.random": random, "cupy.linalg": linalg, "cupyx": cupyx,
                      "cupyx.scipy": cupyx.scipy,
                      "cupyx.scipy.special": cupyx.scipy.special}.items():
        sys.modules[name] = mod
    return True



def child_environment(folder, pythonpath=(), gpus=None):
    """Environment variables that make child Python processes (benchmark
    workers, ranks under mpiexec) load the stand-in as ``cupy`` when the real
    CuPy is absent: a sitecustomize written into ``folder``, first on
    PYTHONPATH before ``pythonpath``; ``gpus``: how many GPUs it models there."""
    import pathlib
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (folder / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {here!r})\nimport cupy_standin\ncupy_standin.install()\n")
    env = {"PYTHONPATH": os.pathsep.join([str(folder), *map(str, pythonpath)])}
    if gpus is not None:
        env["CUPY_STANDIN_GPUS"] = str(int(gpus))
    return env
