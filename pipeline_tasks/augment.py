"""SSL view augmentation on batched tensors, with random parameters drawn per image.

One ``affine_grid``/``grid_sample`` call does crop, scale, aspect, rotation and flip for the
whole batch on the training device; jitter, noise and erasing are broadcast ops. A per-sample
PIL pipeline in DataLoader workers cannot feed a GPU (DESIGN.md, performance principles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline_tasks.config import PretrainConfig


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B,C,H,W]`` -> float in [-1, 1], the network's input scale."""
    return images.float().div_(127.5).sub_(1.0)


@dataclass(frozen=True)
class ViewAugment:
    crop_scale_min: float = 0.4
    rotation_degrees: float = 15.0
    jitter: float = 0.4
    noise_std: float = 0.05
    erase_prob: float = 0.5
    hflip: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if not 0 <= self.erase_prob <= 1:
            raise ValueError(f"erase_prob must be in [0, 1], got {self.erase_prob}")

    @classmethod
    def from_config(cls, cfg: PretrainConfig) -> ViewAugment:
        return cls(cfg.crop_scale_min, cfg.rotation_degrees, cfg.jitter, cfg.noise_std,
                   cfg.erase_prob, cfg.hflip)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 or float ``[B,C,H,W]`` -> one augmented view, float ``[B,C,H,W]`` in [-1, 1]."""
        if images.ndim != 4:
            raise ValueError(f"expected images [B,C,H,W], got shape {tuple(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = self._geometry(x, generator)
        x = self._photometric(x, generator)
        return self._erase(x, generator).mul_(2.0).sub_(1.0)

    def _uniform(self, n: int, lo: float, hi: float, like: torch.Tensor,
                 g: torch.Generator | None) -> torch.Tensor:
        return torch.rand(n, device=like.device, generator=g).mul_(hi - lo).add_(lo)

    def _geometry(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b = x.shape[0]
        area = self._uniform(b, self.crop_scale_min, 1.0, x, g)
        log_ratio = self._uniform(b, math.log(3 / 4), math.log(4 / 3), x, g)
        sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
        sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        tx = self._uniform(b, -1.0, 1.0, x, g) * (1 - sx)
        ty = self._uniform(b, -1.0, 1.0, x, g) * (1 - sy)
        angle = self._uniform(b, -1.0, 1.0, x, g) * math.radians(self.rotation_degrees)
        if self.hflip:
            sx = sx * torch.where(torch.rand(b, device=x.device, generator=g) < 0.5, -1.0, 1.0)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([
            torch.stack([sx * cos, -sy * sin, tx], 1),
            torch.stack([sx * sin, sy * cos, ty], 1),
        ], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _photometric(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b = x.shape[0]
        if self.jitter > 0:
            bright = self._uniform(b, 1 - self.jitter, 1 + self.jitter, x, g).view(b, 1, 1, 1)
            contrast = self._uniform(b, 1 - self.jitter, 1 + self.jitter, x, g).view(b, 1, 1, 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast + mean) * bright
        if self.noise_std > 0:
            x = x + torch.randn(x.shape, device=x.device, generator=g) * self.noise_std
        return x.clamp_(0.0, 1.0)

    def _erase(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Random erasing: a rectangle of 2-20% of the area set to 0, in ``erase_prob`` of images."""
        if self.erase_prob == 0:
            return x
        b, _, h, w = x.shape
        area = self._uniform(b, 0.02, 0.2, x, g)
        ratio = self._uniform(b, math.log(0.3), math.log(3.3), x, g).exp()
        eh = (area * ratio).sqrt().mul(h).clamp(1, h)
        ew = (area / ratio).sqrt().mul(w).clamp(1, w)
        y0 = torch.rand(b, device=x.device, generator=g) * (h - eh)
        x0 = torch.rand(b, device=x.device, generator=g) * (w - ew)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((rows >= y0.view(b, 1, 1)) & (rows < (y0 + eh).view(b, 1, 1))
                  & (cols >= x0.view(b, 1, 1)) & (cols < (x0 + ew).view(b, 1, 1)))
        apply = (torch.rand(b, device=x.device, generator=g) < self.erase_prob).view(b, 1, 1)
        return x.masked_fill((inside & apply).unsqueeze(1), 0.0)
