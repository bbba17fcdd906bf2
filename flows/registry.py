"""Log the classifier as an MLflow pyfunc model, register it, and gate the champion alias."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

import pipeline_tasks
from pipeline_tasks.config import PipelineConfig

GATE_METRIC = "test_accuracy"
# Pinned like pyproject.toml: naming them saves MLflow ~10 s of requirement inference.
PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "numpy", "pandas", "pillow"]


@dataclass(frozen=True)
class RegisterRecord:
    model_name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str
    model_uri: str
    test_accuracy: float
    previous_champion: str | None


def _example_input(cfg: PipelineConfig) -> np.ndarray:
    size, channels = cfg.data.image_size, cfg.data.channels
    shape = (2, size, size) if channels == 1 else (2, size, size, 3)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def _champion(client: mlflow.MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def register_model(classifier_path: str | Path, metrics: dict[str, float], cfg: PipelineConfig,
                   run_id: str) -> RegisterRecord:
    """Log + register the model inside the active run ``run_id``.

    ``challenger`` always moves to the new version; ``champion`` moves when there is none yet
    or the new version beats the champion's test accuracy by ``register.min_improvement``.
    """
    name = cfg.register_.model_name
    example = _example_input(cfg)
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={"classifier": str(classifier_path)},
        code_paths=[str(Path(pipeline_tasks.__file__).parent)],
        signature=ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *example.shape[1:]))]),
            outputs=Schema([ColSpec("string", "label"), ColSpec("double", "confidence")]),
        ),
        input_example=example,
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=name,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    score = float(metrics[GATE_METRIC])
    client.set_model_version_tag(name, version, GATE_METRIC, str(score))
    champion = _champion(client, name)
    previous = None if champion is None else str(champion.version)
    best = None if champion is None else float(champion.tags.get(GATE_METRIC, "-inf"))
    aliases = ["challenger"]
    client.set_registered_model_alias(name, "challenger", version)
    if best is None or score > best + cfg.register_.min_improvement:
        client.set_registered_model_alias(name, "champion", version)
        aliases.append("champion")
    mlflow.set_tags({"registered_model": name, "registered_version": version,
                     "aliases": ",".join(aliases)})
    return RegisterRecord(name, version, tuple(aliases), run_id, f"models:/{name}/{version}", score,
                          previous)
