"""Optimizers and learning-rate schedulers: ``minidl.optim``, PyTorch's names."""
from __future__ import annotations

from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD
from .adaptive import Adadelta, Adagrad, RMSprop

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]
__all__ += ["RMSprop", "Adagrad", "Adadelta"]
