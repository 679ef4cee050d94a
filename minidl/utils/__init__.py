"""``minidl.utils``: PyTorch's ``torch.utils`` spelling (``minidl.utils.data``)."""
from . import data

__all__ = ["data"]
