"""Ops of centre-based object detection (CenterNet style: no anchors, no NMS).

Notation: B batch, C channels, H x W a feature map, HW = H * W, K objects
(locations) per image, P locations per object (a neighbourhood), p the
sigmoid of a heatmap logit, y its target in [0, 1] (1 at an object's centre).

* :func:`gather_locations` - features at flat locations: (B, C, H, W) and
  (B, ...) indices -> (B, ..., C); the gradient scatter-adds back.
* :func:`gaussian_focal_loss` - CenterNet's penalty-reduced focal loss on a
  heatmap of Gaussian bumps.
* :func:`generalized_box_iou_loss` - 1 - GIoU of xyxy boxes (torchvision's).
* :func:`heatmap_peaks` - the k highest local maxima of a heatmap (3x3 max
  pooling instead of NMS); not differentiable.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Function, Tensor, as_array, as_tensor, no_grad
from .arith import maximum, minimum
from .loss import _check_reduction, _reduce, _unreduce
from .shape import getitem


class GatherLocations(Function):
    """out[b, ..., :] = x[b, :, index[b, ...]] over the flattened H x W."""

    def forward(self, x, index):
        xp = backend.get_array_module(x)
        B, C, H, W = x.shape
        flat = x.reshape(B, C, H * W)
        batch = xp.arange(B).reshape((B,) + (1,) * (index.ndim - 1))
        # batch and index are split by a slice, so NumPy puts their dims first: (B, ..., C)
        self.key, self.in_shape = (batch, slice(None), index), (B, C, H * W)
        self.x_shape, self.dtype = x.shape, x.dtype
        return flat[self.key]

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        gx = xp.zeros(self.in_shape, dtype=self.dtype)
        backend.scatter_add(gx, self.key, gy)
        return gx.reshape(self.x_shape), None


def gather_locations(input, index):
    """The C features at each location: ``input`` (B, C, H, W), ``index``
    (B, ...) integers in [0, H*W) (row-major: y * W + x) -> (B, ..., C).

    As ``torch.gather(input.flatten(2).transpose(1, 2), 1, index[..., None]
    .expand(-1, -1, C))`` for a (B, K) index, for any number of index dims.
    A location gathered twice gets both gradients. Indices are checked on the
    CPU; on CUDA (where a check would wait for the GPU) they must be valid.
    """
    x = as_tensor(input)
    idx = as_array(index)
    if x.ndim != 4:
        raise ValueError(f"gather_locations: expected input (B, C, H, W), got {tuple(x.shape)}")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"gather_locations: index must be an integer tensor, got dtype "
                        f"{idx.dtype}")
    if idx.ndim < 1 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"gather_locations: index {tuple(idx.shape)} must be (B, ...) with "
                         f"B = {x.shape[0]}, the input's batch")
    HW = x.shape[2] * x.shape[3]
    if isinstance(idx, np.ndarray) and idx.size and (idx.min() < 0 or idx.max() >= HW):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise IndexError(f"gather_locations: index {int(bad)} is out of bounds for "
                         f"{x.shape[2]} x {x.shape[3]} = {HW} locations")
    return GatherLocations()(x, Tensor._wrap(idx))


class GaussianFocalLoss(Function):
    """l = -(1 - p)^a log p where y == 1, else -(1 - y)^b p^a log(1 - p)."""

    def __init__(self, alpha, beta, reduction):
        self.alpha, self.beta, self.reduction = alpha, beta, reduction

    def forward(self, x, y):
        xp = backend.get_array_module(x)
        a = self.alpha
        # log p = -softplus(-x) and log(1 - p) = -softplus(x): stable for large |x|
        log_p = -xp.logaddexp(0, -x).astype(x.dtype, copy=False)
        log_q = -xp.logaddexp(0, x).astype(x.dtype, copy=False)
        p, q = xp.exp(log_p), xp.exp(log_q)
        pos = y == 1
        w = xp.where(pos, 0, (1 - y) ** self.beta).astype(x.dtype, copy=False)
        loss = xp.where(pos, -(q ** a) * log_p, -w * p ** a * log_q)
        self.saved = (p, q, log_p, log_q, pos, w)
        self.shape = loss.shape
        return _reduce(loss, self.reduction, xp, x.dtype)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        p, q, log_p, log_q, pos, w = self.saved
        a = self.alpha
        g = _unreduce(gy, self.shape, self.reduction, xp)
        # d/dx with dp/dx = p q: positives a p q^a log p - q^(a+1); negatives
        # w (p^(a+1) - a p^a q log q)
        gx = xp.where(pos, a * p * q ** a * log_p - q ** (a + 1),
                      w * (p ** (a + 1) - a * p ** a * q * log_q))
        return (g * gx).astype(p.dtype, copy=False), None


def gaussian_focal_loss(input, target, alpha=2.0, beta=4.0, reduction="sum"):
    """CenterNet's focal loss (Law & Deng, CornerNet; Zhou et al., Objects as
    Points) on heatmap logits ``input`` and a target heatmap of Gaussian bumps
    ``target`` (same shape, values in [0, 1], exactly 1 at object centres).

    Per element, with p = sigmoid(input)::

        -(1 - p)^alpha log(p)                         where target == 1
        -(1 - target)^beta p^alpha log(1 - p)         elsewhere

    ``reduction`` 'sum' (default: CenterNet divides the sum by the number of
    objects), 'mean' or 'none'. No gradient flows to ``target``.
    """
    _check_reduction("gaussian_focal_loss", reduction)
    x, y = as_tensor(input), as_tensor(target)
    if x.shape != y.shape:
        raise ValueError(f"gaussian_focal_loss: target {tuple(y.shape)} must have the "
                         f"input's shape {tuple(x.shape)}")
    ydata = y._data.astype(x._data.dtype, copy=False)
    return GaussianFocalLoss(float(alpha), float(beta), reduction)(x, Tensor._wrap(ydata))


def _area(x0, y0, x1, y1):
    return (x1 - x0) * (y1 - y0)


def generalized_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
    """1 - GIoU (Rezatofighi et al. 2019) of matching boxes, as
    ``torchvision.ops.generalized_box_iou_loss``: ``boxes1``, ``boxes2`` (..., 4)
    as (x0, y0, x1, y1) with x0 <= x1, y0 <= y1; returns (...) or its
    'mean'/'sum'. GIoU = IoU - (|C| - |A u B|) / |C|, C the smallest box
    enclosing both; ``eps`` keeps empty boxes finite."""
    _check_reduction("generalized_box_iou_loss", reduction)
    a, b = as_tensor(boxes1), as_tensor(boxes2)
    if a.shape != b.shape or a.ndim < 1 or a.shape[-1] != 4:
        raise ValueError(f"generalized_box_iou_loss: expected two (..., 4) boxes of one shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    ax0, ay0, ax1, ay1 = (getitem(a, (Ellipsis, i)) for i in range(4))
    bx0, by0, bx1, by1 = (getitem(b, (Ellipsis, i)) for i in range(4))
    inter = (minimum(ax1, bx1) - maximum(ax0, bx0)).clamp(min=0) * \
        (minimum(ay1, by1) - maximum(ay0, by0)).clamp(min=0)
    union = _area(ax0, ay0, ax1, ay1) + _area(bx0, by0, bx1, by1) - inter
    iou = inter / (union + eps)
    hull = _area(minimum(ax0, bx0), minimum(ay0, by0), maximum(ax1, bx1), maximum(ay1, by1))
    loss = 1 - (iou - (hull - union) / (hull + eps))
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum() * 0
    return loss.sum() if reduction == "sum" else loss


def heatmap_peaks(heatmap, k, kernel_size=3):
    """The ``k`` highest local maxima of ``heatmap`` (B, C, H, W), as CenterNet
    decodes: a location counts when it equals the maximum of its
    ``kernel_size`` window (max pooling in place of NMS), then the top k over
    C x H x W. Returns ``(scores, classes, index)``, each (B, k): the value,
    the channel and the flat location y * W + x (for :func:`gather_locations`).
    Not differentiable (the outputs carry no gradient)."""
    from .conv import max_pool2d
    h = as_tensor(heatmap)
    if h.ndim != 4:
        raise ValueError(f"heatmap_peaks: expected (B, C, H, W), got {tuple(h.shape)}")
    B, C, H, W = h.shape
    if not 1 <= k <= C * H * W:
        raise ValueError(f"heatmap_peaks: k must be in [1, {C * H * W}] (C x H x W), got {k}")
    if kernel_size % 2 != 1:
        raise ValueError(f"heatmap_peaks: kernel_size must be odd, got {kernel_size}")
    with no_grad():
        pooled = max_pool2d(h.detach(), kernel_size, stride=1, padding=kernel_size // 2)
    data = h._data
    xp = backend.get_array_module(data)
    kept = xp.where(pooled._data == data, data, -xp.inf).reshape(B, C * H * W)
    top = xp.argpartition(-kept, k - 1, axis=1)[:, :k] if k < C * H * W else \
        xp.broadcast_to(xp.arange(C * H * W), (B, C * H * W))
    order = xp.argsort(-xp.take_along_axis(kept, top, axis=1), axis=1, kind="stable")
    top = xp.take_along_axis(top, order, axis=1)
    scores = xp.take_along_axis(data.reshape(B, C * H * W), top, axis=1)
    return (Tensor._wrap(scores), Tensor._wrap(top // (H * W)),
            Tensor._wrap(top % (H * W)))
