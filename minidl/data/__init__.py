"""Datasets, data loading and batch transforms.

``DataLoader`` batches any map-style dataset, whole arrays at a time for
array datasets; ``MNIST``/``FashionMNIST`` find, fetch and verify the
standard files (see :mod:`minidl.data.mnist`); transforms work on batches.
``python -m minidl.data mnist [--root DIR]`` prepares the data.
"""
from .dataloader import DataLoader
from .dataset import Dataset, Subset, TensorDataset, default_collate, random_split
from .distributed import DistributedSampler
from .dataset import ConcatDataset
from .files import DataError, default_root
from .idx import IDXError, read_idx, write_idx
from .mnist import MNIST, FashionMNIST
from .transforms import Compose, Normalize, RandomShift, ToFloat
from .transforms import ToTensor
from .dataloader import get_worker_info
from .detection import MNISTDetection, coco_detections, coco_map

__all__ = [
    "DataLoader", "Dataset", "TensorDataset", "Subset", "random_split", "default_collate",
    "MNIST", "FashionMNIST", "Compose", "Normalize", "RandomShift", "ToFloat",
    "DataError", "IDXError", "read_idx", "write_idx", "default_root",
    "ConcatDataset", "ToTensor", "get_worker_info",
    "MNISTDetection", "coco_detections", "coco_map",
    "DistributedSampler",
]
