"""The MLflow model registry: log the classifier as a pyfunc, register it, gate the aliases.

Registering and moving aliases are two steps on purpose. ``register_model`` logs and
registers a version, records on it what it was scored on (test-split fingerprint, data
version, label budget, lift over scratch and its p-value, the images it saw) and works out the
gate's decision against the champion re-scored on shared images (``flows.champion``), but moves no
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
from flows.aliases import move_aliases
from flows.champion import SEEN, compare_with_champion
from flows.gate import Challenger, Comparison, Decision, decide
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.cache import open_images

# Pinned like pyproject.toml: naming them saves MLflow ~10 s of requirement inference.
PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "numpy", "pandas", "pillow"]
# One input schema for Python and REST alike: a column `image` whose cells are base64-encoded
# image files, raw bytes or pixel arrays [H, W] / [H, W, C] of any size (file paths only with
# PRETRAINFLOW_ALLOW_PATHS=1 where the model is loaded; see pyfunc_model.py).
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
    champion_version: str | None = None  # the champion the decision was made against
    p_value: float | None = None  # of the paired test that decided, when one did

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


def _log_model(artifacts: dict[str, str], outputs: Schema | None, preprocessed_dir: Path, name: str,
               artifact_path: str = "model") -> str:
    info = mlflow.pyfunc.log_model(name=artifact_path, registered_model_name=name,
                                   **model_parts(artifacts, outputs, preprocessed_dir))
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


def register_model(classifier_path: str | Path, metrics: dict[str, Any], split: dict[str, Any],
                   cfg: PipelineConfig, run_id: str, data_version: str, paths: Any) -> RegisterRecord:
    """Log and register the classifier inside the active run ``run_id`` and decide on the
    aliases (moved later by ``apply_decision``). ``paths``: the run's ``ArtifactPaths``. An
    identical classifier is not registered again: the record then names the existing version
    and moves nothing."""
    reg, client = cfg.register_, mlflow.MlflowClient()
    name, digest = reg.model_name, classifier_digest(classifier_path)
    classes = list(torch.load(classifier_path, map_location="cpu", weights_only=True)["classes"])
    same = _same_classifier(client, name, digest)
    if same is not None:
        mlflow.set_tags({"registered_model": name, "registered_version": str(same.version)})
        return RegisterRecord(name, str(same.version), tuple(sorted(same.aliases)), run_id,
                              f"models:/{name}/{same.version}", float(metrics[reg.metric]), False,
                              f"identical to version {same.version} (same weights): nothing registered",
                              new_version=False)
    seen = paths.preprocessed / SEEN
    version = _log_model({"classifier": str(classifier_path), "seen_images": str(seen)},
                         output_schema(classes), paths.preprocessed, name)
    _tag_version(client, name, version, metrics, split, data_version, classes, digest, run_id, reg.metric)
    decision = _decide(client, cfg, version, metrics, classes, paths)
    mlflow.set_tags({"registered_model": name, "registered_version": version})
    return RegisterRecord(name, version, (), run_id, f"models:/{name}/{version}",
                          float(metrics[reg.metric]), decision.promote, _reason(decision), True,
                          decision.champion_version, decision.p_value)


def _tag_version(client: mlflow.MlflowClient, name: str, version: str, metrics: dict[str, Any],
                 split: dict[str, Any], data_version: str, classes: list[str], digest: str, run_id: str,
                 metric: str) -> None:
    """What the version was scored on, and how well: the gate and users read these."""
    facts = {metric: metrics[metric], "test_accuracy": metrics["test_accuracy"],
             "test_split_sha256": split["test_split_sha256"], "test_images": metrics["test_images"],
             "data_version": data_version, "labels_used": metrics.get("labels_used"),
             "lift_points": metrics.get("lift_points"), "lift_p_value": metrics.get("lift_p_value"),
             "scratch_test_accuracy": metrics.get("scratch_test_accuracy"), "classes": json.dumps(classes),
             "classifier_digest": digest, "run_id": run_id}
    for key, value in facts.items():
        if value is not None:
            client.set_model_version_tag(name, version, key, str(value))


def _decide(client: mlflow.MlflowClient, cfg: PipelineConfig, version: str, metrics: dict[str, Any],
            classes: list[str], paths: Any) -> Decision:
    reg = cfg.register_
    champion = _version_by_alias(client, reg.model_name, "champion")
    comparison: Comparison | str | None = None
    if champion is not None:
        predictions = pd.read_csv(paths.plots / "predictions.csv", dtype=str, keep_default_na=False)
        try:
            comparison = compare_with_champion(reg.model_name, champion, reg.metric, paths.preprocessed,
                                               Path(cfg.data.dir), predictions, classes)
        except (ValueError, OSError) as exc:
            comparison = f"champion version {champion.version} could not be re-scored ({exc})"
    lift, p = metrics.get("lift_points"), metrics.get("lift_p_value")
    me = Challenger(version, tuple(classes), float(metrics[reg.metric]),
                    None if lift is None else float(lift), None if p is None else float(p))
    return decide(me, comparison, reg.metric, reg.min_improvement, reg.significance, reg.require_lift,
                  os.environ.get("DVC_EXP_NAME"))


def _reason(decision: Decision) -> str:
    return ("champion: " if decision.promote else "challenger only: ") + decision.reason


def _same_classifier(client: mlflow.MlflowClient, name: str, digest: str) -> Any | None:
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.classifier_digest = '{digest}'")
    except MlflowException:
        return None
    return found[0] if found else None


def apply_decision(record: RegisterRecord) -> RegisterRecord:
    """Move ``challenger`` to the new version, and ``champion`` when the gate allowed it and the
    champion is still the one it was compared with (a compare-and-set, ``flows.aliases``); write
    the decision on the version. Nothing moves for a version that was registered before."""
    if not record.new_version:
        return record
    client = mlflow.MlflowClient()
    aliases, refused = move_aliases(client, record.model_name, record.version, record.promote,
                                    record.champion_version, f"run {record.run_id}")
    promoted = "champion" in aliases
    reason = record.reason if refused is None else f"challenger only: {refused}; it was {record.reason}"
    client.set_model_version_tag(record.model_name, record.version, "gate_decision",
                                 "champion" if promoted else "challenger")
    client.set_model_version_tag(record.model_name, record.version, "gate_reason", reason[:5000])
    if record.p_value is not None:
        client.set_model_version_tag(record.model_name, record.version, "gate_p_value",
                                     f"{record.p_value:.4g}")
    client.update_model_version(record.model_name, record.version, description=f"Promotion gate: {reason}")
    return RegisterRecord(**{**record.to_dict(), "aliases": aliases, "promote": promoted, "reason": reason})
