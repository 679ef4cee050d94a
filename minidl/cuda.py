"""``minidl.cuda``: PyTorch's ``torch.cuda`` spellings of what minidl has
(``device = "cuda" if minidl.cuda.is_available() else "cpu"``)."""
from __future__ import annotations

from .backend import cuda_is_available as is_available


def device_count() -> int:
    """The number of visible GPUs (0 without CUDA)."""
    from .accelerator import device_count as count
    return count()


def current_device() -> int:
    """The index of the current GPU (an error without one, as PyTorch's)."""
    from .accelerator import current_device_index
    index = current_device_index()
    if index < 0:
        raise RuntimeError("cuda.current_device: no CUDA device is available")
    return index


def synchronize(device=None) -> None:
    """Wait for the GPU's queued work."""
    from .accelerator import synchronize as sync
    sync(device)


def manual_seed(seed: int) -> None:
    """Seed minidl's generators (``minidl.manual_seed`` seeds the GPU's stream too)."""
    from .random import manual_seed as seed_all
    seed_all(seed)


manual_seed_all = manual_seed

__all__ = ["is_available", "device_count", "current_device", "synchronize", "manual_seed",
           "manual_seed_all"]
