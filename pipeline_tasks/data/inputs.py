"""Images as callers send them to a registered model: file paths, base64-encoded files, raw
bytes or pixel arrays of any size, dtype and mode, in a column ``image`` (or a dict with that
key, or a list). Framework-free, shipped inside every logged model."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from pipeline_tasks.data.decode import decode, prepare_image


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
            arrays.append(prepare_image(decode(cell), size, channels, resize))
        except (OSError, ValueError) as exc:
            what = f"{cell}" if isinstance(cell, str) and os.path.isfile(cell) else f"image {i}"
            raise ValueError(f"{what}: does not decode as an image ({exc})") from exc
    return np.stack(arrays) if arrays else np.empty((0, channels, size, size), dtype=np.uint8)
