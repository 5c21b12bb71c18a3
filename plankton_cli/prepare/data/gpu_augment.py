"""Train augmentation on the accelerator, with its own random parameters for every sample.

The optional GPU path: DataLoader workers only decode and resize (``ResizeTransform``, uint8,
4× less to copy than float32), and the training step calls :class:`GpuAugment` on the batch.
torchvision transforms applied to a batch tensor would draw one crop and one flip for the whole
batch; here each sample gets its own RandomResizedCrop box (drawn like torchvision's, in the
resized frame) and its own flips, applied in one ``grid_sample`` with a per-sample affine grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GpuAugment(nn.Module):
    """uint8 (B, C, H, W) → normalised float32 (B, C, crop, crop): random resized crop, flips."""

    def __init__(
        self,
        crop: int = 224,
        mean: float = 0.5,
        std: float = 0.25,
        scale: tuple[float, float] = (0.4, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        attempts: int = 10,
    ) -> None:
        super().__init__()
        self.crop, self.mean, self.std = crop, float(mean), float(std)
        self.scale, self.ratio, self.flip_p, self.attempts = scale, ratio, flip_p, attempts

    def crop_boxes(self, batch: int, height: int, width: int, device: torch.device, generator=None) -> torch.Tensor:
        """Per-sample (top, left, h, w) as float (B, 4), drawn like ``RandomResizedCrop.get_params``:
        the first of ``attempts`` draws that fits, else a centre crop clipped to ``ratio``."""

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(batch, self.attempts, device=device, generator=generator)

        area = height * width
        target_area = area * uniform(*self.scale)
        aspect = torch.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        w = torch.sqrt(target_area * aspect).round()
        h = torch.sqrt(target_area / aspect).round()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.int().argmax(dim=1, keepdim=True)  # index of the first fitting attempt
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)

        # Fallback for samples where no attempt fitted: torchvision's whole-image centre crop.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fallback_w, fallback_h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fallback_w, fallback_h = round(height * self.ratio[1]), height
        else:
            fallback_w, fallback_h = width, height
        none_fit = ~fits.any(dim=1)
        w = torch.where(none_fit, torch.full_like(w, fallback_w), w)
        h = torch.where(none_fit, torch.full_like(h, fallback_h), h)

        top = torch.floor(torch.rand(batch, device=device, generator=generator) * (height - h + 1))
        left = torch.floor(torch.rand(batch, device=device, generator=generator) * (width - w + 1))
        top = torch.where(none_fit, ((height - h) / 2).round(), top)
        left = torch.where(none_fit, ((width - w) / 2).round(), left)
        return torch.stack([top, left, h, w], dim=1)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, channels, height, width = images.shape
        top, left, h, w = self.crop_boxes(batch, height, width, images.device, generator).unbind(1)
        flips = torch.rand(batch, 2, device=images.device, generator=generator) < self.flip_p
        sign_x = 1.0 - 2.0 * flips[:, 0].float()
        sign_y = 1.0 - 2.0 * flips[:, 1].float()

        # Output coordinate u ∈ [-1, 1] samples input x = (w / W) u + (2 left + w) / W - 1
        # (align_corners=False: ±1 are the image edges); a flip negates the scale.
        theta = torch.zeros(batch, 2, 3, device=images.device)
        theta[:, 0, 0] = sign_x * w / width
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = sign_y * h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        grid = F.affine_grid(theta, [batch, channels, self.crop, self.crop], align_corners=False)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.mul_(1.0 / (255.0 * self.std)).add_(-self.mean / self.std)
