"""Decoding: any image a user has (a file, its bytes, base64 text, or a pixel array) to the
uint8 ``[C, H, W]`` the cache and the models take.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps


def prepare_image(im: Image.Image, size: int, channels: int, resize: str = "crop") -> np.ndarray:
    """Any PIL image -> ``uint8 [C, size, size]``: transparency flattened onto white, 16-bit
    scaled to 8-bit, converted to L or RGB, then made square by ``resize``: ``crop`` (shorter
    side to ``size``, centre crop), ``pad`` (longer side to ``size``, black borders) or
    ``squash`` (both sides to ``size``). The one recipe for training and serving."""
    if im.mode not in ("L", "RGB"):
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
        else:
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        if resize == "crop":
            im = ImageOps.fit(im, (size, size), Image.Resampling.BILINEAR)
        elif resize == "pad":
            im = ImageOps.pad(im, (size, size), Image.Resampling.BILINEAR, color=0)
        else:
            im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_image(path: Path | BinaryIO, size: int, channels: int, resize: str = "crop") -> np.ndarray:
    """Decode one file to ``uint8 [C, size, size]`` (EXIF-rotated, then ``prepare_image``)."""
    with Image.open(path) as src:
        return prepare_image(ImageOps.exif_transpose(src), size, channels, resize)


def to_uint8(pixels: Any) -> np.ndarray:
    """Pixel values of any dtype as uint8: floats in [0, 1] are scaled, 16-bit values divided
    by 257, everything else clipped to [0, 255]."""
    arr = np.asarray(pixels)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    values = arr.astype(np.float64)
    if arr.dtype.kind == "f" and values.size and np.nanmax(values) <= 1.0:
        values = values * 255.0
    elif arr.dtype.kind in "iu" and values.size and values.max() > 255:
        values = values / 257.0
    return np.nan_to_num(values).round().clip(0, 255).astype(np.uint8)


def open_image(cell: Any) -> Image.Image:
    """One input cell as a PIL image: a path, base64 file bytes, raw bytes, or pixels."""
    if isinstance(cell, bytes):
        return Image.open(io.BytesIO(cell))
    if isinstance(cell, str):
        if os.path.isfile(cell):
            return Image.open(cell)
        try:
            return Image.open(io.BytesIO(base64.b64decode(cell, validate=True)))
        except (binascii.Error, ValueError, OSError) as exc:
            raise ValueError(f"{cell[:60]!r}: neither an existing file nor a base64-encoded image") from exc
    arr = to_uint8(cell)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"pixel array of shape {arr.shape}: expected [H, W], [H, W, 3] or [H, W, 4]")
    return Image.fromarray(arr)
