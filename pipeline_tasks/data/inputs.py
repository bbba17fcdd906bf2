"""Images as callers send them to a registered model: base64-encoded image files, raw bytes or
pixel arrays of any size, dtype and mode (file paths only with ``PRETRAINFLOW_ALLOW_PATHS=1``),
in a column ``image`` (or a dict with that key, or a list). Framework-free, shipped inside
every logged model.

A served model's input is untrusted, so three rules hold (``InputPolicy``, read from the
environment when the model is loaded, so a request cannot change it):

- file paths are refused unless the operator opts in, and the refusal is decided from the text
  alone: the answer is the same whether or not such a file exists on the server;
- an image over ``max_pixels`` (default 50 MP) is refused from its header or array shape,
  before it is decoded;
- every row gets an answer: a bad row is a one-line reason (``row 3: ...``), never an exception
  that fails the batch or a stack trace that shows the server's paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline_tasks.data.decode import DecodeError, PathRefusedError, PixelLimitError, decode, prepare_image

ALLOW_PATHS_ENV = "PRETRAINFLOW_ALLOW_PATHS"
MAX_PIXELS_ENV = "PRETRAINFLOW_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000  # a 50 MP photo: ~150 MB as RGB while it is decoded
REASON_CHARS = 300  # a row's reason is cut here: one readable line, whatever the input was


@dataclass(frozen=True)
class InputPolicy:
    """What a model accepts: file paths (``allow_paths``) and images up to ``max_pixels``."""

    allow_paths: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_env(cls) -> InputPolicy:
        """The policy the operator set in this process's environment (``PRETRAINFLOW_ALLOW_PATHS``,
        ``PRETRAINFLOW_MAX_PIXELS``): see ``parse``."""
        return cls.parse(os.environ.get("PRETRAINFLOW_ALLOW_PATHS", ""),
                         os.environ.get("PRETRAINFLOW_MAX_PIXELS", ""))

    @classmethod
    def parse(cls, allow_paths: str, max_pixels: str) -> InputPolicy:
        """``allow_paths``: 1/true/yes, 0/false/no or empty (no); ``max_pixels``: a positive
        integer (``_`` allowed) or empty (``DEFAULT_MAX_PIXELS``). ``ValueError`` for anything
        else, so a mistyped setting stops the server at load, not at the first request."""
        paths = allow_paths.strip().lower()
        if paths not in ("", "0", "1", "true", "false", "yes", "no"):
            raise ValueError(f"{ALLOW_PATHS_ENV}={allow_paths!r}: expected 1 (allow file paths) or 0")
        try:
            limit = int(max_pixels) if max_pixels.strip() else DEFAULT_MAX_PIXELS
        except ValueError:
            limit = 0
        if limit <= 0:
            raise ValueError(f"{MAX_PIXELS_ENV}={max_pixels!r}: expected a positive number of pixels, "
                             f"e.g. {DEFAULT_MAX_PIXELS}")
        return cls(paths in ("1", "true", "yes"), limit)


@dataclass(frozen=True)
class PreparedRows:
    """``images``: uint8 ``[K, C, size, size]`` of the ``K`` good rows, whose positions in the
    input are ``rows`` (int64 ``[K]``); ``errors``: one entry per input row, ``""`` when good."""

    images: np.ndarray
    rows: np.ndarray
    errors: list[str]


def image_cells(model_input: Any) -> list[Any]:
    """The images of any accepted input form, in order."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame({"image": list(model_input["image"])})
    if isinstance(model_input, pd.DataFrame):
        column = "image" if "image" in model_input.columns else model_input.columns[0]
        return list(model_input[column])
    return list(model_input)


def reason(exc: Exception) -> str:
    """Why a cell was refused, in one line of at most ``REASON_CHARS`` characters, with the
    setting to change where one applies. Never a stack trace."""
    if isinstance(exc, PixelLimitError) and exc.limit is not None:
        text = f"{exc} ({MAX_PIXELS_ENV})"
    elif isinstance(exc, PathRefusedError):
        text = (f"{exc}; file paths are refused: send the image file base64-encoded (for local batch use "
                f"set {ALLOW_PATHS_ENV}=1 where the model is loaded)")
    elif isinstance(exc, DecodeError):
        text = str(exc)
    else:  # anything else a cell can make Pillow or numpy raise
        text = f"not readable as an image ({type(exc).__name__}: {exc})"
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 3] + "..."


def prepare_rows(model_input: Any, size: int, channels: int, resize: str,
                 policy: InputPolicy) -> PreparedRows:
    """Every image of ``model_input`` through the training recipe, row by row: a row that cannot
    be read (not an image, over the pixel limit, a refused path, a cell of the wrong type) is an
    error line ``row I: reason`` and the other rows go on. Never raises for a bad row."""
    arrays, rows, errors = [], [], []
    for i, cell in enumerate(image_cells(model_input)):
        try:
            im = decode(cell, allow_paths=policy.allow_paths, max_pixels=policy.max_pixels,
                        target=(size, resize))  # a JPEG drafted exactly as in training
            arrays.append(prepare_image(im, size, channels, resize))
        except Exception as exc:  # anything a cell can raise: one bad row must not fail the batch
            errors.append(f"row {i}: {reason(exc)}")
            continue
        rows.append(i)
        errors.append("")
    images = np.stack(arrays) if arrays else np.empty((0, channels, size, size), dtype=np.uint8)
    return PreparedRows(images, np.asarray(rows, dtype=np.int64), errors)


LOCAL = InputPolicy(allow_paths=True)  # a trusted caller on this machine


def prepare_batch(model_input: Any, size: int, channels: int, resize: str,
                  policy: InputPolicy = LOCAL) -> np.ndarray:
    """``prepare_rows`` for trusted local use (paths allowed by default): uint8
    ``[N, C, size, size]``, or a ``ValueError`` with the first bad row's reason."""
    prepared = prepare_rows(model_input, size, channels, resize, policy)
    bad = [e for e in prepared.errors if e]
    if bad:
        raise ValueError(bad[0])
    return prepared.images
