"""Module-level ``__getattr__`` for ``minidl``, ``minidl.nn`` and ``minidl.nn.functional``.

A PyTorch name minidl lacks raises an AttributeError that says so and points
to the nearest minidl feature: a written hint for the common ones, else the
closest names the module has.
"""
from __future__ import annotations

import difflib

# PyTorch names people reach for, with what minidl offers instead
HINTS = {
    "minidl": {
        "compile": "minidl runs models eagerly; drop torch.compile (model = model)",
        "jit": "minidl has no TorchScript; save weights with minidl.save and export with "
               "minidl.onnx.export",
        "autocast": "minidl computes in float32/float64; half tensors are for storage "
                    "(x.half(), x.float())",
        "backends": "thread and kernel settings are in minidl.backend (set_num_threads, "
                    "use_numba)",
        "Generator": "minidl draws from numpy.random.Generator objects: pass "
                     "generator=numpy.random.default_rng(seed)",
        "cdist": "compute ((a[:, None] - b[None]) ** 2).sum(-1).sqrt()",
        "set_default_dtype": "minidl's default float dtype is float32; pass dtype= or "
                             "convert with .to(dtype)",
    },
    "minidl.nn": {
        "Conv1d": "minidl has Conv2d: use a (1, k) kernel on x.unsqueeze(2)",
        "Conv3d": "minidl has Conv2d only",
        "ConvTranspose2d": "minidl has no transposed convolution; upsample with repeat and "
                           "use Conv2d",
        "LSTM": "minidl has no recurrent layers; MultiheadAttention is the sequence layer",
        "GRU": "minidl has no recurrent layers; MultiheadAttention is the sequence layer",
        "RNN": "minidl has no recurrent layers; MultiheadAttention is the sequence layer",
        "GroupNorm": "use LayerNorm or BatchNorm2d",
        "BCELossWithLogits": "the name is BCEWithLogitsLoss",
    },
    "minidl.nn.functional": {
        "conv1d": "minidl has conv2d: use a (1, k) kernel on x.unsqueeze(2)",
        "interpolate": "minidl has no interpolate; nearest upsampling by 2 is indexing: "
                       "i = minidl.arange(2 * H) // 2; x[:, :, i][:, :, :, i]",
    },
}


def missing_attribute(module, name, names):
    """The AttributeError for ``module.name`` (``names``: what the module has)."""
    hint = HINTS.get(module, {}).get(name)
    if hint is None:
        close = difflib.get_close_matches(name, [n for n in names if not n.startswith("_")],
                                          n=3, cutoff=0.6)
        hint = ("the nearest minidl names: " + ", ".join(f"{module}.{c}" for c in close)
                if close else f"see dir({module}) for what minidl has")
    return AttributeError(f"module {module!r} has no attribute {name!r} (a PyTorch name "
                          f"minidl lacks, or a misspelling); {hint}")


def module_getattr(module, namespace):
    """A ``__getattr__`` for ``module`` whose globals are ``namespace``."""
    def __getattr__(name):
        if name.startswith("__"):   # introspection (copy, pickle, doctest): the plain error
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        raise missing_attribute(module, name, list(namespace))
    return __getattr__
