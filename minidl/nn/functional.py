"""The ``F`` namespace: every differentiable op a model needs, PyTorch's names.

``from minidl.nn import functional as F`` then ``F.relu``, ``F.conv2d``,
``F.cross_entropy``, ``F.scaled_dot_product_attention``, ...
"""
from __future__ import annotations

from ..ops import arith as _arith
from ..ops.activation import dropout, gelu, leaky_relu, log_softmax, silu, softmax
from ..ops.arith import sigmoid, tanh
from ..ops.conv import adaptive_avg_pool2d, avg_pool2d, conv2d, max_pool2d
from ..ops.attention import scaled_dot_product_attention
from ..ops.detection import (gather_locations, gaussian_focal_loss, generalized_box_iou_loss,
                             heatmap_peaks)
from ..ops.linear import linear
from ..ops.loss import (binary_cross_entropy_with_logits, cross_entropy, mse_loss, nll_loss)
from ..ops.loss import l1_loss
from ..ops.norm import batch_norm, layer_norm
from ..ops.shape import flatten, one_hot, pad
from ..ops.bce import binary_cross_entropy, dropout2d
from ..ops.inplace import apply_inplace
from ..ops.embedding import embedding


def relu(input, inplace=False):
    """max(input, 0), with ``torch.nn.functional.relu``'s signature;
    ``inplace=True`` changes ``input`` and returns it, as PyTorch's (see
    :mod:`minidl.ops.inplace`)."""
    if inplace:
        return apply_inplace("relu", _arith.relu, input)
    return _arith.relu(input)


def relu_(input):
    """``relu(input, inplace=True)``."""
    return apply_inplace("relu_", _arith.relu, input)


__all__ = ["relu", "leaky_relu", "silu", "sigmoid", "tanh", "gelu", "softmax", "log_softmax",
           "dropout", "linear", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "pad",
           "flatten", "one_hot", "cross_entropy", "nll_loss", "mse_loss",
           "binary_cross_entropy_with_logits", "layer_norm", "batch_norm",
           "scaled_dot_product_attention",
           "l1_loss", "gather_locations", "gaussian_focal_loss", "generalized_box_iou_loss",
           "heatmap_peaks"]
__all__ += ["relu_", "binary_cross_entropy", "dropout2d"]
__all__ += ["embedding"]


from .._missing import module_getattr as _module_getattr  # noqa: E402

__getattr__ = _module_getattr("minidl.nn.functional", globals())
