"""One decode path for every image a user has: a file, its bytes, base64 text or a pixel array,
in the pool, in training, in serving and in hashing: the same picture must give the same pixels
whatever container it comes in.

The rules, in order:

1. Files: EXIF orientation applied; multi-frame files (GIF, TIFF, WebP, ...) use their first
   frame, and the manifest records the frame count; HEIC/HEIF are refused by name (Pillow
   cannot read them; convert them to JPEG or PNG).
2. Pixel values to 8 bits (``data.pixels``), one fixed scale per bit depth, never per image:
   uint8 as is; bool as 0/255; integers divided by their bit depth's largest value (uint16
   by 65535, int16 by 32767, a 12-bit TIFF by 4095), negative values clipped to 0; floats
   taken as [0, 1] (torchvision's ``ToTensor``, scikit-image's ``img_as_ubyte``) and clipped;
   NaN and infinity as 0. A file's bit depth is the file's own, not Pillow's mode: a 16-bit
   PNG or PGM that Pillow widens to mode ``I`` (int32) is still 16-bit (``sample_range``).
   Nested lists (JSON) carry no dtype: their whole numbers are 8-bit values, 0 to 255. So a
   brighter picture is never darker, and a file, its bytes and its array give the same pixels.
3. Colour: CMYK through its ICC profile to sRGB when it has one (LittleCMS), else Pillow's
   conversion; palette, YCbCr, LAB and HSV to RGB; transparency (RGBA, LA, palette with a
   transparent colour) flattened onto white.
4. To the model's input (``prepare_image``): L or RGB by ``channels``, then square by ``resize``.
   A JPEG decoded for a known input size is read at the smallest DCT scale that still holds it
   (``draft_size``; before rules 1-3, which then apply unchanged).

Untrusted input (a served model, ``data.inputs``) adds two guards, both off by default here:
``max_pixels`` refuses an image from its header (``Image.open`` is lazy) or an array from its
shape, before a pixel is decoded, so a tiny compressed file cannot claim gigabytes of memory;
``allow_paths=False`` never touches the file system, so a path is refused the same way whether
or not the file exists. Pillow's own ``DecompressionBombError`` (over ~179 MP) is a
``PixelLimitError`` too, never an unhandled exception.
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

from pipeline_tasks.data.pixels import high_depth_to_l, sample_range, to_uint8

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


class PixelLimitError(DecodeError):
    """An image with more pixels than allowed, refused before decoding. ``limit``: the limit it
    broke, or None for Pillow's decompression-bomb limit."""

    def __init__(self, message: str, limit: int | None) -> None:
        super().__init__(message)
        self.limit = limit


class PathRefusedError(DecodeError):
    """Text that looks like a file path where paths are not accepted (``allow_paths=False``)."""


