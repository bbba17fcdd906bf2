"""Images as callers send them to a registered model: file paths, base64-encoded files, raw
bytes or pixel arrays of any size, dtype and mode, in a column ``image`` (or a dict with that
key, or a list). Framework-free, shipped inside every logged model."""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from pipeline_tasks.preprocess import prepare_image


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


def image_cells(model_input: Any) -> list[Any]:
    """The images of any accepted input form, in order."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame({"image": list(model_input["image"])})
    if isinstance(model_input, pd.DataFrame):
        column = "image" if "image" in model_input.columns else model_input.columns[0]
        return list(model_input[column])
    return list(model_input)


def prepare_batch(model_input: Any, size: int, channels: int, resize: str) -> np.ndarray:
    """Every image of ``model_input`` through the training recipe: uint8 ``[N, C, size, size]``.
    A cell that cannot be read is a ``ValueError`` naming it (its path, or its position)."""
    arrays = []
    for i, cell in enumerate(image_cells(model_input)):
        try:
            with open_image(cell) as im:
                arrays.append(prepare_image(ImageOps.exif_transpose(im), size, channels, resize))
        except (OSError, ValueError) as exc:
            what = f"{cell}" if isinstance(cell, str) and os.path.isfile(cell) else f"image {i}"
            raise ValueError(f"{what}: does not decode as an image ({exc})") from exc
    return np.stack(arrays) if arrays else np.empty((0, channels, size, size), dtype=np.uint8)
