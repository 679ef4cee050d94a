"""Loss modules: thin wrappers over the fused functions in :mod:`minidl.ops.loss`.

Constructor parameters are PyTorch's, in PyTorch's positional order, the
deprecated ``size_average``/``reduce`` included: given, they select
``self.reduction`` by PyTorch's rule, with a warning (see
:func:`minidl.ops.loss.legacy_reduction`).
"""
from __future__ import annotations

from ..ops import loss as L
from ..ops.bce import binary_cross_entropy
from .module import Module


class CrossEntropyLoss(Module):
    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0):
        super().__init__()
        self.weight, self.ignore_index = weight, ignore_index
        self.reduction = L.legacy_reduction("CrossEntropyLoss", size_average, reduce, reduction)
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return L.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(Module):
    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean"):
        super().__init__()
        self.weight, self.ignore_index = weight, ignore_index
        self.reduction = L.legacy_reduction("NLLLoss", size_average, reduce, reduction)

    def forward(self, input, target):
        return L.nll_loss(input, target, self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class MSELoss(Module):
    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        self.reduction = L.legacy_reduction("MSELoss", size_average, reduce, reduction)

    def forward(self, input, target):
        return L.mse_loss(input, target, reduction=self.reduction)


class L1Loss(Module):
    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        self.reduction = L.legacy_reduction("L1Loss", size_average, reduce, reduction)

    def forward(self, input, target):
        return L.l1_loss(input, target, reduction=self.reduction)


class BCEWithLogitsLoss(Module):
    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean",
                 pos_weight=None):
        super().__init__()
        self.weight, self.pos_weight = weight, pos_weight
        self.reduction = L.legacy_reduction("BCEWithLogitsLoss", size_average, reduce, reduction)

    def forward(self, input, target):
        return L.binary_cross_entropy_with_logits(input, target, self.weight,
                                                  reduction=self.reduction,
                                                  pos_weight=self.pos_weight)


class BCELoss(Module):
    """Binary cross-entropy on probabilities, as ``torch.nn.BCELoss``."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        self.weight = weight
        self.reduction = L.legacy_reduction("BCELoss", size_average, reduce, reduction)

    def forward(self, input, target):
        return binary_cross_entropy(input, target, self.weight, reduction=self.reduction)
