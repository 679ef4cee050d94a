"""Tensor, Function and the autograd engine.

A :class:`Tensor` wraps one raw array (``numpy.ndarray`` or ``cupy.ndarray``).
Every differentiable op is a :class:`Function` subclass whose ``forward`` and
``backward`` sit side by side and work on raw arrays. Calling a Function on
tensors records it as the ``creator`` of its outputs when any input requires
a gradient and grad mode is on.

The engine (:func:`run_backward`) is iterative: a heap of functions keyed by
generation (the depth of the deepest input, so every consumer of a tensor
runs before its producer), no recursion, so a 100,000-op chain is fine.
Outputs are held by a function only through weak references, so the graph
is owned by the loss alone and dies with it; by default ``backward`` also
frees each function's saved arrays as soon as it has run.
"""
from __future__ import annotations

import contextlib
import heapq
import itertools
import operator
import sys
import threading
import weakref

import numpy as np

from . import backend
from .precision import HALF_DTYPES
from .precision import unsupported as half_unsupported


class _GradMode(threading.local):
    """Whether ops record a graph, per thread (as in PyTorch: a no_grad block in
    one thread must not switch recording off in another)."""

    enabled = True  # the class attribute is every thread's starting value

    def __init__(self):
        # The modes that the open no_grad/enable_grad blocks replaced, innermost
        # last. Blocks nest, so a per-thread stack restores the right one even
        # when one instance is entered twice (recursion through a decorated
        # function, a shared ``no_grad()`` object, Optimizer.step's decorator).
        self.saved = []


_grad_mode = _GradMode()


class _BackwardCallbacks(threading.local):
    def __init__(self):
        self.queue = []


_backward_callbacks = _BackwardCallbacks()


def queue_callback(callback) -> None:
    """Run ``callback()`` once when this thread's next ``backward()`` ends (PyTorch's
    engine ``queue_callback``): how DistributedDataParallel averages the gradients
    once all of them exist. A callback already queued is not queued twice."""
    if callback not in _backward_callbacks.queue:
        _backward_callbacks.queue.append(callback)


class _SetGradMode(contextlib.ContextDecorator):
    """Context manager and decorator that sets grad mode to ``_mode`` inside."""

    _mode = True

    def __enter__(self):
        _grad_mode.saved.append(_grad_mode.enabled)
        _grad_mode.enabled = self._mode
        return self

    def __exit__(self, *exc):
        _grad_mode.enabled = _grad_mode.saved.pop()
        return False


class no_grad(_SetGradMode):
    """Context manager and decorator that disables graph recording.

    Re-entrant and thread-safe: one instance may be nested, reused, shared by
    threads or decorate a recursive function."""

    _mode = False


class enable_grad(_SetGradMode):
    """Context manager and decorator that re-enables graph recording (inside
    ``no_grad``); re-entrant and thread-safe like :class:`no_grad`."""

    _mode = True


class set_grad_enabled(_SetGradMode):
    """``set_grad_enabled(mode)``, as PyTorch's: called alone it sets grad mode from
    then on; as a context manager (``with minidl.set_grad_enabled(phase ==
    "train"):``) or a decorator it sets it inside and restores it after."""

    def __init__(self, mode):
        self._mode = bool(mode)
        self._prev, self._fresh = _grad_mode.enabled, True
        _grad_mode.enabled = self._mode

    def __enter__(self):
        # the first entry restores, at exit, the mode from before the call itself
        _grad_mode.saved.append(self._prev if self._fresh else _grad_mode.enabled)
        self._fresh = False
        _grad_mode.enabled = self._mode
        return self

    def __call__(self, func):   # a decorator: the call set nothing yet, after all
        _grad_mode.enabled, self._fresh = self._prev, False
        return super().__call__(func)


