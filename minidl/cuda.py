"""``minidl.cuda``: PyTorch's ``torch.cuda`` spellings for the few things a
training script asks of the GPU (``device = "cuda" if minidl.cuda.is_available()
else "cpu"``, ``minidl.cuda.synchronize()`` before reading a clock)."""
from __future__ import annotations

from .backend import Device, DeviceError, _load_cupy
from .backend import cuda_is_available as is_available

__all__ = ["is_available", "device_count", "current_device", "set_device", "synchronize"]


def device_count() -> int:
    """How many GPUs are visible (0 without CuPy or a GPU)."""
    return _load_cupy().cuda.runtime.getDeviceCount() if is_available() else 0


def current_device() -> int:
    """The index of the GPU that plain ``"cuda"`` means."""
    return _load_cupy().cuda.runtime.getDevice()


def set_device(device) -> None:
    """Make GPU ``device`` (an index, ``"cuda:i"`` or ``minidl.device``) the current one."""
    if isinstance(device, int):
        index = device
    elif isinstance(device, Device):
        index = device.index if device.type == "cuda" else None
    else:   # a str (or minidl.device) names its index after the colon
        tail = str(device).partition(":")[2] if str(device).startswith("cuda") else ""
        index = int(tail) if tail.isdigit() else None
    if index is None:
        raise ValueError(f"set_device: expected a GPU index or 'cuda:i', got {device!r}")
    if not 0 <= index < device_count():
        raise DeviceError(f"set_device: GPU {index} was asked for, but {device_count()} "
                          "are visible")
    _load_cupy().cuda.runtime.setDevice(index)


def synchronize() -> None:
    """Wait until the current GPU has finished all its work (for timing)."""
    _load_cupy().cuda.runtime.deviceSynchronize()
