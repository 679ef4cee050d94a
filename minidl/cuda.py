"""``minidl.cuda.is_available()``, PyTorch's spelling of :func:`minidl.cuda_is_available`
(``device = "cuda" if minidl.cuda.is_available() else "cpu"``)."""
from __future__ import annotations

from .backend import cuda_is_available as is_available

__all__ = ["is_available"]
