"""MNIST detection: canvases of a few MNIST digits, each with its box and label.

A canvas (``canvas_size`` x ``canvas_size``, 64 by default) holds 1 to 4
digits, each scaled by 0.7x to 1.4x (bilinear), placed at random inside the
canvas so that no two boxes overlap by more than ``max_overlap`` of the
smaller one (a digit that finds no such place in 30 tries is left out), and
drawn with ``max`` over the canvas. A digit's box is the tight box of its
ink: the pixels of the scaled digit at or above ``INK`` (half the full
intensity), as (x0, y0, x1, y1) pixel edges, x1 and y1 exclusive.

Training canvases use only MNIST's training digits, test canvases only its
test digits. ``seed=None`` (training's default) draws new canvases at every
batch, from the DataLoader's per-epoch stream (so ``minidl.manual_seed``
makes a run reproducible); a ``seed`` (the test set's default: 0) makes
canvas i a function of (seed, i) alone.
"""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np

from .dataset import Dataset
from .rng import current_generator

INK = 128          # a pixel is ink at half the full intensity or more
PLACE_TRIES = 30


def resize_bilinear(image, side):
    """A square uint8 image scaled to ``side`` x ``side`` (float32), bilinear with
    pixel centres aligned (OpenCV's and PIL's convention), as two small matmuls."""
    n = image.shape[0]
    u = np.clip((np.arange(side) + 0.5) * (n / side) - 0.5, 0, n - 1)
    k0 = np.minimum(np.floor(u).astype(np.int64), n - 2)
    frac = (u - k0).astype(np.float32)
    r = np.zeros((side, n), np.float32)
    r[np.arange(side), k0] = 1 - frac
    r[np.arange(side), k0 + 1] = frac
    return r @ image.astype(np.float32) @ r.T


