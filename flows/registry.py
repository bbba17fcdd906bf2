"""The MLflow model registry: log the classifier as a pyfunc, register it, gate the aliases.

Registering and moving aliases are two steps on purpose. ``register_model`` logs and
registers a version, records on it what it was scored on (test-split fingerprint, data
version, label budget, lift over scratch) and works out the gate's decision, but moves no
alias. ``apply_decision`` moves ``challenger`` (and ``champion`` when the gate says so) and
writes the decision into the version's tags and description; the flow calls it only after
every other step has succeeded, so a failed run moves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
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
from flows.gate import Decision, Scored, decide
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.cache import load_split

# Pinned like pyproject.toml: naming them saves MLflow ~10 s of requirement inference.
PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "numpy", "pandas", "pillow"]
# One input schema for Python and REST alike: a column `image` whose cells are file paths,
# base64-encoded image files, or pixel arrays [H, W] / [H, W, C] of any size (see pyfunc_model.py).
INPUT_SCHEMA = Schema([ColSpec(AnyType(), "image")])
ENCODER_MODEL = "pretrainflow-encoder"


@dataclass(frozen=True)
class RegisterRecord:
    model_name: str
    version: str
    aliases: tuple[str, ...]  # the aliases this version holds (after apply_decision)
    run_id: str
    model_uri: str
    score: float
    promote: bool
    reason: str
    new_version: bool = True  # False: an identical classifier was registered before

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _output_schema(classes: list[str]) -> Schema:
    return Schema([ColSpec("long", "label"), ColSpec("string", "class_name"),
                   ColSpec("double", "confidence"), *[ColSpec("double", f"prob_{c}") for c in classes]])


def _example(preprocessed_dir: Path) -> pd.DataFrame:
    """Two test images as pixel arrays [H, W] or [H, W, 3]: the logged input example."""
    x, _ = load_split(preprocessed_dir, "test")
    arrays = [a.numpy().transpose(1, 2, 0) for a in x[:2]]
    return pd.DataFrame({"image": [a[..., 0] if a.shape[2] == 1 else a for a in arrays]})


def _log_model(artifacts: dict[str, str], outputs: Schema | None, preprocessed_dir: Path, name: str,
               artifact_path: str = "model") -> str:
    info = mlflow.pyfunc.log_model(
        name=artifact_path,
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts=artifacts,
        code_paths=[str(Path(pipeline_tasks.__file__).parent)],
        signature=ModelSignature(inputs=INPUT_SCHEMA, outputs=outputs),
        input_example=_example(preprocessed_dir),
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=name,
    )
    return str(info.registered_model_version)


def register_encoder(encoder_path: str | Path, preprocessed_dir: str | Path,
                     name: str = ENCODER_MODEL) -> str:
    """Register the pretrained encoder (a pyfunc that maps images to embeddings) inside the
    active run, for reuse as ``pretrain.init``; an identical encoder is not registered again.
    Returns the version."""
    client, digest = mlflow.MlflowClient(), classifier_digest(encoder_path)
    same = _same_classifier(client, name, digest)
    if same is not None:
        return str(same.version)
    artifacts = {"encoder": str(encoder_path), "recipe": str(Path(preprocessed_dir) / "splits.json")}
    version = _log_model(artifacts, None, Path(preprocessed_dir), name, artifact_path="encoder")
    client.set_model_version_tag(name, version, "classifier_digest", digest)
    return version  # the newest is models:/NAME/latest (MLflow reserves the alias "latest")


def download_encoder(uri: str) -> Path:
    """A registered encoder (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``) as a local
    ``encoder.pt``; ``ValueError`` when it cannot be found."""
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as exc:
        raise ValueError(f"pretrain.init {uri}: {str(exc).splitlines()[0]}; check the name and version "
                         "under Models in the MLflow UI") from exc
    found = sorted(local.rglob("encoder.pt"))
    if not found:
        raise ValueError(f"pretrain.init {uri}: not an encoder registered by pretrainflow (no encoder.pt)")
    return found[0]


def _version_by_alias(client: mlflow.MlflowClient, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _scored(version: Any, metric: str) -> Scored:
    tags = version.tags
    return Scored(str(version.version), float(tags.get(metric, "nan")), tags.get("test_split_sha256", ""),
                  tuple(json.loads(tags.get("classes", "[]"))))


def rescore(model_uri: str, preprocessed_dir: Path, classes: list[str], metric: str) -> float:
    """``metric`` of a registered model on this run's test split, through its own pyfunc."""
    from pipeline_tasks.evaluation.metrics import macro_f1  # noqa: PLC0415

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise ValueError(f"cannot load {model_uri}: {str(exc).splitlines()[0]}") from exc
    x, y = load_split(preprocessed_dir, "test")
    images = [a.numpy().transpose(1, 2, 0) for a in x]
    names = model.predict(pd.DataFrame({"image": [a[..., 0] if a.shape[2] == 1 else a for a in images]}))
    pred = np.array([classes.index(c) for c in names["class_name"]])
    if metric == "test_macro_f1":
        return macro_f1(y.numpy(), pred, len(classes))
    return float((pred == y.numpy()).mean())


