"""The ``F`` namespace: every differentiable op a model needs, PyTorch's names.

``from minidl.nn import functional as F`` then ``F.relu``, ``F.conv2d``,
``F.cross_entropy``, ``F.scaled_dot_product_attention``, ...
"""
from __future__ import annotations

from ..ops.activation import dropout, gelu, log_softmax, softmax
from ..ops.arith import relu, sigmoid, tanh
from ..ops.conv import adaptive_avg_pool2d, avg_pool2d, conv2d, max_pool2d
from ..ops.attention import scaled_dot_product_attention
from ..ops.linear import linear
from ..ops.loss import (binary_cross_entropy_with_logits, cross_entropy, mse_loss, nll_loss)
from ..ops.norm import batch_norm, layer_norm
from ..ops.shape import flatten, pad


__all__ = ["relu", "sigmoid", "tanh", "gelu", "softmax", "log_softmax", "dropout", "linear",
           "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "pad", "flatten",
           "cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy_with_logits",
           "layer_norm", "batch_norm", "scaled_dot_product_attention"]
