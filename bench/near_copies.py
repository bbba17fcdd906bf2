"""The near-copy rule measured (``pipeline_tasks/data/nearcopy.py``): how far real copies of an
image move its 256-bit pHash, by kind of copy, against how close distinct images come, side by
side, on the 5,000 mnist-5k digits and on the photographs scikit-image ships (read as files with
Pillow; skipped when scikit-image is not installed).

    python bench/near_copies.py            # every digit (about 2 minutes on 2 cores)
    python bench/near_copies.py --n 1000   # the copies of the first 1,000 digits only

Each copy is written as a file, decoded by the one decode path and hashed as the manifest
hashes it. "upright" is the distance to the original's pHash; "any turn" the smallest distance
to the original's pHash in its 8 orientations (the rule); "caught" the share within NEAR_BITS.
Distinct images: every pair of the 5,000 digits, upright and in any orientation, with the
pairs of different classes, and the largest copy group the rule makes of them.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline_tasks.data.datasets import load_mnist_5k
from pipeline_tasks.data.decode import decode
from pipeline_tasks.data.nearcopy import NEAR_BITS, group_ids, near_pairs, orientations, phashes

PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "horse.png", "moon.png",
          "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "page.png", "text.png", "brick.png",
          "grass.png", "gravel.png", "motorcycle_left.png", "ihc.png", "cell.png", "clock_motion.png",
          "logo.png", "color.png", "microaneurysms.png", "phantom.png")


def _file(im: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kw)
    return out.getvalue()


def _crop(im: Image.Image, keep: float, centre: bool = True) -> Image.Image:
    """``keep`` of each side (at least one pixel less): from the centre, or from the top-left corner."""
    w, h = min(round(im.width * keep), im.width - 1), min(round(im.height * keep), im.height - 1)
    x, y = ((im.width - w) // 2, (im.height - h) // 2) if centre else (0, 0)
    return im.crop((x, y, x + w, y + h))


T = Image.Transpose
KINDS: dict[str, Callable[[Image.Image], bytes]] = {
    "resize 2x": lambda im: _file(im.resize((im.width * 2, im.height * 2), Image.Resampling.LANCZOS)),
    "thumbnail 20 px wide": lambda im: _file(im.resize((20, max(1, round(20 * im.height / im.width))),
                                                       Image.Resampling.LANCZOS)),
    "JPEG quality 75": lambda im: _file(im, "JPEG", quality=75),
    "JPEG quality 50": lambda im: _file(im, "JPEG", quality=50),
    "turned 90": lambda im: _file(im.transpose(T.ROTATE_90)),
    "turned 180": lambda im: _file(im.transpose(T.ROTATE_180)),
    "turned 270": lambda im: _file(im.transpose(T.ROTATE_270)),
    "mirrored": lambda im: _file(im.transpose(T.FLIP_LEFT_RIGHT)),
    "flipped top-bottom": lambda im: _file(im.transpose(T.FLIP_TOP_BOTTOM)),
    "turned 90 + JPEG 75": lambda im: _file(im.transpose(T.ROTATE_90), "JPEG", quality=75),
    "mirrored + resize 2x": lambda im: _file(im.transpose(T.FLIP_LEFT_RIGHT).resize(
        (im.width * 2, im.height * 2), Image.Resampling.LANCZOS)),
    **{f"centre crop {k}%": (lambda keep: lambda im: _file(_crop(im, keep / 100)))(k)
       for k in (99, 98, 95, 90, 80)},
    "corner crop 95%": lambda im: _file(_crop(im, 0.95, centre=False)),
}


def _bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of one code ``a [32]`` to each of ``b [K, 32]``."""
    return np.unpackbits(np.bitwise_xor(a[None], b), axis=1).sum(1)


def copy_distances(images: list[Image.Image]) -> dict[str, np.ndarray]:
    """Per kind: ``[N, 2]`` (upright distance, any-turn distance) of each image's copy."""
    out = {}
    for kind, make in KINDS.items():
        rows = []
        for im in images:
            ref = orientations(*phashes(im))
            copy = orientations(phashes(decode(make(im)))[0], "")[0]
            d = _bits(copy, ref)
            rows.append((d[0], d.min()))
        out[kind] = np.asarray(rows)
    return out


def _summary(d: np.ndarray) -> str:
    up, turn = d[:, 0], d[:, 1]
    return (f"{int(up.max()):>6} {100 * (up <= NEAR_BITS).mean():>5.0f}%  "
            f"{int(turn.max()):>8} {np.percentile(turn, 99):>4.0f} {100 * (turn <= NEAR_BITS).mean():>6.1f}%")


def distinct_pairs(hashed: list[tuple[str, str]], labels: np.ndarray) -> None:
    """Every pair of distinct digits within 32 bits, upright and in any orientation."""
    upright = near_pairs([(h, "") for h, _ in hashed], max_bits=32)
    turned = near_pairs(hashed, max_bits=32)
    print(f"\ndistinct digits: {len(hashed) * (len(hashed) - 1) // 2:,} pairs; within N bits (of them of "
          "different classes)")
    print(f"{'N':>4} {'upright':>16} {'any turn':>16}")
    for n in (12, 16, 20, 24, 28, 32):
        counts = []
        for pairs in (upright, turned):
            close = [(a, b) for a, b, d in pairs if d <= n]
            counts.append(f"{len(close):>7,} ({sum(labels[a] != labels[b] for a, b in close):>4,})")
        print(f"{n:>4} {counts[0]:>16} {counts[1]:>16}")
    for name, pairs in (("upright", upright), ("any turn", turned)):
        print(f"closest distinct pair, {name}: {min((d for *_, d in pairs), default='> 32')} bits")
    sizes = np.bincount(group_ids([f"digit{i}" for i in range(len(hashed))], hashed))
    print(f"the rule's groups (NEAR_BITS {NEAR_BITS}, any turn): largest {sizes.max()} image(s), "
          f"{int((sizes > 1).sum())} groups of 2 or more")


def _photos() -> list[Image.Image]:
    spec = importlib.util.find_spec("skimage")  # finds the package; does not import it
    if spec is None or not spec.submodule_search_locations:
        print("\n(scikit-image not installed: no photographs)")
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return [decode((folder / name).read_bytes()) for name in PHOTOS if (folder / name).is_file()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="digits whose copies are measured")
    args = parser.parse_args()
    arrays, labels = load_mnist_5k()
    digits = [decode(_file(Image.fromarray(a))) for a in arrays]
    photos = _photos()
    on_digits, on_photos = copy_distances(digits[:args.n]), copy_distances(photos) if photos else {}
    print(f"copies: distance in bits to the original (NEAR_BITS = {NEAR_BITS}); {args.n} digits, "
          f"{len(photos)} photos")
    head = f"{'upright':>6} {'caught':>6}  {'any turn':>4} {'p99':>4} {'caught':>7}"
    print(f"{'':24}{'digits':^36}|{'photos':^36}\n{'kind':<24}{head:>36} |{head:>36}")
    for kind in KINDS:
        right = _summary(on_photos[kind]) if photos else ""
        print(f"{kind:<24}{_summary(on_digits[kind]):>36} |{right:>36}")
    distinct_pairs([phashes(im) for im in digits], labels)
    if photos:
        pairs = near_pairs([phashes(im) for im in photos], max_bits=128)
        print(f"closest pair of distinct photos, any turn: {min(d for *_, d in pairs)} bits")


if __name__ == "__main__":
    main()