def ink_box(patch):
    """(x0, y0, x1, y1) of the pixels >= INK in ``patch``, or None."""
    rows, cols = np.flatnonzero((patch >= INK).any(axis=1)), np.flatnonzero(
        (patch >= INK).any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlap(a, b):
    """Intersection of two boxes over the smaller one's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


class MNISTDetection(Dataset):
    """Multi-digit canvases for detection.

    ``MNISTDetection(root=None, train=True, size=None, seed=None, ...)``;
    ``size`` defaults to 10,000 canvases (an epoch) for training and 2,000
    for test; ``seed`` to None (new canvases every batch) for training and
    0 (a fixed set) for test. A batch ``ds.__getitems__(indices)`` is
    ``(images, targets)``: images uint8 (N, S, S) (``transform=ToFloat()``
    gives float32 (N, 1, S, S)), targets a dict of arrays padded to
    ``max_digits`` per canvas: ``boxes`` float32 (N, M, 4) xyxy pixels,
    ``labels`` int64 (N, M) with -1 for no digit, ``sources`` int64 (N, M):
    the index of each digit in its MNIST split (-1 for none).

    ``images=``/``labels=`` give digits to use instead of MNIST's (tests).
    """

    def __init__(self, root=None, train=True, size=None, seed=None, canvas_size=64,
                 min_digits=1, max_digits=4, scale=(0.7, 1.4), max_overlap=0.1,
                 download=True, transform=None, target_transform=None,
                 images=None, labels=None):
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"MNISTDetection: need 1 <= min_digits <= max_digits, got "
                             f"{min_digits}, {max_digits}")
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"MNISTDetection: scale must be (low, high) with 0 < low <= high, "
                             f"got {scale}")
        if round(28 * scale[1]) > canvas_size:
            raise ValueError(f"MNISTDetection: a digit scaled by {scale[1]} "
                             f"({round(28 * scale[1])} px) does not fit a canvas of "
                             f"{canvas_size}")
        if images is None:
            from .mnist import MNIST
            split = MNIST(root=root, train=train, download=download)
            images, labels = split.images, split.labels
        self.images, self.labels = np.asarray(images), np.asarray(labels)
        if self.images.ndim != 3 or len(self.images) != len(self.labels):
            raise ValueError(f"MNISTDetection: expected images (N, H, W) and N labels, got "
                             f"{self.images.shape} and {self.labels.shape}")
        self.train = bool(train)
        self.size = int(size if size is not None else 10000 if train else 2000)
        self.seed = seed if seed is not None or train else 0
        self.canvas_size, self.max_overlap = int(canvas_size), float(max_overlap)
        self.min_digits, self.max_digits = int(min_digits), int(max_digits)
        self.scale = (float(scale[0]), float(scale[1]))
        self.transform, self.target_transform = transform, target_transform
        self._fixed = None      # the whole set of a seeded dataset, made on first use

    def __len__(self):
        return self.size

    # ------------------------------------------------------------ drawing
    def canvas(self, rng):
        """One canvas from ``rng``: (image uint8 (S, S), [(box, label, source)])."""
        S = self.canvas_size
        out = np.zeros((S, S), np.float32)
        objects = []
        for _ in range(int(rng.integers(self.min_digits, self.max_digits + 1))):
            j = int(rng.integers(len(self.images)))
            side = int(round(self.images.shape[1] * rng.uniform(*self.scale)))
            # rounded now, so the ink box is the ink of the pixels as drawn
            patch = np.clip(np.rint(resize_bilinear(self.images[j], side)), 0, 255)
            box = ink_box(patch)
            if box is None:
                continue
            x0, y0, x1, y1 = box
            for _ in range(PLACE_TRIES):
                # the ink inside the canvas; the faint rest of the patch may leave it
                left = int(rng.integers(-x0, S - x1 + 1))
                top = int(rng.integers(-y0, S - y1 + 1))
                placed = (left + x0, top + y0, left + x1, top + y1)
                if all(_overlap(placed, b) <= self.max_overlap for b, _, _ in objects):
                    break
            else:
                continue
            cy0, cx0 = max(top, 0), max(left, 0)
            cy1, cx1 = min(top + side, S), min(left + side, S)
            np.maximum(out[cy0:cy1, cx0:cx1], patch[cy0 - top:cy1 - top, cx0 - left:cx1 - left],
                       out=out[cy0:cy1, cx0:cx1])
            objects.append((placed, int(self.labels[j]), j))
        return out.astype(np.uint8), objects

    def _draw(self, indices):
        if self.seed is None:
            rng = current_generator()
            return [self.canvas(rng) for _ in indices]
        if self._fixed is not None:
            return [self._fixed[int(i)] for i in indices]
        return [self.canvas(np.random.default_rng((self.seed, int(i)))) for i in indices]

    def _all(self):
        if self.seed is not None and self._fixed is None:
            self._fixed = self._draw(range(self.size))
        return self._fixed if self.seed is not None else None

    def __getitems__(self, indices):
        indices = np.asarray(indices)
        if indices.size and (indices.min() < -self.size or indices.max() >= self.size):
            raise IndexError(f"MNISTDetection: index out of range for {self.size} canvases")
        indices = indices % self.size if indices.size else indices
        drawn = self._draw(indices)
        N, M = len(drawn), self.max_digits
        images = np.stack([c for c, _ in drawn]) if N else \
            np.zeros((0, self.canvas_size, self.canvas_size), np.uint8)
        boxes = np.zeros((N, M, 4), np.float32)
        labels = np.full((N, M), -1, np.int64)
        sources = np.full((N, M), -1, np.int64)
        for n, (_, objects) in enumerate(drawn):
            for m, (box, label, source) in enumerate(objects):
                boxes[n, m], labels[n, m], sources[n, m] = box, label, source
        targets = {"boxes": boxes, "labels": labels, "sources": sources}
        if self.transform is not None:
            images = self.transform(images)
        if self.target_transform is not None:
            targets = self.target_transform(targets)
        return images, targets

    def __getitem__(self, index):
        images, targets = self.__getitems__(np.array([index]))
        return images[0], {k: v[0] for k, v in targets.items()}

    # -------------------------------------------------------- COCO format
    def to_coco(self, path=None):
        """The fixed set as a COCO-format dict (image ids 1..N, category ids
        1..10 for the digits 0..9, boxes [x, y, w, h]); written atomically as
        JSON to ``path`` when given. Only for a seeded dataset."""
        if self.seed is None:
            raise ValueError("MNISTDetection.to_coco: canvases drawn anew every batch have no "
                             "fixed annotations; give a seed")
        S = self.canvas_size
        images, annotations = [], []
        for i, (_, objects) in enumerate(self._all()):
            images.append({"id": i + 1, "width": S, "height": S, "file_name": f"{i}.png"})
            for box, label, _ in objects:
                x0, y0, x1, y1 = box
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                    "category_id": label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                    "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        coco = {"images": images, "annotations": annotations,
                "categories": [{"id": d + 1, "name": str(d)} for d in range(10)]}
        if path is not None:
            from ..fileio import atomic_write_bytes
            atomic_write_bytes(path, json.dumps(coco).encode())
        return coco


def coco_detections(image_ids, boxes, labels, scores):
    """COCO results from per-image arrays: ``boxes`` (N, 4) xyxy, ``labels``
    digits 0..9, ``scores``, for each image id in ``image_ids``."""
    results = []
    for image_id, b, c, s in zip(image_ids, boxes, labels, scores):
        for (x0, y0, x1, y1), label, score in zip(np.asarray(b), np.asarray(c), np.asarray(s)):
            results.append({"image_id": int(image_id), "category_id": int(label) + 1,
                            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                            "score": float(score)})
    return results


def coco_map(ground_truth, detections):
    """COCO box mAP by pycocotools: {"map50": AP@IoU 0.5, "map": AP@[.5:.95]}.
    ``ground_truth`` a COCO dict (:meth:`MNISTDetection.to_coco`),
    ``detections`` COCO results (:func:`coco_detections`)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("COCO mAP needs pycocotools: pip install pycocotools") from None
    if not detections:
        return {"map50": 0.0, "map": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints as it goes
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map50": float(evaluation.stats[1]), "map": float(evaluation.stats[0])}
