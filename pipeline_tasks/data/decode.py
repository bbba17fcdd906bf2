"""One decode path for every image a user has: a file, its bytes, base64 text or a pixel array,
in the pool, in training, in serving and in hashing (trust issue: the same 16-bit picture was
black as a file and grey as an array, and clipped to zero for the hash).

The rules, in order:

1. Files: EXIF orientation applied; multi-frame files (GIF, TIFF, WebP, ...) use their first
   frame, and the manifest records the frame count; HEIC/HEIF are refused by name (Pillow
   cannot read them; convert them to JPEG or PNG).
2. Pixel values to 8 bits (``to_uint8``): uint8 as is; bool as 0/255; integers without negative
   values divided by ``2**b - 1``, ``b`` the smallest bit depth of at least 8 that holds the
   image's largest value (16-bit data: 65535; 12-bit data in a 16-bit file: 4095), then x255;
   floats in [0, 1] x255; integers with negative values and floats outside [0, 1] scaled from
   their min-max to [0, 255]; NaN and infinity as 0.
3. Colour: CMYK through its ICC profile to sRGB when it has one (LittleCMS), else Pillow's
   conversion; palette, YCbCr, LAB and HSV to RGB; transparency (RGBA, LA, palette with a
   transparent colour) flattened onto white.
4. To the model's input (``prepare_image``): L or RGB by ``channels``, then square by ``resize``.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# Every suffix read as an image anywhere (listing, importers, predict), by Pillow format.
SUFFIXES = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".bmp": "BMP",
    ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".avif": "AVIF",
    ".pgm": "PPM", ".ppm": "PPM", ".pbm": "PPM", ".pnm": "PPM",
}
REFUSED = {".heic": "HEIC", ".heif": "HEIF"}  # formats Pillow cannot read: named, never "corrupt"
REFUSED_FIX = "convert it to JPEG or PNG (e.g. `heif-convert photo.heic photo.jpg`)"
_HEIF_BRANDS = (b"ftypheic", b"ftypheix", b"ftypheim", b"ftypheis", b"ftyphevc", b"ftypmif1", b"ftypmsf1")


class DecodeError(ValueError):
    """An input that is not a readable image; the message says what it is and what to do."""


def refused_format(name: str, head: bytes = b"") -> str | None:
    """``HEIC``/``HEIF`` when the file name or its first bytes say so, else None."""
    found = REFUSED.get(Path(name).suffix.lower())
    return found or ("HEIC" if head[4:12] in _HEIF_BRANDS else None)


def to_uint8(pixels: Any) -> np.ndarray:
    """Pixel values of any dtype as uint8 by the module's rule 2 (shape kept)."""
    arr = np.asarray(pixels)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = float(values.min()), float(values.max())
    if arr.dtype.kind in "iu" and low >= 0:
        scale = 2 ** max(8, int(high).bit_length()) - 1
        values = values / scale * 255.0
    elif arr.dtype.kind == "f" and low >= 0 and high <= 1:
        values = values * 255.0
    else:
        values = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    return values.round().clip(0, 255).astype(np.uint8)


def _flatten(im: Image.Image) -> Image.Image:
    """RGBA/LA onto white: what a viewer shows for the transparent parts."""
    base = "L" if im.mode == "LA" else "RGB"
    background = Image.new(base, im.size, 255 if base == "L" else (255, 255, 255))
    background.paste(im.convert(base), mask=im.getchannel("A"))
    return background


