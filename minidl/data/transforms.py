"""Transforms on whole batches, and torchvision's per-image ones.

Notation: N batch, C channels, H height, W width. A batch transform takes a
batch (first axis N; images ``(N, H, W)`` or ``(N, C, H, W)``), returns a new
array and never writes into its input. They work on NumPy and CuPy arrays
alike (``xp``); none loops over samples in Python.

Per-image, as torchvision: :class:`ToTensor` turns one image (``(H, W)``,
``(H, W, C)`` or a PIL image) into a float32 ``(C, H, W)`` Tensor, and
:class:`Normalize` given a Tensor normalises its channel axis -3. A dataset
applies a transform with ``per_image`` true (ToTensor, a Compose holding
one) to each image and stacks the results: torchvision's
``transform=Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])`` works
as it is, at the cost of a Python loop per sample.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .rng import current_generator, make_generator


class Compose:
    """Apply ``transforms`` in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    @property
    def per_image(self):
        return any(getattr(t, "per_image", False) for t in self.transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self):
        return f"Compose({self.transforms!r})"


class ToFloat:
    """uint8 images -> float32 in [0, 1] (divided by ``scale``); an
    ``(N, H, W)`` batch becomes ``(N, 1, H, W)``, what conv layers take."""

    def __init__(self, scale=255.0):
        self.scale = float(scale)

    def __call__(self, x):
        xp = get_array_module(x)
        out = xp.divide(x, np.float32(self.scale), dtype=np.float32)
        return out[:, None] if out.ndim == 3 else out

    def __repr__(self):
        return f"ToFloat(scale={self.scale})"


class ToTensor:
    """One image -> a float32 ``(C, H, W)`` Tensor, as torchvision's.

    ``(H, W)``, ``(H, W, C)`` arrays or PIL images; uint8 is scaled to
    [0, 1] (divided by 255), other dtypes are converted as they are."""

    per_image = True

    def __call__(self, pic):
        from ..tensor import Tensor
        array = np.asarray(pic) if not hasattr(pic, "ndim") else pic
        if array.ndim not in (2, 3):
            raise ValueError(f"ToTensor: expects one image, (H, W) or (H, W, C), got shape "
                             f"{tuple(array.shape)} (for whole batches use ToFloat)")
        xp = get_array_module(array)
        image = array[None] if array.ndim == 2 else xp.moveaxis(array, -1, 0)
        if image.dtype == np.uint8:
            image = xp.divide(image, np.float32(255), dtype=np.float32)
        return Tensor(xp.ascontiguousarray(image, dtype=np.float32))

    def __repr__(self):
        return "ToTensor()"


class Normalize:
    """``(x - mean) / std``, with scalars or one value per channel.

    The channel axis is 1 of a batch array ``(N, C, ...)``, and -3 of a
    Tensor (torchvision's per-image ``(C, H, W)``, after :class:`ToTensor`).
    Integer input is converted to float32 first (without rescaling).
    """

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        if np.any(self.std == 0):
            raise ValueError(f"Normalize: std must be non-zero, got {std}")
        if self.mean.ndim > 1 or self.std.ndim > 1:
            raise ValueError("Normalize: mean and std are scalars or one value per channel")
        if 1 < self.mean.size != self.std.size > 1:
            raise ValueError(f"Normalize: mean has {self.mean.size} values but std has "
                             f"{self.std.size}")

    def __call__(self, x):
        from ..tensor import Tensor
        if isinstance(x, Tensor):   # one image, torchvision's (..., C, H, W)
            if x.ndim < 3:
                raise ValueError(f"Normalize: a tensor image must be (..., C, H, W), got shape "
                                 f"{tuple(x.shape)}")
            xp = get_array_module(x._data)
            out = self(xp.moveaxis(x._data, -3, 1) if x.ndim > 3 else x._data[None])
            return Tensor(xp.moveaxis(out, 1, -3) if x.ndim > 3 else out[0])
        xp = get_array_module(x)
        if x.dtype.kind != "f":
            x = x.astype(np.float32)
        if self.mean.ndim or self.std.ndim:
            if x.ndim < 3:
                raise ValueError(f"Normalize: per-channel mean/std needs (N, C, ...) "
                                 f"input, got shape {x.shape}")
            channels = max(self.mean.size, self.std.size)
            # a single value broadcasts over any C; more must match C, or the
            # batch would silently gain channels
            if channels > 1 and x.shape[1] != channels:
                raise ValueError(f"Normalize: mean/std give {channels} channels but the input "
                                 f"{tuple(x.shape)} has {x.shape[1]} (axis 1)")
            shape = (-1,) + (1,) * (x.ndim - 2)   # broadcast over channel axis 1
            mean = xp.asarray(self.mean.astype(x.dtype).reshape(shape))
            inv = xp.asarray((1.0 / self.std).astype(x.dtype).reshape(shape))
            return (x - mean) * inv
        # scalars: stay in x's dtype (a float64 scalar would not promote, but be explicit)
        return (x - x.dtype.type(self.mean)) * x.dtype.type(1.0 / self.std)

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomShift:
    """Shift each image by its own random whole-pixel offset (dy, dx), each
    uniform in ``[-max_pixels, max_pixels]``; pixels shifted in are ``fill``.

    The translation augmentation for MNIST: one advanced index into a
    strided view of the padded batch, no per-sample loop. Offsets come from ``generator`` (or ``seed``), else
    from the DataLoader's augmentation stream / the framework generator.
    """

    def __init__(self, max_pixels=2, fill=0, generator=None, seed=None):
        if int(max_pixels) != max_pixels or max_pixels < 0:
            raise ValueError(f"RandomShift: max_pixels must be a non-negative int, got {max_pixels}")
        self.max_pixels = int(max_pixels)
        self.fill = fill
        self.generator = make_generator(generator, seed, "RandomShift")

    def __call__(self, x):
        m = self.max_pixels
        if m == 0 or x.shape[0] == 0:
            return x.copy()
        if x.ndim < 3:
            raise ValueError(f"RandomShift: expected (N, H, W) or (N, C, H, W), got {x.shape}")
        xp = get_array_module(x)
        N, H, W = x.shape[0], x.shape[-2], x.shape[-1]
        if m >= min(H, W):
            raise ValueError(f"RandomShift: max_pixels={m} must be smaller than the images "
                             f"({H}x{W}): a larger shift can move a whole image out of view")
        C = math.prod(x.shape[1:-2])
        rng = self.generator or current_generator()
        dy, dx = rng.integers(-m, m + 1, size=(2, N))
        padded = xp.full((N, C, H + 2 * m, W + 2 * m), self.fill, dtype=x.dtype)
        padded[:, :, m:m + H, m:m + W] = x.reshape(N, C, H, W)
        # windows[n, c, a, b] = padded[n, c, a:a + H, b:b + W], a view; the
        # image shifted by (dy, dx) is the window at (m - dy, m - dx).
        sN, sC, sH, sW = padded.strides
        windows = xp.lib.stride_tricks.as_strided(
            padded, (N, C, 2 * m + 1, 2 * m + 1, H, W), (sN, sC, sH, sW, sH, sW))
        out = windows[xp.arange(N), :, xp.asarray(m - dy), xp.asarray(m - dx)]
        return out.reshape(x.shape)   # (N, C, H, W): one block copy per image

    def __repr__(self):
        return f"RandomShift(max_pixels={self.max_pixels}, fill={self.fill})"
