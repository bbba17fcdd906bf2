"""The registered model, as MLflow "models from code": this file is copied into the model.

Input: a DataFrame (or ``{"image": [...]}``) with a column ``image`` whose cells are file
paths, base64-encoded image files (PNG, JPEG, ...; what a REST client sends), or pixel arrays
``[H, W]`` / ``[H, W, C]`` of any size, dtype and mode. The model applies the training recipe
itself (mode conversion, resize to the trained size), so callers send images as they are.
Output: one row per image with ``label`` (class index), ``class_name``, ``confidence`` and
``prob_<class>`` for every class. It imports only mlflow, numpy, pandas, pillow, torch and
``pipeline_tasks`` (shipped as model code), so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` work outside this project.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel
from PIL import Image


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


class ImageClassifier(PythonModel):
    def load_context(self, context: Any) -> None:
        from pipeline_tasks.finetune import classifier_recipe, load_classifier

        path = context.artifacts["classifier"]
        self.model, self.classes = load_classifier(path)
        self.recipe = classifier_recipe(path)

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # Untyped on purpose: MLflow would turn type hints into a second, list-based schema;
        # the logged signature (one `image` column of any type) is the contract.
        from PIL import ImageOps

        from pipeline_tasks.finetune import predict_logits
        from pipeline_tasks.preprocess import prepare_image

        size, channels = self.recipe["image_size"], self.recipe["channels"]
        arrays = []
        for i, cell in enumerate(image_cells(model_input)):
            try:
                with open_image(cell) as im:
                    arrays.append(prepare_image(ImageOps.exif_transpose(im), size, channels))
            except (OSError, ValueError) as exc:
                what = f"{cell}" if isinstance(cell, str) and os.path.isfile(cell) else f"image {i}"
                raise ValueError(f"{what}: does not decode as an image ({exc})") from exc
        if not arrays:
            return pd.DataFrame(columns=["label", "class_name", "confidence"])
        batch = torch.from_numpy(np.stack(arrays))
        probs = torch.softmax(predict_logits(self.model, batch, torch.device("cpu")), dim=1).numpy()
        index = probs.argmax(1)
        out = pd.DataFrame({"label": index.astype(np.int64),
                            "class_name": [self.classes[i] for i in index],
                            "confidence": probs.max(1).astype(np.float64)})
        for j, name in enumerate(self.classes):
            out[f"prob_{name}"] = probs[:, j].astype(np.float64)
        return out


mlflow.models.set_model(ImageClassifier())
