"""SSL view augmentation on batched tensors, with random parameters drawn per image.

One ``affine_grid``/``grid_sample`` call does crop, scale, aspect, rotation and flip for the
whole batch on the training device; colour jitter (brightness, contrast, saturation, hue),
grayscale, gaussian blur (one grouped convolution), solarisation, noise and erasing are
broadcast ops with a per-image mask. A per-sample PIL pipeline in DataLoader workers cannot
feed a GPU (``bench/augment_throughput.py`` measures both side by side).

Recipes come as presets (``PRESETS``): ``digits`` (grayscale digits: no flips, no colour),
``simclr`` and ``byol`` (natural RGB images; BYOL's two views differ in blur and solarisation).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class ViewAugment:
    """One view's recipe; probabilities and strengths are per image."""

    crop_scale_min: float = 0.4  # random resized crop: area fraction in [min, max]
    crop_scale_max: float = 1.0
    rotation_degrees: float = 15.0
    hflip_prob: float = 0.0
    jitter_prob: float = 1.0  # colour jitter applied to this share of images
    brightness: float = 0.4  # factors drawn in [1 - s, 1 + s]
    contrast: float = 0.4
    saturation: float = 0.0
    hue: float = 0.0  # shift drawn in [-hue, hue] of a full turn (at most 0.5)
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    blur_sigma_min: float = 0.1  # of a 224 px image, scaled to the image size (as SimCLR's 10%)
    blur_sigma_max: float = 2.0
    solarize_prob: float = 0.0
    noise_std: float = 0.05
    erase_prob: float = 0.5
    # The views' side in px: the random resized crop is cut from the input at its own size (a
    # larger cache, data.cache_size) and resampled to this (None: the input's size).
    out_size: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ValueError(f"crop_scale_min must be in (0, crop_scale_max], got {self.crop_scale_min}")
        for name in ("hflip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob",
                     "erase_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if min(self.brightness, self.contrast, self.saturation, self.noise_std, self.rotation_degrees) < 0:
            raise ValueError("brightness, contrast, saturation, noise_std and rotation_degrees must be >= 0")
        if self.out_size is not None and self.out_size < 1:
            raise ValueError(f"out_size must be a positive number of pixels, got {self.out_size}")

    def replace(self, **changes: Any) -> ViewAugment:
        return dataclasses.replace(self, **changes)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 or float ``[B,C,H,W]`` -> one augmented view, float ``[B,C,S,S]`` in [-1, 1]
        (``S``: ``out_size``, else ``H`` and ``W`` stay)."""
        if images.ndim != 4:
            raise ValueError(f"expected images [B,C,H,W], got shape {tuple(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = self._geometry(x, generator)
        x = self._colour(x, generator)
        x = self._blur(x, generator)
        if self.solarize_prob > 0:
            hit = self._coin(x, self.solarize_prob, generator)
            x = torch.where(hit & (x >= 0.5), 1.0 - x, x)
        if self.noise_std > 0:
            x = x + torch.randn(x.shape, device=x.device, generator=generator) * self.noise_std
        return self._erase(x.clamp_(0.0, 1.0), generator).mul_(2.0).sub_(1.0)

    def _uniform(self, n: int, lo: float, hi: float, like: torch.Tensor,
                 g: torch.Generator | None) -> torch.Tensor:
        return torch.rand(n, device=like.device, generator=g).mul_(hi - lo).add_(lo)

    def _coin(self, x: torch.Tensor, p: float, g: torch.Generator | None) -> torch.Tensor:
        """``[B,1,1,1]`` bool: True for the images an op with probability ``p`` applies to."""
        return (torch.rand(x.shape[0], device=x.device, generator=g) < p).view(-1, 1, 1, 1)

    def _geometry(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b = x.shape[0]
        area = self._uniform(b, self.crop_scale_min, self.crop_scale_max, x, g)
        log_ratio = self._uniform(b, math.log(3 / 4), math.log(4 / 3), x, g)
        sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
        sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        tx = self._uniform(b, -1.0, 1.0, x, g) * (1 - sx)
        ty = self._uniform(b, -1.0, 1.0, x, g) * (1 - sy)
        angle = self._uniform(b, -1.0, 1.0, x, g) * math.radians(self.rotation_degrees)
        if self.hflip_prob > 0:
            sx = sx * torch.where(torch.rand(b, device=x.device, generator=g) < self.hflip_prob, -1.0, 1.0)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([
            torch.stack([sx * cos, -sy * sin, tx], 1),
            torch.stack([sx * sin, sy * cos, ty], 1),
        ], 1)
        size = [b, x.shape[1], *((self.out_size, self.out_size) if self.out_size else x.shape[2:])]
        grid = F.affine_grid(theta, size, align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _colour(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Brightness, contrast, saturation, hue (in that order) on ``jitter_prob`` of the
        images, then grayscale on ``grayscale_prob``; values stay in [0, 1]."""
        b, c = x.shape[:2]
        on = self._coin(x, self.jitter_prob, g)

        def factor(s: float) -> torch.Tensor:  # 1 where the jitter does not apply
            f = self._uniform(b, 1 - s, 1 + s, x, g).clamp_(min=0).view(b, 1, 1, 1)
            return torch.where(on, f, torch.ones_like(f))

        if self.brightness > 0:
            x = (x * factor(self.brightness)).clamp_(0, 1)
        if self.contrast > 0:
            mean = (_gray(x) if c == 3 else x).mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * factor(self.contrast) + mean).clamp_(0, 1)
        if c == 3 and self.saturation > 0:
            gray = _gray(x)
            x = ((x - gray) * factor(self.saturation) + gray).clamp_(0, 1)
        if c == 3 and self.hue > 0:
            shift = self._uniform(b, -self.hue, self.hue, x, g).view(b, 1, 1) * on.view(b, 1, 1)
            x = _shift_hue(x, shift)
        if c == 3 and self.grayscale_prob > 0:
            x = torch.where(self._coin(x, self.grayscale_prob, g), _gray(x).expand_as(x), x)
        return x

    def _blur(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Gaussian blur with a sigma per image, separable: each pass is a weighted sum of
        shifted copies (per-image weights broadcast), cheaper than a grouped convolution."""
        if self.blur_prob == 0:
            return x
        b, _, h, w = x.shape
        scale = min(h, w) / 224  # sigmas are given for 224 px images (SimCLR/BYOL recipes)
        sigma = self._uniform(b, self.blur_sigma_min, self.blur_sigma_max, x, g) * scale
        sigma = torch.where(self._coin(x, self.blur_prob, g).view(b), sigma, torch.zeros_like(sigma))
        radius = max(1, math.ceil(3 * self.blur_sigma_max * scale))
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.clamp(min=1e-3).view(-1, 1) ** 2))
        kernel = torch.where(sigma.view(-1, 1) > 0, kernel, (offsets == 0).to(x.dtype).expand_as(kernel))
        kernel = (kernel / kernel.sum(1, keepdim=True)).view(b, 1, 1, 1, -1)  # [B, 1, 1, 1, K]
        padded = F.pad(x, (radius, radius, 0, 0), mode="reflect")
        x = kernel[..., 0] * padded[..., :w]
        for k in range(1, 2 * radius + 1):  # along W
            x = x + kernel[..., k] * padded[..., k:k + w]
        padded = F.pad(x, (0, 0, radius, radius), mode="reflect")
        out = kernel[..., 0] * padded[..., :h, :]
        for k in range(1, 2 * radius + 1):  # along H
            out = out + kernel[..., k] * padded[..., k:k + h, :]
        return out

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


def _gray(x: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` -> luma ``[B,1,H,W]``."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB ``[B,3,H,W]`` in [0, 1] by ``shift`` ``[B,1,1]`` turns (HSV)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, ((g - b) / safe) % 6,
                    torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    h = (h + shift) % 1.0
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)),
                    torch.zeros_like(maxc))
    # HSV -> RGB: each channel from its own offset on the hue circle
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + h.unsqueeze(1) * 6) % 6
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return maxc.unsqueeze(1) - (maxc * s).unsqueeze(1) * ramp


_NATURAL = ViewAugment(crop_scale_min=0.08, rotation_degrees=0, hflip_prob=0.5, jitter_prob=0.8,
                       brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale_prob=0.2,
                       noise_std=0.0, erase_prob=0.0)
# Two views per recipe. digits: today's grayscale recipe (a mirrored 3 is not a 3). simclr: the
# CIFAR-scale recipe of SimCLR/solo-learn (blur off at 32 px). byol: asymmetric blur and
# solarisation (Grill et al. 2020, table 6).
PRESETS: dict[str, tuple[ViewAugment, ViewAugment]] = {
    "digits": (ViewAugment(), ViewAugment()),
    "simclr": (_NATURAL, _NATURAL),
    "byol": (_NATURAL.replace(blur_prob=1.0), _NATURAL.replace(blur_prob=0.1, solarize_prob=0.2)),
}


def view_pair(preset: str, **overrides: float | None) -> tuple[ViewAugment, ViewAugment]:
    """The two views' recipes of ``preset``, with every override that is not None applied to both."""
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; choose one of {sorted(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    first, second = PRESETS[preset]
    return first.replace(**changes), second.replace(**changes)
