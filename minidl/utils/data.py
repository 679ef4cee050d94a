"""``minidl.utils.data``: the data classes where ``torch.utils.data`` keeps them.

``from minidl.utils.data import DataLoader, Dataset, TensorDataset`` works
as in PyTorch; the classes are :mod:`minidl.data`'s, re-exported.
"""
from ..data.dataloader import DataLoader, get_worker_info
from ..data.dataset import (ConcatDataset, Dataset, Subset, TensorDataset, default_collate,
                            random_split)

__all__ = ["DataLoader", "Dataset", "TensorDataset", "Subset", "ConcatDataset", "random_split",
           "default_collate", "get_worker_info"]