def register_model(classifier_path: str | Path, metrics: dict[str, Any], split: dict[str, Any],
                   cfg: PipelineConfig, run_id: str, data_version: str,
                   preprocessed_dir: str | Path) -> RegisterRecord:
    """Log and register the classifier inside the active run ``run_id`` and decide on the
    aliases (moved later by ``apply_decision``). An identical classifier is not registered
    again: the record then names the existing version and moves nothing."""
    reg, client = cfg.register_, mlflow.MlflowClient()
    name, metric = reg.model_name, reg.metric
    digest = classifier_digest(classifier_path)
    classes = list(torch.load(classifier_path, map_location="cpu", weights_only=True)["classes"])
    same = _same_classifier(client, name, digest)
    if same is not None:
        held = tuple(sorted(same.aliases))
        mlflow.set_tags({"registered_model": name, "registered_version": str(same.version)})
        return RegisterRecord(name, str(same.version), held, run_id, f"models:/{name}/{same.version}",
                              float(metrics[metric]), False,
                              f"identical to version {same.version} (same weights): nothing registered",
                              new_version=False)
    version = _log_model({"classifier": str(classifier_path)}, _output_schema(classes),
                         Path(preprocessed_dir), name)
    lift = metrics.get("lift_points")
    facts = {metric: metrics[metric], "test_accuracy": metrics["test_accuracy"],
             "test_split_sha256": split["test_split_sha256"], "test_images": metrics["test_images"],
             "data_version": data_version, "labels_used": metrics.get("labels_used"),
             "lift_points": lift, "scratch_test_accuracy": metrics.get("scratch_test_accuracy"),
             "classes": json.dumps(classes), "classifier_digest": digest, "run_id": run_id}
    for key, value in facts.items():
        if value is not None:
            client.set_model_version_tag(name, version, key, str(value))
    champion = _version_by_alias(client, name, "champion")
    me = Scored(version, float(metrics[metric]), split["test_split_sha256"], tuple(classes),
                None if lift is None else float(lift))
    decision = decide(
        me, None if champion is None else _scored(champion, metric), metric, reg.min_improvement,
        reg.require_lift, os.environ.get("DVC_EXP_NAME"),
        None if champion is None else lambda: rescore(
            f"models:/{name}/{champion.version}", Path(preprocessed_dir), classes, metric))
    mlflow.set_tags({"registered_model": name, "registered_version": version})
    return RegisterRecord(name, version, (), run_id, f"models:/{name}/{version}", me.score,
                          decision.promote, _reason(decision))


def _reason(decision: Decision) -> str:
    return ("champion: " if decision.promote else "challenger only: ") + decision.reason


def _same_classifier(client: mlflow.MlflowClient, name: str, digest: str) -> Any | None:
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.classifier_digest = '{digest}'")
    except MlflowException:
        return None
    return found[0] if found else None


def apply_decision(record: RegisterRecord) -> RegisterRecord:
    """Move ``challenger`` to the new version, and ``champion`` when the gate allowed it; write
    the decision on the version. Nothing moves for a version that was registered before."""
    if not record.new_version:
        return record
    client = mlflow.MlflowClient()
    aliases = ("challenger", "champion") if record.promote else ("challenger",)
    for alias in aliases:
        client.set_registered_model_alias(record.model_name, alias, record.version)
    client.set_model_version_tag(record.model_name, record.version, "gate_decision",
                                 "champion" if record.promote else "challenger")
    client.set_model_version_tag(record.model_name, record.version, "gate_reason", record.reason)
    client.update_model_version(record.model_name, record.version,
                                description=f"Promotion gate: {record.reason}")
    return RegisterRecord(**{**record.to_dict(), "aliases": aliases})
