"""``minidl.accelerator``: PyTorch's ``torch.accelerator`` API.

minidl's one accelerator is CUDA through CuPy:
``device = minidl.accelerator.current_accelerator() if minidl.accelerator.is_available()
else "cpu"``.
"""
from __future__ import annotations

from . import backend


def is_available() -> bool:
    """True when a CUDA device (through CuPy) can be used."""
    return backend.cuda_is_available()


def current_accelerator(check_available=False):
    """``minidl.device('cuda')`` when CuPy is installed (and, with
    ``check_available``, a GPU is visible), else None, as PyTorch's."""
    if check_available:
        return backend.Device("cuda") if is_available() else None
    try:
        import cupy  # noqa: F401  (PyTorch answers from the build, not the hardware)
    except ImportError:
        return None
    return backend.Device("cuda")


def device_count() -> int:
    """The number of visible GPUs (0 without CUDA)."""
    if not is_available():
        return 0
    return backend.cupy_module().cuda.runtime.getDeviceCount()


def current_device_index() -> int:
    """The index of the current GPU; -1 without an accelerator, as PyTorch's."""
    if not is_available():
        return -1
    return backend.cupy_module().cuda.runtime.getDevice()


def set_device_index(device) -> None:
    """Make GPU ``device`` (an int, 'cuda:N' or a device) the current one."""
    index = device if isinstance(device, int) else backend.Device(device).index or 0
    if not is_available():
        raise RuntimeError("accelerator.set_device_index: no accelerator is available "
                           "(minidl's accelerator is CUDA through CuPy)")
    backend.cupy_module().cuda.runtime.setDevice(index)


def synchronize(device=None) -> None:
    """Wait for the GPU's queued work (nothing to wait for without one)."""
    if is_available():
        backend.cupy_module().cuda.Device().synchronize()


__all__ = ["is_available", "current_accelerator", "device_count", "current_device_index",
           "set_device_index", "synchronize"]