def _colour(im: Image.Image) -> Image.Image:
    """Any 8-bit Pillow mode -> L, RGB, or (for transparency) LA/RGBA, then flattened."""
    if im.mode == "CMYK" and im.info.get("icc_profile"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
            im = converted if converted is not None else im.convert("RGB")
        except (ImageCms.PyCMSError, OSError):
            im = im.convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("PA", "RGBa", "La"):
        im = im.convert("RGBA" if im.mode != "La" else "LA")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode not in ("L", "RGB", "RGBA", "LA"):
        im = im.convert("RGB")
    return _flatten(im) if im.mode in ("RGBA", "LA") else im


def from_array(pixels: Any) -> Image.Image:
    """A pixel array ``[H, W]``, ``[H, W, 1]``, ``[H, W, 2]`` (LA), ``[H, W, 3]`` or
    ``[H, W, 4]`` (RGBA) of any dtype -> an L or RGB image (rules 2 and 3)."""
    arr = to_uint8(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    modes = {2: "LA", 3: "RGB", 4: "RGBA"}
    if arr.ndim == 2:
        return Image.fromarray(arr, "L")
    if arr.ndim == 3 and arr.shape[2] in modes:
        return _colour(Image.fromarray(np.ascontiguousarray(arr), modes[arr.shape[2]]))
    raise DecodeError(f"pixel array of shape {arr.shape}: expected [H, W], [H, W, 1], [H, W, 2], "
                      "[H, W, 3] or [H, W, 4]")


def normalise(im: Image.Image) -> Image.Image:
    """An opened file's first frame, upright, in 8-bit L or RGB (rules 1-3). Reads the pixels."""
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F") or im.mode.startswith("I;"):
        return Image.fromarray(to_uint8(np.asarray(im)), "L")
    return _colour(im)


def open_file(source: str | Path | bytes | BinaryIO, name: str = "") -> Image.Image:
    """Open an image file (a path, bytes or a binary stream); ``DecodeError`` names HEIC/HEIF
    and anything Pillow cannot identify."""
    data = source if isinstance(source, bytes) else None
    stream: Any = io.BytesIO(data) if data is not None else source
    label = name or (str(source) if isinstance(source, str | Path) else "the image")
    head = data[:16] if data is not None else b""
    if isinstance(source, str | Path) and os.path.isfile(source):
        with open(source, "rb") as f:
            head = f.read(16)
    if (kind := refused_format(label, head)) is not None:
        raise DecodeError(f"{label}: {kind} is not supported; {REFUSED_FIX}")
    try:
        return Image.open(stream)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DecodeError(f"{label}: not a readable image ({exc})") from exc


def decode(cell: Any, *, allow_paths: bool = True) -> Image.Image:
    """Any input container -> an 8-bit L or RGB image: a path (when ``allow_paths``), raw file
    bytes, base64 text of a file, or a pixel array. ``DecodeError`` says which and why."""
    if isinstance(cell, str | Path) and allow_paths and os.path.isfile(cell):  # False for long text
        with open_file(cell) as im:
            return _decoded(im, str(cell))
    if isinstance(cell, bytes):
        with open_file(cell) as im:
            return _decoded(im, "the image bytes")
    if isinstance(cell, str):
        try:
            raw = base64.b64decode(cell, validate=True)
        except (binascii.Error, ValueError) as exc:
            what = "neither an existing file nor" if allow_paths else "not"
            raise DecodeError(f"{cell[:60]!r}: {what} a base64-encoded image") from exc
        with open_file(raw, "the base64 image") as im:
            return _decoded(im, "the base64 image")
    return from_array(cell)


def _decoded(im: Image.Image, label: str) -> Image.Image:
    try:
        return normalise(im)
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt pixel data
        raise DecodeError(f"{label}: its pixels do not decode ({type(exc).__name__}: {exc})") from exc


def prepare_image(im: Image.Image, size: int, channels: int, resize: str = "crop") -> np.ndarray:
    """An L or RGB image -> ``uint8 [C, size, size]``: converted to L or RGB by ``channels``,
    then made square by ``resize``: ``crop`` (shorter side to ``size``, centre crop), ``pad``
    (longer side to ``size``, black borders) or ``squash`` (both sides to ``size``)."""
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
    """Decode one file to the model's input ``uint8 [C, size, size]`` (rules 1-4)."""
    return prepare_image(decode(path) if isinstance(path, Path) else _decoded(open_file(path), "image"),
                         size, channels, resize)
