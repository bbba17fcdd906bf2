"""A model as MLflow logs it: the pyfunc of ``pyfunc_model.py`` with this project's code, its
input and output schemas and its example, and the digest that tells two equal models apart
from two registered ones."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType

import pipeline_tasks
from pipeline_tasks.data.cache import open_images

# Pinned like pyproject.toml: naming them saves MLflow ~10 s of requirement inference.
PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "timm>=1.0,<2", "numpy", "pandas", "pillow"]
# One input schema for Python and REST alike: a column `image` whose cells are base64-encoded
# image files, raw bytes or pixel arrays [H, W] / [H, W, C] of any size (file paths only with
# PRETRAINFLOW_ALLOW_PATHS=1 where the model is loaded; see pyfunc_model.py).
INPUT_SCHEMA = Schema([ColSpec(AnyType(), "image")])


def classifier_digest(path: str | Path) -> str:
    """sha256 over a classifier's or encoder's content (spec, classes, recipe, every tensor's
    bytes): equal for equal weights even when ``torch.save`` wrote the files at different times."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256(json.dumps({k: blob.get(k) for k in ("spec", "classes", "preprocess")},
                                  sort_keys=True).encode())
    for key in sorted(blob["state_dict"]):
        tensor = blob["state_dict"][key].contiguous()
        h.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def output_schema(classes: list[str]) -> Schema:
    """One row per input row: the prediction, and ``error`` ("" for a good row; for a bad one a
    line such as ``row 3: ...`` beside label -1, class_name "" and zero probabilities)."""
    return Schema([ColSpec("long", "label"), ColSpec("string", "class_name"),
                   ColSpec("double", "confidence"), *[ColSpec("double", f"prob_{c}") for c in classes],
                   ColSpec("string", "error")])


def _example(preprocessed_dir: Path) -> pd.DataFrame:
    """Two test images as pixel arrays [H, W] or [H, W, 3]: the logged input example."""
    arrays = [np.array(a).transpose(1, 2, 0) for a in open_images(preprocessed_dir, "test")[:2]]
    return pd.DataFrame({"image": [a[..., 0] if a.shape[2] == 1 else a for a in arrays]})


def model_parts(artifacts: dict[str, str], outputs: Schema | None, preprocessed_dir: Path) -> dict[str, Any]:
    """What every registered model is made of: the keyword arguments of ``mlflow.pyfunc.log_model``
    (and ``save_model``, which the tests use to build one without a tracking store)."""
    return {"python_model": str(Path(__file__).with_name("pyfunc_model.py")), "artifacts": artifacts,
            "code_paths": [str(Path(pipeline_tasks.__file__).parent)],
            "signature": ModelSignature(inputs=INPUT_SCHEMA, outputs=outputs),
            "input_example": _example(preprocessed_dir), "pip_requirements": PIP_REQUIREMENTS}


def log_registered_model(artifacts: dict[str, str], outputs: Schema | None, preprocessed_dir: Path,
                         name: str, tags: dict[str, str], artifact_path: str = "model") -> str:
    """Log the model in the active run and register it as a new version of ``name``, its ``tags``
    (at least ``classifier_digest``) set in the same request (``mlflow.register_model``): a
    version never exists without its digest, so a retried registration finds it
    (``same_version``) instead of registering a second copy. Returns the version."""
    info = mlflow.pyfunc.log_model(name=artifact_path, **model_parts(artifacts, outputs, preprocessed_dir))
    return str(mlflow.register_model(info.model_uri, name, tags=tags).version)


def same_version(client: mlflow.MlflowClient, name: str, digest: str) -> Any | None:
    """The registered version of ``name`` whose weights have ``digest``, or None."""
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.classifier_digest = '{digest}'")
    except MlflowException:
        return None
    return found[0] if found else None
