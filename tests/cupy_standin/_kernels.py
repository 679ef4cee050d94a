"""CuPy's ``ElementwiseKernel`` for the stand-in: the CUDA-C body compiled by
the host C compiler and run on the CPU, one loop iteration per CUDA thread.

The body is the one minidl hands to CuPy, unchanged; a few shims make it C:
``T`` and the other type placeholders become typedefs, CUDA's ``min``/``max``
and CuPy's ``CUDART_INF`` macros (CuPy defines them in its own headers, so a
kernel must not include ``math_constants.h`` itself), and every raw-array
subscript ``name[expr]`` is rewritten into a bounds-checked access: an index
outside the array stops the kernel with an error naming the array, the index
and its size (on a GPU it would read or write someone else's memory).
Taking the address of a raw element (``&x[k]``) is refused, as it would
escape the check. Each kernel is compiled once per (body, types) into a shared
library in a cache folder and called through ctypes.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile

import numpy as np

CC = os.environ.get("CC", "/usr/bin/cc")
_CACHE = os.path.join(tempfile.gettempdir(), f"minidl_cupy_standin_{os.getuid()}")
_C_TYPES = {"float32": "float", "float64": "double", "int64": "long long", "int32": "int",
            "bool": "bool", "int8": "signed char", "uint8": "unsigned char",
            "float16": None}
_PARAM = re.compile(r"^\s*(raw\s+)?(\w+)\s+(\w+)\s*$")

_HEADER = r"""
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
/* CuPy's own definitions (cupy/math_constants.h, carray.cuh): a kernel uses them as given */
#define CUDART_INF_F ((float)INFINITY)
#define CUDART_INF ((double)INFINITY)
#define CUDART_NAN_F ((float)NAN)
#define CUDART_NAN ((double)NAN)
#define min(a, b) ((a) < (b) ? (a) : (b))
#define max(a, b) ((a) > (b) ? (a) : (b))
#define _atomic_add(lvalue, v) ((lvalue) += (v))
static long long _oob_index = -1, _oob_size = 0; static int _oob_array = -1;
static inline long long _chk(long long j, long long n, int which) {
    if (j < 0 || j >= n) {
        if (_oob_array < 0) { _oob_index = j; _oob_size = n; _oob_array = which; }
        return 0;   /* the kernel stops at this thread; nothing past the end is touched */
    }
    return j;
}
"""


class KernelIndexError(IndexError):
    """A kernel indexed a raw array outside its bounds."""


def parse_params(spec):
    """CuPy's parameter list, e.g. ``"raw T x, int64 H"`` -> [(raw, type, name)]."""
    params = []
    for part in (p for p in spec.split(",") if p.strip()):
        m = _PARAM.match(part)
        if m is None:
            raise ValueError(f"ElementwiseKernel: cannot parse parameter {part!r}")
        params.append((bool(m.group(1)), m.group(2), m.group(3)))
    return params


def _matching_bracket(text, start):
    depth = 0
    for k in range(start, len(text)):
        if text[k] == "[":
            depth += 1
        elif text[k] == "]":
            depth -= 1
            if depth == 0:
                return k
    raise ValueError("ElementwiseKernel: unbalanced [ in the kernel body")


def checked_body(body, raw_names):
    """Rewrite each ``name[expr]`` of a raw array into a bounds-checked access."""
    # CUDA's atomicAdd(&a[k], v): a plain add here (one CPU thread runs the loop)
    for name in raw_names:
        body = re.sub(r"atomicAdd\s*\(\s*&\s*" + name + r"\s*\[", f"_atomic_add({name}[", body)
    for which, name in enumerate(raw_names):
        if re.search(r"&\s*" + name + r"\s*\[", body):
            raise ValueError(f"ElementwiseKernel: the body takes the address of an element of "
                             f"raw array {name!r} (&{name}[...]); the stand-in cannot "
                             "bounds-check pointer arithmetic: index the array itself")
        pattern = re.compile(r"\b" + name + r"\s*\[")
        while (m := pattern.search(body)):
            end = _matching_bracket(body, m.end() - 1)
            expr = body[m.end():end]
            body = (body[:m.start()] + f"{name}[_chk(({expr}), _n_{name}, {which})]"
                    + body[end + 1:])
            # the rewritten subscript starts with "[_chk(": skip past it next time
            body = body.replace(f"{name}[_chk(", f"{name}\0[_chk(", 1)
        body = body.replace(f"{name}\0[", f"{name}[")
    return body


def c_source(params, out_params, body, preamble, types):
    """The C translation unit for one kernel instantiation."""
    if "math_constants.h" in preamble:
        raise RuntimeError("ElementwiseKernel: the preamble includes <math_constants.h>; CuPy "
                           "already defines CUDART_INF and the other constants (NVRTC warns of "
                           "redefinitions, and without the CUDA toolkit's headers the kernel "
                           "fails to compile)")
    lines = [_HEADER]
    for placeholder, dtype in types.items():
        lines.append(f"typedef {_C_TYPES[str(dtype)]} {placeholder};")
    lines.append(preamble)
    args, loads, stores = [], [], []
    raw_names = [name for raw, _, name in params if raw]
    for raw, typ, name in params:
        ctype = typ if typ in types else _C_TYPES[typ]
        is_out = name in out_params
        if raw:
            args.append(f"{ctype} *{name}, long long _n_{name}")
        elif is_out:
            args.append(f"{ctype} *_p_{name}, long long _s_{name}")
            loads.append(f"{ctype} {name} = 0;")
            stores.append(f"_p_{name}[i * _s_{name}] = {name};")
        else:
            args.append(f"{ctype} *_p_{name}, long long _s_{name}")
            loads.append(f"const {ctype} {name} = _p_{name}[i * _s_{name}];")
    body = checked_body(body, raw_names)
    lines.append(f"""
int run(long long _size, {", ".join(args)}, long long *_err) {{
    for (long long i = 0; i < _size; ++i) {{
        {" ".join(loads)}
        {{
{body}
        }}
        if (_oob_array >= 0) {{ _err[0] = _oob_array; _err[1] = _oob_index; _err[2] = _oob_size;
                               _err[3] = i; _oob_array = -1; return 1; }}
        {" ".join(stores)}
    }}
    return 0;
}}
""")
    return "\n".join(lines)


def compile_source(source, name):
    """A ctypes handle to the shared library built from ``source`` (cached by hash)."""
    os.makedirs(_CACHE, exist_ok=True)
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    lib = os.path.join(_CACHE, f"{name}_{digest}.so")
    if not os.path.exists(lib):
        tmp = f"{lib}.{os.getpid()}.tmp"     # parallel processes never share a file
        src = tmp + ".c"
        with open(src, "w") as f:
            f.write(source)
        out = subprocess.run([CC, "-O1", "-std=c11", "-shared", "-fPIC", "-Wall", "-Werror",
                              "-Wno-unused-variable", "-Wno-unused-function", "-o", tmp, src,
                              "-lm"], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"ElementwiseKernel {name!r} does not compile ({src}):\n"
                               f"{out.stderr}")
        os.replace(tmp, lib)
        os.unlink(src)
    return ctypes.CDLL(lib)


def pointer(array):
    return array.ctypes.data_as(ctypes.c_void_p)


C_SCALARS = {"int64": ctypes.c_longlong, "int32": ctypes.c_int, "bool": ctypes.c_bool,
             "float32": ctypes.c_float, "float64": ctypes.c_double}


def scalar_ctype(dtype):
    return C_SCALARS[str(np.dtype(dtype))]
