"""Decode stored image bytes and apply the paper's train / eval transforms.

Train: resize to ``resize``×``resize`` (aspect ratio not kept), grayscale, RandomResizedCrop to
``crop`` with scale (0.4, 1.0), random horizontal and vertical flips, normalise.
Eval: resize, centre crop, normalise.

The resize and the crop are fused into one Pillow ``resize(..., box=...)`` call on uint8 pixels:
the crop box is drawn in the ``resize`` frame, exactly as torchvision's
``Resize`` + ``RandomResizedCrop`` would draw it, and mapped back onto the source image. One
resampling instead of two halves the work and avoids interpolating twice. Flips and
normalisation run on the small cropped array.
"""

from __future__ import annotations

import math
import random
from io import BytesIO

import numpy as np
import torch
from PIL import Image

from plankton_cli.store.images import to_8bit

# Pillow's BILINEAR widens its kernel when downscaling, like torchvision's antialias=True.
RESAMPLE = Image.Resampling.BILINEAR


def decode_gray(data: bytes, size_hint: int | None = None) -> Image.Image:
    """Decode PNG/JPEG bytes to an 8-bit grayscale Pillow image.

    ``size_hint`` lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale when the image is at least
    that much larger than the size it will be resized to (no effect on PNG).
    """
    image: Image.Image = Image.open(BytesIO(data))
    if size_hint is not None and image.format == "JPEG":
        image.draft("L", (size_hint, size_hint))
    if image.mode != "L":
        image = to_8bit(image).convert("L")  # 16-bit grey scaled, not clipped (as the store decodes it)
    return image


def _as_image(data: bytes | Image.Image, size_hint: int) -> Image.Image:
    if isinstance(data, Image.Image):
        return data if data.mode == "L" else data.convert("L")
    return decode_gray(data, size_hint)


def _frame_box_to_source(
    image: Image.Image, frame: int, top: float, left: float, height: float, width: float
) -> tuple[float, float, float, float]:
    """Map a box given in the ``frame``×``frame`` resized image onto the source image."""
    sx, sy = image.width / frame, image.height / frame
    return (left * sx, top * sy, (left + width) * sx, (top + height) * sy)


class _Normalize:
    """uint8 (H, W) array → float32 (1, H, W) tensor, ``(x / 255 - mean) / std``."""

    def __init__(self, mean: float, std: float) -> None:
        self.mean, self.std = float(mean), float(std)
        self._scale = 1.0 / (255.0 * self.std)
        self._shift = -self.mean / self.std

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        # np.array: a writable, contiguous copy (Pillow's buffer is read-only, flips are strided views).
        # Then two in-place passes over float32, measurably cheaper than ToDtype + Normalize.
        return torch.from_numpy(np.array(pixels)).to(torch.float32).mul_(self._scale).add_(self._shift)[None]


class TrainTransform:
    """Bytes or Pillow image → normalised float32 tensor (1, crop, crop) with random crop and flips."""

    def __init__(
        self,
        resize: int = 256,
        crop: int = 224,
        mean: float = 0.5,
        std: float = 0.25,
        scale: tuple[float, float] = (0.4, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
    ) -> None:
        self.resize, self.crop, self.scale, self.ratio, self.flip_p = resize, crop, scale, ratio, flip_p
        self.normalize = _Normalize(mean, std)

    def crop_box(self) -> tuple[int, int, int, int]:
        """Draw (top, left, height, width) in the resize frame with torchvision's RandomResizedCrop rule.

        Written with ``random`` rather than calling ``RandomResizedCrop.get_params``, whose small torch
        ops cost ~0.1 ms a call, a tenth of the whole transform. DataLoader seeds ``random`` per worker.
        """
        size = self.resize
        area = size * size
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= size and 0 < h <= size:
                return random.randint(0, size - h), random.randint(0, size - w), h, w
        # Fallback, as torchvision: a centre crop of the (square) frame clipped to the ratio range.
        w = h = size
        if self.ratio[0] > 1:
            h = int(round(size / self.ratio[0]))
        elif self.ratio[1] < 1:
            w = int(round(size * self.ratio[1]))
        return (size - h) // 2, (size - w) // 2, h, w

    def __call__(self, data: bytes | Image.Image) -> torch.Tensor:
        image = _as_image(data, self.resize)
        box = _frame_box_to_source(image, self.resize, *self.crop_box())
        pixels = np.asarray(image.resize((self.crop, self.crop), RESAMPLE, box=box, reducing_gap=3.0))
        if random.random() < self.flip_p:
            pixels = pixels[:, ::-1]
        if random.random() < self.flip_p:
            pixels = pixels[::-1, :]
        return self.normalize(pixels)


class EvalTransform:
    """Bytes or Pillow image → normalised float32 tensor (1, crop, crop): resize, centre crop."""

    def __init__(self, resize: int = 256, crop: int = 224, mean: float = 0.5, std: float = 0.25) -> None:
        if crop > resize:
            raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
        self.resize, self.crop = resize, crop
        self.normalize = _Normalize(mean, std)
        # Same rounding as torchvision's center_crop.
        self._offset = int(round((resize - crop) / 2.0))

    def __call__(self, data: bytes | Image.Image) -> torch.Tensor:
        image = _as_image(data, self.resize)
        box = _frame_box_to_source(image, self.resize, self._offset, self._offset, self.crop, self.crop)
        return self.normalize(np.asarray(image.resize((self.crop, self.crop), RESAMPLE, box=box, reducing_gap=3.0)))


class ResizeTransform:
    """Bytes or Pillow image → uint8 tensor (1, size, size); the GPU path crops, flips and normalises later."""

    def __init__(self, size: int = 256) -> None:
        self.size = size

    def __call__(self, data: bytes | Image.Image) -> torch.Tensor:
        image = _as_image(data, self.size)
        image = image.resize((self.size, self.size), RESAMPLE, reducing_gap=3.0)
        return torch.from_numpy(np.array(image, dtype=np.uint8))[None]


def resize_to_array(data: bytes | Image.Image, size: int) -> np.ndarray:
    """Grayscale pixels resized to size×size, as uint8 (used for statistics)."""
    image = _as_image(data, size)
    return np.asarray(image.resize((size, size), RESAMPLE, reducing_gap=3.0))


def torchvision_train_transform(resize: int, crop: int, mean: float, std: float):
    """The same train transform written the plain torchvision v2 way (bench baseline, tests)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize((resize, resize)),
            v2.Grayscale(),
            v2.RandomResizedCrop(crop, scale=(0.4, 1.0)),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([mean], [std]),
        ]
    )


__all__ = [
    "EvalTransform",
    "ResizeTransform",
    "TrainTransform",
    "decode_gray",
    "resize_to_array",
    "torchvision_train_transform",
]
