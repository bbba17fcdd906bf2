"""Photo decoding: the one decode path (``decode.load_image``, JPEG draft mode) against a plain
full PIL decode of the same files, side by side in one run, in images/s.

    python bench/photo_decode.py                    # 300 photo-like JPEGs of 1024 x 768
    python bench/photo_decode.py --n 2000 --size 64

The JPEGs are made here (nothing is committed or downloaded): smooth colour gradients with
texture and noise, 1024 x 768, quality 90, with an EXIF orientation tag (rotate 90) so the
upright step is part of both paths. Both paths end at the same model input, ``uint8 [3, size,
size]`` by a centre crop; the plain one is what a pipeline without draft mode does (``Image.open``,
``ImageOps.exif_transpose``, ``convert("RGB")``, resize the shorter side, crop). Draft mode
decodes at the smallest DCT scale (1/2, 1/4, 1/8) that still holds ``size``, so the gain grows
as the training size shrinks against the photo (at 224 px from 1024 x 768: 1/2 scale). One
thread each, files in the page cache (read once before timing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_tasks.data.decode import load_image  # noqa: E402


def make_photos(out: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` photo-like 1024 x 768 JPEGs with an EXIF orientation of 6 (rotate 90)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:768, 0:1024].astype(np.float32)
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(0.002, 0.02, 3)
        base = np.stack([np.sin(xx * a + i), np.cos(yy * b), np.sin((xx + yy) * c)], -1) * 90 + 128
        texture = rng.normal(0, 12, (768 // 4, 1024 // 4, 3)).repeat(4, 0).repeat(4, 1)
        pixels = np.clip(base + texture + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
        exif = Image.Exif()
        exif[0x0112] = 6
        path = out / f"photo_{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90, exif=exif)
        paths.append(path)
    return paths


def plain(path: Path, size: int) -> np.ndarray:
    """A full decode, upright, RGB, shorter side to ``size``, centre crop: ``uint8 [3, size, size]``."""
    with Image.open(path) as im:
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    return np.asarray(ImageOps.fit(rgb, (size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1)


def rates(paths: list[Path], size: int) -> tuple[float, float]:
    """``(plain, load_image)`` images/s, the two calls alternating file by file, so that a busy
    machine slows both alike."""
    spent = [0.0, 0.0]
    for p in paths:
        for i, fn in enumerate((plain, lambda q, s: load_image(q, s, 3, "crop"))):
            start = time.perf_counter()
            fn(p, size)
            spent[i] += time.perf_counter() - start
    return len(paths) / spent[0], len(paths) / spent[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="JPEGs to make (default: 300)")
    parser.add_argument("--size", default="224,64", help="model input sizes (default: 224,64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.n)
        for p in paths:
            p.read_bytes()
        print(f"{args.n} JPEGs, 1024 x 768, EXIF orientation 6; images/s on one thread")
        print(f"{'size':>5} {'plain PIL':>10} {'load_image':>11} {'ratio':>6}")
        for size in map(int, args.size.split(",")):
            theirs, ours = rates(paths, size)
            print(f"{size:>5} {theirs:>10.0f} {ours:>11.0f} {ours / theirs:>5.2f}x")


if __name__ == "__main__":
    main()