def check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    """``PixelLimitError`` when ``width * height`` is over ``max_pixels`` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise PixelLimitError(f"{width} x {height} pixels is over the limit of {max_pixels:,}", max_pixels)


def refused_format(name: str, head: bytes = b"") -> str | None:
    """``HEIC``/``HEIF`` when the file name or its first bytes say so, else None."""
    found = REFUSED.get(Path(name).suffix.lower())
    return found or ("HEIC" if head[4:12] in _HEIF_BRANDS else None)


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


def from_array(pixels: Any, max_pixels: int | None = None) -> Image.Image:
    """A pixel array ``[H, W]``, ``[H, W, 1]``, ``[H, W, 2]`` (LA), ``[H, W, 3]`` or
    ``[H, W, 4]`` (RGBA) of any numeric dtype -> an L or RGB image (rules 2 and 3). Its shape
    is checked against ``max_pixels`` before any conversion (``to_uint8`` may copy it as float64)."""
    expected = "expected base64 text of an image file, its bytes, or an array of numbers"
    if not isinstance(pixels, list | tuple) and not hasattr(pixels, "__array__") \
            and not hasattr(pixels, "__array_interface__"):  # None, a number, a dict, ...
        raise DecodeError(f"a cell of type {type(pixels).__name__}: {expected}")
    try:
        raw = np.asarray(pixels)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise DecodeError(f"a list that is not a pixel array ({exc})") from exc
    if raw.dtype.kind not in "biuf" or raw.ndim == 0:  # strings; one number (JSON null is NaN)
        what = f"a single {raw.dtype} value" if raw.ndim == 0 else f"a pixel array of {raw.dtype} values"
        raise DecodeError(f"{what}: {expected}")
    if raw.ndim >= 2:
        check_pixels(raw.shape[1], raw.shape[0], max_pixels)
    if isinstance(pixels, list | tuple) and raw.dtype.kind in "iu":
        raw = _list_as_8_bit(raw)
    arr = to_uint8(raw)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    modes = {2: "LA", 3: "RGB", 4: "RGBA"}
    if arr.ndim == 2:
        return Image.fromarray(arr, "L")
    if arr.ndim == 3 and arr.shape[2] in modes:
        return _colour(Image.fromarray(np.ascontiguousarray(arr), modes[arr.shape[2]]))
    raise DecodeError(f"pixel array of shape {arr.shape}: expected [H, W], [H, W, 1], [H, W, 2], "
                      "[H, W, 3] or [H, W, 4]")


def _list_as_8_bit(raw: np.ndarray) -> np.ndarray:
    """Whole numbers from nested lists (JSON has no dtype) as the 8-bit values they are read
    as; ``DecodeError`` for values outside 0-255, which have no bit depth to scale by."""
    low, high = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
    if low < 0 or high > 255:
        raise DecodeError(f"a list of whole numbers from {low} to {high}: lists are read as 8-bit "
                          "values (0-255); send floats in [0, 1], or the image file base64-encoded "
                          "(a 16-bit PNG keeps its bit depth)")
    return raw.astype(np.uint8)


def draft_size(width: int, height: int, size: int, resize: str) -> tuple[int, int]:
    """The smallest ``(width, height)`` a ``width x height`` image may shrink to before
    ``prepare_image`` makes it ``size`` square by ``resize`` without upsampling: ``crop`` and
    ``squash`` need both sides at least ``size``, ``pad`` only the longer side (the shorter one
    in proportion). The same in the stored and the upright orientation."""
    if resize != "pad":
        return size, size
    longer = max(width, height, 1)
    return max(1, -(-width * size // longer)), max(1, -(-height * size // longer))


def normalise(im: Image.Image, min_size: tuple[int, int] | None = None) -> Image.Image:
    """An opened file's first frame, upright, in 8-bit L or RGB (rules 1-3). Reads the pixels.

    ``min_size``: ``(width, height)`` in the stored orientation that the caller needs at least
    (``draft_size``). A JPEG then decodes at the smallest DCT scale (1/2, 1/4 or 1/8) that keeps
    both sides at least that (Pillow's ``Image.draft``: libjpeg's scaled IDCT keeps each 8x8
    block's lowest frequencies, a low-pass downscale that skips most of the IDCT and colour work;
    ``bench/photo_decode.py`` measures it). Other formats decode in full. The draft is set before
    the pixels are read and before EXIF orientation, so rules 1-3 apply unchanged."""
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    if min_size is not None:
        im.draft(im.mode, min_size)  # a no-op for every format but JPEG
    depth = sample_range(im) if im.mode in ("I", "F") or im.mode.startswith("I;") else None
    im = ImageOps.exif_transpose(im)
    return _colour(im) if depth is None else high_depth_to_l(im, *depth)


def open_file(source: str | Path | bytes | BinaryIO, name: str = "",
              max_pixels: int | None = None) -> Image.Image:
    """Open an image file (a path, bytes or a binary stream) lazily: only its header is read.
    ``DecodeError`` names HEIC/HEIF and anything Pillow cannot identify; ``PixelLimitError``
    an image over ``max_pixels`` or over Pillow's decompression-bomb limit."""
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
        im = Image.open(stream)
    except Image.DecompressionBombError as exc:
        raise PixelLimitError(f"over Pillow's decompression-bomb limit ({exc})", None) from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(f"{label} is not an image (no format Pillow reads)") from exc
    except (OSError, ValueError) as exc:
        raise DecodeError(f"{label} is not an image ({exc})") from exc
    try:
        check_pixels(im.width, im.height, max_pixels)
    except PixelLimitError:
        im.close()
        raise
    return im