class _Unchanged(contextlib.ContextDecorator):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def inference_mode(mode=True):
    """PyTorch's faster no_grad; minidl's :class:`no_grad` is that already.
    ``inference_mode(False)`` changes nothing; ``@inference_mode`` without
    parentheses decorates too."""
    if callable(mode):
        return no_grad()(mode)
    return no_grad() if mode else _Unchanged()


def is_grad_enabled() -> bool:
    return _grad_mode.enabled


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) or backend.is_cuda_array(x)


def as_array(data, dtype=None, device=None):
    """Convert user data to a raw array following minidl's dtype rules.

    Arrays and NumPy scalars keep their dtype (float64 stays float64,
    integers stay integers); Python floats and float lists become float32,
    Python ints int64 and bools bool, as ``torch.tensor`` does. With
    ``dtype``, Python numbers are converted to it directly (a float64 tensor
    never goes through float32).
    """
    if isinstance(data, Tensor):
        data = data._data
    if _is_array(data):
        array = data
    else:
        # Python floats read as float64 and ints as int64: converting those to
        # ``dtype`` is exact (a float64 tensor never goes through float32)
        array = np.asarray(data)
        if array.dtype.kind not in "biufc":
            raise TypeError(f"tensor: cannot make a tensor from {type(data).__name__} "
                            f"(NumPy dtype {array.dtype}; only numbers and bools, and "
                            "integers within int64)")
        if dtype is None and not isinstance(data, np.generic):   # NumPy scalars keep theirs
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
            elif array.dtype.kind in "iu":
                # NumPy reads ints in [2**63, 2**64) as uint64: out of int64's range
                if array.dtype == np.uint64 and array.size and \
                        array.max() > np.iinfo(np.int64).max:
                    raise OverflowError(f"tensor: {int(array.max())} is out of the range of "
                                        "int64")
                array = array.astype(np.int64)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if not _is_array(data) and dtype.kind in "iu" and array.dtype.kind in "iu" and \
                array.size:
            # Python ints out of a narrow dtype's range would wrap silently
            info, lo, hi = np.iinfo(dtype), int(array.min()), int(array.max())
            if lo < info.min or hi > info.max:
                raise OverflowError(f"tensor: {lo if lo < info.min else hi} is out of the "
                                    f"range of {dtype}")
        array = array.astype(dtype, copy=False)
    if device is not None:
        array = backend.to_device(array, device)
    return array


def raw(x):
    """The array of a Tensor; anything else (an array, a number, None) as it is."""
    return x._data if isinstance(x, Tensor) else x


def as_tensor(x) -> "Tensor":
    """``x`` itself when it is a Tensor, else a Tensor around it (an array is shared,
    not copied): what every op does with its inputs, since minidl's ops take NumPy
    arrays and numbers where PyTorch's take tensors."""
    return x if isinstance(x, Tensor) else Tensor(x)


class _Size(int):
    """``Tensor.size``: NumPy's element count, an int, that is also PyTorch's
    ``size()`` when called: ``t.size()`` is the shape, ``t.size(d)`` its
    length along ``d``. Both habits work."""

    def __new__(cls, shape):
        count = 1
        for n in shape:
            count *= n
        self = super().__new__(cls, count)
        self.shape = tuple(shape)
        return self

    def __getnewargs__(self):   # pickle and copy rebuild it from the shape
        return (self.shape,)

    def __call__(self, dim=None):
        if dim is None:
            return self.shape
        ndim = len(self.shape)
        if not -ndim <= dim < ndim:
            raise IndexError(f"size: dim {dim} is out of range for a tensor of shape "
                             f"{self.shape}")
        return self.shape[dim]


def _check_grad_dtype(array, where="requires_grad"):
    if array.dtype.kind not in "fc":
        raise TypeError(f"{where}: only floating-point tensors can require gradients, "
                        f"got dtype {array.dtype}")


