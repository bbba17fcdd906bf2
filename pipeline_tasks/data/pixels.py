"""Rule 2 of the one decode path (``data.decode``): pixel values of any bit depth to 8 bits,
by one fixed scale per bit depth, the same for a file, its bytes and a pixel array.

A scale taken from each image's own values (its maximum, or its min-max) would make a brighter
picture come out darker than a dim one and the model's answer depend on the container; the
fixed scale is the convention of torchvision's ``ToTensor`` and scikit-image's
``img_as_ubyte``: integers by their type's largest value, floats as [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


def to_uint8(pixels: Any, top: float | None = None) -> np.ndarray:
    """Pixel values of any numeric dtype as uint8 by the module's rule 2 (shape kept).

    ``top``: the integer value that becomes 255 (default: the dtype's largest, 65535 for
    uint16, 32767 for int16); a file passes its own bit depth's (``sample_range``). Floats are
    taken as [0, 1] whatever ``top`` is."""
    arr = np.asarray(pixels)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind in "iu":
        values = arr.astype(np.float64) / float(top or np.iinfo(arr.dtype).max)
    else:
        values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return (values.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)


def _first(value: Any, default: int) -> int:
    """A TIFF tag's first value (tags hold one value per sample), or ``default``."""
    if isinstance(value, tuple | list):
        value = value[0] if value else default
    return int(value) if value is not None else default


def sample_range(im: Image.Image) -> tuple[np.dtype[Any], float]:
    """``(dtype, top)``: what an opened high-bit-depth file (mode ``I;16*``, ``I`` or ``F``)
    stores per sample, from the file rather than from Pillow's mode, and the value rule 2 maps
    to 255. TIFF: BitsPerSample and SampleFormat (a 12-bit TIFF: uint16, 4095; 32-bit unsigned,
    which Pillow holds as int32: uint32, 4294967295). PNG and PGM/PPM: 16-bit unsigned, in
    whatever mode Pillow opens them (Pillow scales a PGM's maxval to 65535). Anything else in
    mode ``I``: int32. Read before the pixels are (the tags belong to the open file)."""
    if im.mode == "F":
        return np.dtype(np.float32), 1.0
    tags = getattr(im, "tag_v2", None)
    if im.format == "TIFF" and tags is not None:
        bits, kind = _first(tags.get(258), 16), _first(tags.get(339), 1)
        if kind == 3:
            return np.dtype(np.float32), 1.0
        signed = kind == 2
        dtype = np.dtype(f"{'i' if signed else 'u'}{2 if bits <= 16 else 4}")
        return dtype, float(2 ** (bits - 1 if signed else bits) - 1)
    if im.mode.startswith("I;16") or im.format in ("PNG", "PPM"):
        return np.dtype(np.uint16), 65535.0
    return np.dtype(np.int32), float(2**31 - 1)


def high_depth_to_l(im: Image.Image, dtype: np.dtype[Any], top: float) -> Image.Image:
    """A mode ``I;16*``/``I``/``F`` image (already upright) -> L by rule 2 at the file's depth."""
    arr = np.asarray(im)
    if dtype.kind in "iu" and arr.dtype.itemsize == dtype.itemsize:
        arr = arr.view(dtype)  # Pillow's int32 of a uint32 file: the same bits, read unsigned
    return Image.fromarray(to_uint8(arr, top if dtype.kind in "iu" else None), "L")