Target = tuple[int, str]  # (size, resize): the model input an image is decoded for


def decode(cell: Any, *, allow_paths: bool = True, max_pixels: int | None = None,
           target: Target | None = None) -> Image.Image:
    """Any input container -> an 8-bit L or RGB image: a path (when ``allow_paths``), raw file
    bytes, base64 text of a file, or a pixel array. ``DecodeError`` says which and why:
    ``PathRefusedError`` for a path-looking text or a ``Path`` without ``allow_paths`` (decided
    from the text alone, never from the file system), ``PixelLimitError`` over ``max_pixels``.
    ``target``: ``(size, resize)`` of the ``prepare_image`` call that follows; a JPEG file is
    then decoded no larger than that needs (``draft_size``, ``normalise``)."""
    if isinstance(cell, str | Path) and allow_paths and os.path.isfile(cell):  # False for long text
        with open_file(cell, max_pixels=max_pixels) as im:
            return _decoded(im, str(cell), target)
    if isinstance(cell, bytes):
        with open_file(cell, "the file", max_pixels) as im:
            return _decoded(im, "the file", target)
    if isinstance(cell, Path):
        raise DecodeError(f"{cell}: no such file") if allow_paths else PathRefusedError("a file path")
    if isinstance(cell, str):
        return _from_base64(cell, allow_paths, max_pixels, target)
    return from_array(cell, max_pixels)


def _from_base64(text: str, allow_paths: bool, max_pixels: int | None, target: Target | None) -> Image.Image:
    """Base64 text of an image file -> the image. Text that is not base64 and has a path's
    characters (``/``, ``\\``, ``.``, ``~``) is a ``PathRefusedError`` without ``allow_paths``."""
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)  # line breaks allowed (`base64`)
    except (binascii.Error, ValueError) as exc:
        if allow_paths:
            raise DecodeError(f"{text[:60]!r}: neither an existing file nor a base64-encoded image") from exc
        if any(c in text for c in "/\\.~") and len(text) < 1024:
            raise PathRefusedError("not base64 and looks like a file path") from exc
        raise DecodeError("text that is not base64 (send an image file base64-encoded)") from exc
    with open_file(raw, "base64 text", max_pixels) as im:
        return _decoded(im, "base64 text", target)


def _decoded(im: Image.Image, label: str, target: Target | None = None) -> Image.Image:
    try:
        return normalise(im, draft_size(im.width, im.height, *target) if target else None)
    except Image.DecompressionBombError as exc:  # a later frame over Pillow's limit
        raise PixelLimitError(f"over Pillow's decompression-bomb limit ({exc})", None) from exc
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


def load_image(path: Path | BinaryIO, size: int, channels: int, resize: str = "crop",
               name: str = "") -> np.ndarray:
    """Decode one file (a path, or a binary stream of its bytes) to the model's input ``uint8
    [C, size, size]`` (rules 1-4), a JPEG at the smallest DCT scale that still holds ``size``
    (``normalise``). ``name``: what a ``DecodeError`` calls a stream (default "image")."""
    target = (size, resize)
    if isinstance(path, Path):
        im = decode(path, target=target)
    else:
        with open_file(path, name or "image") as opened:
            im = _decoded(opened, name or "image", target)
    return prepare_image(im, size, channels, resize)
