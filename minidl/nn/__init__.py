"""Neural-network building blocks with PyTorch's names: ``minidl.nn``.

``Module``/``Parameter``/containers in :mod:`.module`; layers in :mod:`.layers`,
:mod:`.norm`, :mod:`.attention`; losses in :mod:`.losses`; the functional
API in :mod:`.functional` (``from minidl.nn import functional as F``);
initialisers in :mod:`.init`; ``clip_grad_norm_`` in :mod:`.utils`.
"""
from __future__ import annotations

from . import functional, init, utils
from . import parallel
from .attention import AttentionPool2d, ChannelAttention, MultiheadAttention
from .layers import (AdaptiveAvgPool2d, AvgPool2d, Conv2d, Dropout, Flatten, GELU, Identity,
                     LeakyReLU, Linear, MaxPool2d, ReLU, Sigmoid, SiLU, Softmax, Tanh)
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss, NLLLoss
from .losses import L1Loss
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential
from .norm import BatchNorm1d, BatchNorm2d, LayerNorm
from .layers import Dropout2d
from .losses import BCELoss
from .embedding import Embedding
from .transformer import TransformerEncoder, TransformerEncoderLayer

__all__ = ["Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "Linear", "Conv2d",
           "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "ReLU", "LeakyReLU", "SiLU", "GELU",
           "Sigmoid", "Tanh", "Softmax", "Dropout", "Flatten", "Identity", "LayerNorm",
           "BatchNorm1d", "BatchNorm2d", "MultiheadAttention", "ChannelAttention",
           "AttentionPool2d", "CrossEntropyLoss", "NLLLoss", "MSELoss", "BCEWithLogitsLoss",
           "functional", "init", "utils",
           "L1Loss",
           "parallel"]
__all__ += ["Dropout2d", "BCELoss"]
__all__ += ["Embedding", "TransformerEncoderLayer", "TransformerEncoder"]


from .._missing import module_getattr as _module_getattr  # noqa: E402

__getattr__ = _module_getattr("minidl.nn", globals())
