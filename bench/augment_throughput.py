"""Augmentation throughput, side by side in one run: views/s of

1. pretrainflow's batched augmentation (``pipeline_tasks.augment``, per-image parameters, on the
   training device),
2. the same recipe per sample with torchvision.transforms.v2 on PIL images, in a DataLoader
   with one worker per core (the usual PyTorch input pipeline), and
3. kornia's batched equivalent (``kornia.augmentation``), when kornia is installed,

and the ratios. The recipe is the ``simclr`` preset at 32 px RGB: random resized crop (scale
0.08-1), horizontal flip, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2;
``--preset byol`` adds blur and solarisation. Imports only torch, torchvision, numpy, Pillow,
kornia and ``pipeline_tasks``.

    python bench/augment_throughput.py                    # CPU here, CUDA when present
    python bench/augment_throughput.py --images 50000 --batch 512 --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_tasks.ssl.views import ViewAugment, view_pair  # noqa: E402


class PILImages(Dataset[torch.Tensor]):
    def __init__(self, images: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(Image.fromarray(self.images[i]))


def torchvision_recipe(aug: ViewAugment, size: int) -> v2.Compose:
    ops: list[torch.nn.Module] = [
        v2.RandomResizedCrop(size, scale=(aug.crop_scale_min, aug.crop_scale_max), antialias=True),
        v2.RandomHorizontalFlip(aug.hflip_prob),
        v2.RandomApply([v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)],
                       p=aug.jitter_prob),
        v2.RandomGrayscale(aug.grayscale_prob)]
    if aug.blur_prob:
        blur = v2.GaussianBlur(3, (aug.blur_sigma_min, aug.blur_sigma_max))
        ops.append(v2.RandomApply([blur], p=aug.blur_prob))
    if aug.solarize_prob:
        ops.append(v2.RandomSolarize(0.5, p=aug.solarize_prob))
    return v2.Compose([v2.ToImage(), *ops, v2.ToDtype(torch.float32, scale=True)])


def kornia_recipe(aug: ViewAugment, size: int) -> torch.nn.Module:
    import kornia.augmentation as K  # noqa: N812, PLC0415

    ops = [K.RandomResizedCrop((size, size), scale=(aug.crop_scale_min, aug.crop_scale_max)),
           K.RandomHorizontalFlip(p=aug.hflip_prob),
           K.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue, p=aug.jitter_prob),
           K.RandomGrayscale(p=aug.grayscale_prob)]
    if aug.blur_prob:
        ops.append(K.RandomGaussianBlur((3, 3), (aug.blur_sigma_min, aug.blur_sigma_max), p=aug.blur_prob))
    if aug.solarize_prob:
        ops.append(K.RandomSolarize(0.0, 0.0, p=aug.solarize_prob))
    return K.AugmentationSequential(*ops)


def timed(fn: Callable[[], int], device: torch.device, repeats: int) -> float:
    """Views per second of ``fn`` (which returns how many views it made), best of ``repeats``."""
    best = 0.0
    fn()  # warm-up: allocations, worker start-up, CUDA kernels
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        n = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--preset", default="simclr", choices=["simclr", "byol"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    aug = view_pair(args.preset)[0]
    print(f"{args.images} RGB images {args.size}x{args.size}, preset {args.preset}, batch {args.batch}, "
          f"device {device}, {os.cpu_count()} cores, torch {torch.__version__}")

    on_device = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    g = torch.Generator(device=device).manual_seed(0)

    def batched() -> int:
        for i in range(0, len(on_device), args.batch):
            aug(on_device[i:i + args.batch], g)
        return len(on_device)

    loader = DataLoader(PILImages(images, torchvision_recipe(aug, args.size)), batch_size=args.batch,
                        num_workers=args.workers, persistent_workers=args.workers > 0)

    def per_sample() -> int:
        return sum(len(b.to(device)) for b in loader)

    rates = {"batched (pretrainflow)": timed(batched, device, args.repeats)}
    name = f"torchvision v2 on PIL, DataLoader {args.workers} workers"
    rates[name] = timed(per_sample, device, args.repeats)
    try:
        k = kornia_recipe(aug, args.size).to(device)
        as_float = on_device.float() / 255

        def kornia_batched() -> int:
            for i in range(0, len(as_float), args.batch):
                k(as_float[i:i + args.batch])
            return len(as_float)

        rates["kornia (batched)"] = timed(kornia_batched, device, args.repeats)
    except ImportError:
        print("kornia is not installed (pip install kornia): its column is left out")
    ours = rates["batched (pretrainflow)"]
    for name, rate in rates.items():
        print(f"  {name:<48} {rate:>12,.0f} views/s   pretrainflow / this = {ours / rate:5.2f}x")


if __name__ == "__main__":
    main()