class Tensor:
    """An n-dimensional array that records the ops applied to it.

    ``data`` is the raw array; ``grad`` a Tensor or None; ``creator`` the
    Function that made it (None for leaves).
    """

    __slots__ = ("_data", "grad", "_requires_grad", "creator", "generation",
                 "_out_index", "_retains_grad", "__weakref__")
    # ndarray (op) Tensor must defer to Tensor's reflected operators.
    __array_ufunc__ = None

    def __init__(self, data, *, requires_grad=False, dtype=None, device=None):
        # keyword-only: torch.Tensor(2, 3) means a 2x3 tensor, so a positional second
        # argument here would silently mean something else
        self._data = as_array(data, dtype, device)
        self.grad = None
        self.creator = None
        self.generation = 0
        self._out_index = 0
        self._retains_grad = False
        if requires_grad:
            _check_grad_dtype(self._data)
        self._requires_grad = bool(requires_grad)

    @classmethod
    def _wrap(cls, array):
        """A constant tensor around a raw array, with no checks (hot path)."""
        if isinstance(array, np.generic):
            # NumPy gives scalars for 0-d results; ``data`` is always an array
            # (writable in place, with ``.base`` and ``.flags``).
            array = np.asarray(array)
        t = object.__new__(cls)
        t._data = array
        t.grad = None
        t._requires_grad = False
        t.creator = None
        t.generation = 0
        t._out_index = 0
        t._retains_grad = False
        return t

    # ---------------------------------------------------------- properties
    # ``data`` is PyTorch's: a tensor outside the graph sharing this one's memory
    # (``p.data.zero_()``, ``out.data.max(1)[1]``, ``p.data -= lr * p.grad.data``),
    # and assigning to it replaces the array (a Tensor's array, never a Tensor
    # inside a Tensor). minidl's own code reads the array itself, ``_data``.
    # ``requires_grad`` reads as an attribute (a C getter: it is read on every op)
    # and checks what is written: a non-leaf cannot stop requiring grad (that would
    # silently cut the graph).
    def _get_data(self):
        return Tensor._wrap(self._data)

    def _set_data(self, value):
        array = as_array(value)
        if self._requires_grad:
            _check_grad_dtype(array, "data")   # an int array on a parameter: refused, as PyTorch
        self._data = array

    def __setstate__(self, state):
        """Unpickling, also of tensors pickled before ``data`` and ``requires_grad``
        became checked properties (their slots were named without the underscore)."""
        slots = state[1] if isinstance(state, tuple) else state
        renamed = {"data": "_data", "requires_grad": "_requires_grad"}
        for name, value in (slots or {}).items():
            object.__setattr__(self, renamed.get(name, name), value)

    def _set_requires_grad(self, flag):
        self.requires_grad_(flag)

    data = property(_get_data, _set_data,
                    doc="This tensor's values as a tensor outside the graph (shared memory); "
                        "assigning replaces them.")
    requires_grad = property(operator.attrgetter("_requires_grad"), _set_requires_grad,
                             doc="Whether ops on this tensor are recorded for backward.")
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: _Size(self._data.shape))
    is_leaf = property(lambda self: self.creator is None)
    grad_fn = property(lambda self: self.creator)

    @property
    def device(self) -> str:
        return backend.device_of(self._data)

    def numel(self) -> int:
        return self._data.size

    def dim(self) -> int:
        return self._data.ndim

    def __len__(self):
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __hash__(self):
        return id(self)

    def __bool__(self):
        if self._data.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is "
                             "ambiguous; use .any() or .all()")
        return bool(self.item())

    def any(self, dim=None, keepdim=False):
        """Whether any element (along ``dim``) is non-zero: a bool tensor."""
        return Tensor._wrap(self._data.any(axis=dim, keepdims=keepdim))

    def all(self, dim=None, keepdim=False):
        """Whether every element (along ``dim``) is non-zero: a bool tensor."""
        return Tensor._wrap(self._data.all(axis=dim, keepdims=keepdim))

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self._data.dtype.kind not in "iu" or self._data.size != 1:
            raise TypeError("only integer tensors of one element can be used as an index")
        return int(self.item())

    def __array__(self, dtype=None, copy=None):
        """NumPy's protocol: ``np.array(t)`` copies (NumPy asks with copy=True), as
        PyTorch; ``np.asarray(t)`` shares the memory of a CPU tensor."""
        array = backend.as_numpy(self._data)
        if dtype is not None and np.dtype(dtype) != array.dtype:
            if copy is False:
                raise ValueError(f"__array__: converting {array.dtype} to {np.dtype(dtype)} "
                                 "needs a copy, and copy=False was asked")
            return array.astype(dtype)
        return array.copy() if copy else array

    def __repr__(self):
        body = np.array2string(backend.as_numpy(self._data), separator=", ",
                               prefix="tensor(", precision=4, threshold=200)
        extras = []
        if self.device != "cpu":
            extras.append(f"device='{self.device}'")
        if self._data.dtype != np.float32:
            extras.append(f"dtype={self._data.dtype}")
        if self.creator is not None:
            extras.append(f"grad_fn=<{type(self.creator).__name__}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + ", ".join([body] + extras) + ")"

    # -------------------------------------------------------- conversions
    def item(self):
        if self._data.size != 1:
            raise ValueError(f"item(): expected a tensor of one element, got shape {self.shape}")
        if self.device == "cuda":
            backend.raise_deferred()
        return self._data.item()

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (a copy when it lives on the GPU)."""
        return backend.as_numpy(self._data)

    def tolist(self):
        return self.numpy().tolist()

    def detach(self) -> "Tensor":
        """A new leaf sharing this tensor's data, cut from the graph."""
        return Tensor._wrap(self._data)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag:
            _check_grad_dtype(self._data)
        if not flag and self.creator is not None:
            raise RuntimeError("requires_grad can only be turned off on leaf tensors (this one "
                               "was computed; use detach() for a tensor outside the graph)")
        self._requires_grad = bool(flag)
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward."""
        self._retains_grad = True

    def to(self, device=None, dtype=None) -> "Tensor":
        """This tensor on another device and/or dtype (self when nothing changes).

        A dtype change is a differentiable cast (the gradient flows back, as
        in PyTorch). A device change gives a new leaf that requires grad when
        self is a leaf that did (a parameter moved to the GPU); it does not
        carry a graph across devices.
        """
        if isinstance(device, (type, np.dtype)) or (isinstance(device, str) and device not in
                                                     ("cpu", "cuda") and not device.startswith("cuda:")):
            device, dtype = None, device
            try:
                np.dtype(dtype)
            except TypeError:  # a typo'd device would otherwise read "data type not understood"
                raise ValueError(f"to: unknown device or dtype {dtype!r}; devices are "
                                 f"{backend.DEVICES}") from None
        out = self
        if device is not None and (backend.parse_device(device) != self.device or
                                   backend.Device(device).index is not None):
            moved = backend.to_device(self._data, device)
            if moved is self._data:
                return self if dtype is None else self.to(dtype=dtype)
            out = Tensor._wrap(moved)
            out._requires_grad = self._requires_grad and self.creator is None
        if dtype is not None and np.dtype(dtype) != out._data.dtype:
            from .ops.arith import cast
            out = cast(out, dtype)
        return out

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self) -> "Tensor":
        return self.to("cuda")

    def astype(self, dtype) -> "Tensor":
        from .ops.arith import cast
        return cast(self, dtype)

    def float(self) -> "Tensor":
        return self.astype(np.float32)

    def double(self) -> "Tensor":
        return self.astype(np.float64)

    def long(self) -> "Tensor":
        return self.astype(np.int64)

    def int(self) -> "Tensor":
        return self.astype(np.int32)

    def bool(self) -> "Tensor":
        return self.astype(np.bool_)

    def clone(self) -> "Tensor":
        """A copy of the data, on the graph (the gradient passes through), as PyTorch's."""
        from .ops.arith import Clone
        return Clone()(self)

    def contiguous(self) -> "Tensor":
        """Self when its data are C-contiguous, else a :meth:`clone` that is."""
        return self if self._data.flags.c_contiguous else self.clone()

    def t(self) -> "Tensor":
        """PyTorch's ``t()``: the transpose of a 2-D tensor (a 0-d or 1-D one as is)."""
        if self.ndim > 2:
            raise ValueError(f"t: expects a tensor of at most 2 dims, got shape {self.shape}; "
                             "use transpose(dim0, dim1) or permute")
        return self.T if self.ndim == 2 else self

    def softmax(self, dim) -> "Tensor":
        from .ops.activation import softmax
        return softmax(self, dim)

    def log_softmax(self, dim) -> "Tensor":
        from .ops.activation import log_softmax
        return log_softmax(self, dim)

    # ---------------------------------------------------------- autograd
    def zero_grad(self) -> None:
        self.grad = None

    def backward(self, grad=None, retain_graph=False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` (same shape as self) is required unless self has one element.
        ``retain_graph=True`` keeps the graph for another backward.
        """
        if not self.requires_grad:
            raise RuntimeError(f"backward: this tensor (shape {self.shape}) does not require grad "
                               "and has no graph: did you compute it under no_grad(), or "
                               "from tensors without requires_grad=True?")
        xp = backend.get_array_module(self._data)
        if grad is None:
            if self._data.size != 1:
                raise RuntimeError(
                    f"backward: grad can be implicitly created only for an output of one "
                    f"element; this output has shape {self.shape}: pass grad= of that shape")
            grad = xp.ones_like(self._data)
            owned = True
        else:
            grad = as_array(grad)
            if backend.device_of(grad) != self.device:
                raise backend.DeviceError(f"backward: grad is on '{backend.device_of(grad)}' but the "
                                          f"output is on '{self.device}'")
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape}, expected the output's "
                                 f"shape {self.shape}")
            grad = grad.astype(self._data.dtype, copy=False)
            owned = False
        try:
            run_backward(self, grad, retain_graph, owned)
        finally:   # a failed backward drops its callbacks: they must not run at the next one
            callbacks, _backward_callbacks.queue = _backward_callbacks.queue, []
        for callback in callbacks:
            callback()


def sum_to(array, shape):
    """Sum a broadcast gradient back to ``shape`` (the inverse of broadcasting)."""
    if array.shape == tuple(shape):
        return array
    lead = array.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"gradient of shape {array.shape} cannot be summed to {tuple(shape)}")
    axes = tuple(range(lead)) + tuple(
        i + lead for i, s in enumerate(shape) if s == 1 and array.shape[i + lead] != 1)
    out = array.sum(axis=axes, keepdims=True) if axes else array
    if lead:
        out = out.reshape(shape)
    if out.shape != tuple(shape):
        raise ValueError(f"gradient of shape {array.shape} cannot be summed to {tuple(shape)}")
    return out


# Function class -> handler(function, inputs): minidl.fusion's, filled when it
# is imported; a handler returns the output(s), or None to run the op as written.
fusion_handlers = {}


class Function:
    """One differentiable op: ``forward`` and ``backward`` on raw arrays.

    * ``forward(*arrays)`` returns an array or a tuple of arrays.
    * ``backward(*grad_outputs)`` returns one gradient (array or None) per
      input; it may skip inputs whose ``self.needs_input_grad[i]`` is False
      and must never write into an array it did not allocate. Gradients of a
      broadcast input may keep the broadcast shape: the engine sums them back.
    * Non-tensor settings go to ``__init__``; whatever backward needs is saved
      on ``self`` in forward and freed by the engine after backward.
    """

    inputs = None
    generation = 0
    needs_input_grad = ()
    # half inputs: float16 works where the forward is a NumPy expression (False: refused
    # upfront, kernel ops); bfloat16 only in ops that move or cast data (NumPy promotes it)
    supports_half = True
    supports_bfloat16 = False

    def __call__(self, *inputs):
        # minidl.fusion may take the call over (defer it, or run a fused op in
        # its place); it returns None to let the Function run as written
        handler = fusion_handlers.get(type(self))
        if handler is not None:
            out = handler(self, inputs)
            if out is not None:
                return out
        return self._run(*inputs)

    def _run(self, *inputs):
        """Run the op now (no fusion): forward, and record it for backward."""
        tensors = [x if isinstance(x, Tensor) else Tensor._wrap(as_array(x)) for x in inputs]
        arrays = [t._data for t in tensors]
        for a in arrays:   # itemsize first: the cheapest test that rules out float32/64
            if a.itemsize == 2 and a.dtype in HALF_DTYPES and not (
                    self.supports_half if a.dtype == np.float16 else self.supports_bfloat16):
                raise half_unsupported(self, a.dtype)
        if backend.cupy_module() is not None:
            self._check_devices(tensors)
        record = _grad_mode.enabled and any(t.requires_grad for t in tensors)
        self.needs_input_grad = tuple(t.requires_grad for t in tensors) if record \
            else (False,) * len(tensors)
        try:
            ys = self.forward(*arrays)
        except Exception as exc:
            half = next((a.dtype for a in arrays if a.dtype in HALF_DTYPES), None)
            if half is not None:   # a kernel's typing error, 60 frames deep: say what it means
                raise half_unsupported(self, half, exc) from None
            # NumPy's broadcasting error names neither the op nor the dtypes.
            if not isinstance(exc, ValueError) or "could not be broadcast" not in str(exc):
                raise
            shapes = ", ".join(f"{a.shape} {a.dtype}" for a in arrays)
            raise ValueError(f"{type(self).__name__}: input shapes cannot be broadcast "
                             f"together: {shapes}") from None
        single = not isinstance(ys, tuple)
        if single:
            ys = (ys,)
        outputs = tuple(Tensor._wrap(y) for y in ys)
        if record:
            self.generation = max(t.generation for t in tensors)
            self.inputs = tensors
            self.outputs = [weakref.ref(o) for o in outputs]
            self._out_meta = [(y.shape, y.dtype) for y in ys] if len(ys) > 1 else None
            for i, o in enumerate(outputs):
                if o._data.dtype.kind in "fc":
                    o.creator = self
                    o._requires_grad = True
                    o.generation = self.generation + 1
                    o._out_index = i
        return outputs[0] if single else outputs

    def _check_devices(self, tensors):
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            shapes = ", ".join(f"{tuple(t.shape)} on '{t.device}'" for t in tensors)
            raise backend.DeviceError(
                f"{type(self).__name__}: inputs are on two devices ({shapes}); move them "
                "to one device with .to(device) first")

    def forward(self, *arrays):
        raise NotImplementedError

    def backward(self, *grad_outputs):
        raise NotImplementedError

    def release(self):
        """Drop the saved arrays and inputs once backward has run."""
        generation = self.generation
        self.__dict__.clear()
        self.generation = generation

    def __repr__(self):
        return f"<{type(self).__name__}>"


_tie_breaker = itertools.count()


def _private_view(array):
    """Whether ``array`` is a view of memory nothing else references: a
    transpose or reshape of a temporary (conv2d's C-major gradients), which
    a leaf may keep as it is. (CPython then counts three references to the
    base: the view's, the local name's and getrefcount's argument's.)"""
    base = array.base
    if base is None or type(base) is not type(array) or base.base is not None:
        return False
    return sys.getrefcount(base) <= 3


def clear_grad(tensor, set_to_none=True):
    """Clear ``tensor.grad`` for zero_grad: set it to None, or with
    ``set_to_none=False`` zero it in place (as PyTorch), so a reference to the
    gradient taken earlier sees the zeros too."""
    grad = tensor.grad
    if set_to_none or grad is None:
        tensor.grad = None
    elif _has_own_elements(grad._data):
        grad._data[...] = 0
    else:   # a read-only or broadcast array a user assigned: replace it
        grad._data = backend.get_array_module(grad._data).zeros_like(tensor._data)


def _has_own_elements(array):
    """Whether every element of ``array`` has its own writable memory: False for a
    read-only array or a broadcast view (a 0 stride over a dim longer than 1;
    CuPy has no read-only flag, but its broadcast views have those strides)."""
    if not getattr(array.flags, "writeable", True):
        return False
    return all(stride or size <= 1 for stride, size in zip(array.strides, array.shape))


def _accumulate_leaf(tensor, grad, owned_ids):
    """Add ``grad`` to a leaf's ``.grad``.

    A leaf's gradient is always a writable array of its own (users and hooks
    clip or zero it in place): never shared with another leaf or a saved array,
    never a read-only or broadcast view, never a NumPy scalar. A gradient that
    already is one (the common case) is kept without a copy.
    """
    if isinstance(grad, np.generic):  # a 0-d result: a fresh 0-d array is private
        grad = np.array(grad, dtype=tensor._data.dtype)
    elif grad.dtype != tensor._data.dtype:
        grad = grad.astype(tensor._data.dtype)
    elif (id(grad) in owned_ids or not _has_own_elements(grad)
          or (grad.base is not None and not _private_view(grad))):
        grad = grad.copy()
    owned_ids.add(id(grad))
    if tensor.grad is None:
        tensor.grad = Tensor._wrap(grad)
    else:
        # Not in place: an array the caller took from .grad earlier stays as it was.
        tensor.grad._data = tensor.grad._data + grad
        if isinstance(tensor.grad._data, np.generic):
            tensor.grad._data = np.asarray(tensor.grad._data)


def run_backward(root, grad, retain_graph=False, owned=True):
    """Backpropagate ``grad`` from ``root`` through its graph (iteratively)."""
    owned_ids = set() if owned else {id(grad)}
    if root.creator is None:
        _accumulate_leaf(root, grad, owned_ids)
        return
    if root._retains_grad:
        _accumulate_leaf(root, grad, owned_ids)
    start = root.creator
    _check_alive(start)
    pending = {id(start): [None] * len(start.outputs)}
    pending[id(start)][root._out_index] = grad
    heap = [(-start.generation, next(_tie_breaker), start)]
    while heap:
        f = heapq.heappop(heap)[2]
        grads_out = pending.pop(id(f))
        if f._out_meta is not None:
            xp = backend.get_array_module(*[g for g in grads_out if g is not None])
            grads_out = [xp.zeros(shape, dtype) if g is None else g
                         for g, (shape, dtype) in zip(grads_out, f._out_meta)]
        grads_in = f.backward(*grads_out)
        if not isinstance(grads_in, tuple):
            grads_in = (grads_in,)
        for x, gx, needed in zip(f.inputs, grads_in, f.needs_input_grad):
            if gx is None or not needed:
                continue
            if gx.shape != x._data.shape:
                gx = sum_to(gx, x._data.shape)
            creator = x.creator
            if creator is None:
                _accumulate_leaf(x, gx, owned_ids)
                continue
            if x._retains_grad:
                _accumulate_leaf(x, gx, owned_ids)
            slots = pending.get(id(creator))
            if slots is None:
                _check_alive(creator)
                slots = pending[id(creator)] = [None] * len(creator.outputs)
                heapq.heappush(heap, (-creator.generation, next(_tie_breaker), creator))
            i = x._out_index
            slots[i] = gx if slots[i] is None else slots[i] + gx
        if not retain_graph:
            f.release()


def _check_alive(function):
    if function.inputs is None:
        raise RuntimeError(
            f"backward: trying to backward through the graph a second time ({function!r} was "
            "already freed). Pass retain_graph=True to the first backward() if you need to.")
