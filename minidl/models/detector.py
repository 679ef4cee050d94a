"""The article's detection model (section 3.2): CNN + localisation + attention.

The article's six steps, and where each one is here:

1. preprocess the image - the caller (``ToFloat``; canvases from
   :class:`minidl.data.MNISTDetection`);
2. a CNN of two convs (3x3 then 5x5), each followed by a 2x2 max pool -
   ``backbone``: a feature map at stride 4 (16 x 16 for a 64 x 64 canvas);
3. every image through the CNN gives its feature maps - ``backbone(images)``;
4. a localisation network gives where each object is - ``localiser`` (two
   3x3 convs) and ``locate`` (a 1x1 conv): per cell, an object-centre
   heatmap logit, the centre's offset inside the cell and the box's log
   size, CenterNet style (Zhou et al. 2019, "Objects as Points"), so there
   are no anchors and no NMS: objects are the heatmap's local maxima;
5. attention fuses, for each object, the features of the region around it -
   ``attend`` (:class:`NeighbourhoodAttention`): a query from the object's
   centre attends to the keys of the (2r+1) x (2r+1) cells around it, with a
   learned embedding of each relative position, cells off the map masked;
6. the fused features predict each object's class, size and position -
   ``classify`` (10 digits) and ``refine`` (a correction of the
   localiser's offset and log size).

Notation: B batch, K objects per image, H x W the stride-4 map, HW = H * W,
C feature channels, P = (2r+1)^2 neighbourhood cells. Boxes are (x0, y0,
x1, y1) in input pixels.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend, nn
from ..nn import functional as F
from ..ops.detection import gather_locations, heatmap_peaks
from ..ops.shape import concat
from ..tensor import Tensor, no_grad


class NeighbourhoodAttention(nn.Module):
    """Each object's query attends to the features around its centre.

    ``forward(features (B, C, H, W), centres (B, K))`` -> (fused (B, K, C),
    weights (B, K, P)): scaled dot-product attention from
    ``query(features at the centre)`` to ``key``/``value`` of the features of
    the ``(2 radius + 1)^2`` cells around it, each plus a learned embedding of
    its offset from the centre (so the attention knows where a feature lies);
    cells outside the map take no part. The result is added to the centre's
    own features (a residual), as a transformer block does.
    """

    def __init__(self, channels, radius=3, heads=4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"NeighbourhoodAttention: {channels} channels do not split into "
                             f"{heads} heads")
        self.radius, self.heads = int(radius), int(heads)
        side = 2 * self.radius + 1
        self.position = nn.Parameter(np.zeros((side * side, channels), np.float32))
        nn.init.normal_(self.position, std=0.02)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)

    def neighbourhood(self, centres, H, W):
        """(indices (B, K, P) clipped into the map, inside (B, K, P) bool)."""
        c = centres._data if isinstance(centres, Tensor) else centres
        xp = backend.get_array_module(c)
        steps = xp.arange(-self.radius, self.radius + 1)
        dy, dx = xp.repeat(steps, len(steps)), xp.tile(steps, len(steps))
        y = (c // W)[..., None] + dy
        x = (c % W)[..., None] + dx
        inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
        return xp.clip(y, 0, H - 1) * W + xp.clip(x, 0, W - 1), inside

    def forward(self, features, centres):
        B, C, H, W = features.shape
        centre = gather_locations(features, centres)                  # (B, K, C)
        index, inside = self.neighbourhood(centres, H, W)
        around = gather_locations(features, index) + self.position     # (B, K, P, C)
        K, P, h = centre.shape[1], around.shape[2], self.heads

        def split(t, length):   # (B, K, length, C) -> (B, K, heads, length, C / heads)
            return t.reshape(B, K, length, h, C // h).transpose(0, 1, 3, 2, 4)
        q = split(self.query(centre).unsqueeze(2), 1)
        fused, weights = F.scaled_dot_product_attention(
            q, split(self.key(around), P), split(self.value(around), P),
            attn_mask=inside[:, :, None, None, :], return_weights=True)
        # weights (B, K, heads, 1, P): each head a glimpse of another part of the digit
        return centre + self.out(fused.reshape(B, K, C)), weights.mean(axis=2).reshape(B, K, P)


class CNNAttentionDetector(nn.Module):
    """Detects digits: ``forward(images (B, 1, S, S), centres=None, k=10)``.

    ``centres`` (B, K) flat cells of the objects to describe (training gives
    the true centres); without them, the ``k`` highest heatmap peaks. Returns
    a dict: ``heatmap`` (B, 1, H, W) logits, ``offset``/``log_size`` (B, K, 2)
    the localiser's estimate at the centres, ``refined_offset``/
    ``refined_log_size`` after the attention stage, ``class_logits``
    (B, K, num_classes), ``boxes`` (B, K, 4) pixels, ``centres``,
    ``attention`` (B, K, P) (None when ``attention=False``).

    ``attention=False`` is the ablation: the heads see the plain features at
    the object's centre instead of the attention's fusion of its neighbourhood.
    """

    STRIDE = 4   # two 2x2 pools

    def __init__(self, num_classes=10, channels=(8, 32), width=32, hidden=128, radius=3,
                 heads=4, attention=True, in_channels=1):
        super().__init__()
        c1, c2 = channels
        self.num_classes, self.in_channels = num_classes, in_channels
        self.use_attention = bool(attention)
        self.backbone = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(2))
        self.localiser = nn.Sequential(
            nn.Conv2d(c2, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.locate = nn.Conv2d(width, 5, kernel_size=1)   # heatmap, offset (2), log size (2)
        # CenterNet's prior: objects are rare, so the heatmap starts near 0.01
        nn.init.constant_(self.locate.bias, 0.0)
        self.locate.bias._data[0] = -math.log((1 - 0.01) / 0.01)
        self.attend = NeighbourhoodAttention(width, radius, heads) if attention else None
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU())
        self.classify = nn.Linear(hidden, num_classes)
        self.refine = nn.Linear(hidden, 4)
        nn.init.zeros_(self.refine.weight)
        nn.init.zeros_(self.refine.bias)

    def forward(self, images, centres=None, k=10):
        if images.ndim != 4 or images.shape[1] != self.in_channels or \
                images.shape[2] % self.STRIDE or images.shape[3] % self.STRIDE:
            raise ValueError(f"CNNAttentionDetector: expected images (B, {self.in_channels}, "
                             f"S, S) with S a multiple of {self.STRIDE}, got "
                             f"{tuple(images.shape)}")
        features = self.localiser(self.backbone(images))              # (B, C, H, W)
        loc = self.locate(features)                                    # (B, 5, H, W)
        heatmap, offset_map, size_map = loc[:, 0:1], loc[:, 1:3], loc[:, 3:5]
        if centres is None:
            with no_grad():
                centres = heatmap_peaks(F.sigmoid(heatmap), min(k, heatmap[0, 0].numel()))[2]
        offset = gather_locations(offset_map, centres)                 # (B, K, 2)
        log_size = gather_locations(size_map, centres)
        if self.attend is not None:
            fused, weights = self.attend(features, centres)
        else:
            fused, weights = gather_locations(features, centres), None
        h = self.head(fused)
        delta = self.refine(h)
        refined_offset, refined_log_size = offset + delta[..., 0:2], log_size + delta[..., 2:4]
        boxes = self.decode(centres, refined_offset, refined_log_size, features.shape[3])
        return {"heatmap": heatmap, "offset": offset, "log_size": log_size,
                "refined_offset": refined_offset, "refined_log_size": refined_log_size,
                "class_logits": self.classify(h), "boxes": boxes, "centres": centres,
                "attention": weights}

    def decode(self, centres, offset, log_size, W):
        """Boxes (B, K, 4) in pixels from cells, offsets and log sizes (in cells)."""
        c = centres._data if isinstance(centres, Tensor) else centres
        xp = backend.get_array_module(c)
        dtype = offset._data.dtype
        cell = Tensor._wrap(xp.stack([c % W, c // W], axis=-1).astype(dtype))
        centre = (cell + offset) * self.STRIDE
        half = log_size.exp() * (self.STRIDE / 2)
        return concat([centre - half, centre + half], axis=-1)

    @no_grad()
    def detect(self, images, k=10, threshold=0.05):
        """Per image, (boxes (n, 4), labels (n,), scores (n,)) NumPy arrays: the
        ``k`` highest heatmap peaks whose score (peak x class probability) is
        at least ``threshold``."""
        was_training = self.training
        self.eval()
        try:
            out = self.forward(images, k=k)
        finally:
            self.train(was_training)
        heat = F.sigmoid(out["heatmap"])
        B = heat.shape[0]
        peak = np.take_along_axis(backend.as_numpy(heat._data).reshape(B, -1),
                                  backend.as_numpy(out["centres"]._data if isinstance(
                                      out["centres"], Tensor) else out["centres"]), axis=1)
        probs = backend.as_numpy(F.softmax(out["class_logits"], dim=-1)._data)
        labels = probs.argmax(-1)
        scores = peak * probs.max(-1)
        boxes = backend.as_numpy(out["boxes"]._data)
        results = []
        for b in range(B):
            keep = scores[b] >= threshold
            results.append((boxes[b][keep], labels[b][keep], scores[b][keep]))
        return results


def gaussian_radius(h, w, min_overlap=0.7):
    """CenterNet's radius (in cells) of the Gaussian bump for an h x w box: how
    far a corner may move while the box keeps IoU >= ``min_overlap`` (the
    smallest of its three cases, as the reference code computes them)."""
    b1, c1 = h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    b2, c2 = 2 * (h + w), (1 - min_overlap) * w * h
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    return min((b1 + math.sqrt(b1 * b1 - 4 * c1)) / 2,
               (b2 + math.sqrt(b2 * b2 - 16 * c2)) / 2,
               (b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / 2)


class CenterNetTargets:
    """Boxes and labels -> the detector's training targets (a batch transform).

    Takes ``{"boxes": (N, M, 4) xyxy pixels, "labels": (N, M), -1 = none}``
    (what :class:`minidl.data.MNISTDetection` gives) and returns arrays:
    ``heatmap`` (N, 1, H, W) float32, a Gaussian bump per object, exactly 1 at
    its centre cell; ``index`` (N, M) int64, the centre cell y * W + x;
    ``mask`` (N, M) float32, 1 for a real object; ``offset`` (N, M, 2) the
    centre's position inside its cell, ``log_size`` (N, M, 2) log of the
    box's width and height in cells; ``labels`` (N, M) int64 (0 where
    masked); ``boxes`` (N, M, 4) (a unit box where masked, so box losses stay
    finite).
    """

    def __init__(self, canvas_size=64, stride=CNNAttentionDetector.STRIDE, min_overlap=0.7):
        if canvas_size % stride:
            raise ValueError(f"CenterNetTargets: canvas size {canvas_size} is not a multiple "
                             f"of the stride {stride}")
        self.stride, self.side, self.min_overlap = stride, canvas_size // stride, min_overlap

    def __call__(self, targets):
        boxes, labels = np.asarray(targets["boxes"]), np.asarray(targets["labels"])
        N, M = labels.shape
        S, s = self.side, self.stride
        out = {"heatmap": np.zeros((N, 1, S, S), np.float32),
               "index": np.zeros((N, M), np.int64), "mask": np.zeros((N, M), np.float32),
               "offset": np.zeros((N, M, 2), np.float32),
               "log_size": np.zeros((N, M, 2), np.float32),
               "labels": np.zeros((N, M), np.int64),
               "boxes": np.tile(np.array([0, 0, 1, 1], np.float32), (N, M, 1))}
        grid = np.arange(S, dtype=np.float32)
        for n, m in zip(*np.nonzero(labels >= 0)):
            x0, y0, x1, y1 = boxes[n, m]
            cx, cy, w, h = (x0 + x1) / (2 * s), (y0 + y1) / (2 * s), (x1 - x0) / s, (y1 - y0) / s
            ix, iy = min(int(cx), S - 1), min(int(cy), S - 1)
            sigma = (2 * max(0, int(gaussian_radius(h, w, self.min_overlap))) + 1) / 6
            bump = np.exp(-((grid[None, :] - ix) ** 2 + (grid[:, None] - iy) ** 2)
                          / (2 * sigma * sigma))
            np.maximum(out["heatmap"][n, 0], bump, out=out["heatmap"][n, 0])
            out["index"][n, m], out["mask"][n, m] = iy * S + ix, 1
            out["offset"][n, m] = cx - ix, cy - iy
            out["log_size"][n, m] = np.log(w), np.log(h)
            out["labels"][n, m], out["boxes"][n, m] = labels[n, m], boxes[n, m]
        return out


def detection_loss(outputs, targets):
    """The detector's loss and its parts, each summed over objects and divided
    by their number (CenterNet's normalisation): the heatmap's focal loss; L1
    of the localiser's offset and log size (``locate``) and of the refined
    ones (``box``); cross-entropy of the class; 1 - GIoU of the final boxes.
    ``targets`` as :class:`CenterNetTargets` makes them."""
    mask = targets["mask"]
    n = mask.sum().clamp(min=1)

    def masked(per_object):
        return (per_object * mask).sum() / n

    def l1(pred, true):
        return masked(F.l1_loss(pred, true, reduction="none").sum(dim=-1))

    logits = outputs["class_logits"]
    B, K, classes = logits.shape
    parts = {
        "heatmap": F.gaussian_focal_loss(outputs["heatmap"], targets["heatmap"]) / n,
        "locate": l1(outputs["offset"], targets["offset"]) +
        l1(outputs["log_size"], targets["log_size"]),
        "box": l1(outputs["refined_offset"], targets["offset"]) +
        l1(outputs["refined_log_size"], targets["log_size"]),
        "class": masked(F.cross_entropy(logits.reshape(B * K, classes),
                                        targets["labels"].reshape(B * K),
                                        reduction="none").reshape(B, K)),
        "giou": masked(F.generalized_box_iou_loss(outputs["boxes"], targets["boxes"])),
    }
    total = parts["heatmap"]
    for name in ("locate", "box", "class", "giou"):
        total = total + parts[name]
    return total, parts
