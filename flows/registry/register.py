"""The MLflow model registry: log the classifier as a pyfunc, register it, gate the aliases.

Registering and moving aliases are two steps on purpose. ``register_model`` logs and
registers a version, records on it what it was scored on (test-split fingerprint, data
version, label budget, each lift and its p-value, the images it saw) and works out the gate's
decision against the champion re-scored on shared images (``flows.registry.champion``), but
moves no alias. ``apply_decision`` moves ``challenger`` (and ``champion`` when the gate says so) and
writes the decision into the version's tags and description; the flow calls it only after
every other step has succeeded, so a failed run moves nothing. Both are safe to retry (Prefect
retries them): a version is found again by its digest, and an alias this version already holds
is not a changed champion.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException

from flows.registry.aliases import move_aliases
from flows.registry.champion import compare_with_champion
from flows.registry.gate import Challenger, Comparison, Decision, decide
from flows.registry.models import classifier_digest, log_registered_model, output_schema, same_version
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.seen import SEEN

# The lifts a version carries as tags, each with its McNemar p-value (evaluation.evaluate.LIFTS).
LIFT_TAGS = ("pretraining_lift", "pool_lift", "pipeline_lift", "lift_over_init")


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
    same = same_version(client, name, digest)
    if same is not None and not _unfinished(same, run_id):
        mlflow.set_tags({"registered_model": name, "registered_version": str(same.version)})
        return RegisterRecord(name, str(same.version), tuple(sorted(same.aliases)), run_id,
                              f"models:/{name}/{same.version}", float(metrics[reg.metric]), False,
                              f"identical to version {same.version} (same weights): nothing registered",
                              new_version=False)
    if same is None:
        artifacts = {"classifier": str(classifier_path), "seen_images": str(paths.preprocessed / SEEN)}
        version = log_registered_model(artifacts, output_schema(classes), paths.preprocessed, name,
                                       {"classifier_digest": digest, "run_id": run_id})
    else:  # this run registered it before a failure: go on from there (a retried task)
        version = str(same.version)
    _tag_version(client, name, version, metrics, split, data_version, classes, run_id, reg.metric)
    decision = _decide(client, cfg, version, metrics, classes, paths)
    mlflow.set_tags({"registered_model": name, "registered_version": version})
    return RegisterRecord(name, version, (), run_id, f"models:/{name}/{version}",
                          float(metrics[reg.metric]), decision.promote, _reason(decision), True,
                          decision.champion_version, decision.p_value)


def _unfinished(version: Any, run_id: str) -> bool:
    """A version this run registered and never decided on: a retry continues it."""
    return version.tags.get("run_id") == run_id and "gate_decision" not in version.tags


def _tag_version(client: mlflow.MlflowClient, name: str, version: str, metrics: dict[str, Any],
                 split: dict[str, Any], data_version: str, classes: list[str], run_id: str,
                 metric: str) -> None:
    """What the version was scored on, and how well: the gate and users read these."""
    facts = {metric: metrics[metric], "test_accuracy": metrics["test_accuracy"],
             "test_split_sha256": split["test_split_sha256"], "test_images": metrics["test_images"],
             "data_version": data_version, "labels_used": metrics.get("labels_used"),
             "scratch_test_accuracy": metrics.get("scratch_test_accuracy"),
             "scratch_pool_test_accuracy": metrics.get("scratch_pool_test_accuracy"),
             **{f"{lift}_{kind}": metrics.get(f"{lift}_{kind}") for lift in LIFT_TAGS
                for kind in ("points", "p_value")},
             "classes": json.dumps(classes), "run_id": run_id}
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
    lift, p = metrics.get("pretraining_lift_points"), metrics.get("pretraining_lift_p_value")
    me = Challenger(version, tuple(classes), float(metrics[reg.metric]),
                    None if lift is None else float(lift), None if p is None else float(p))
    return decide(me, comparison, reg.metric, reg.min_improvement, reg.significance, reg.require_lift,
                  os.environ.get("DVC_EXP_NAME"))


def _reason(decision: Decision) -> str:
    return ("champion: " if decision.promote else "challenger only: ") + decision.reason


def apply_decision(record: RegisterRecord) -> RegisterRecord:
    """Move ``challenger`` to the new version, and ``champion`` when the gate allowed it and the
    champion is still the one it was compared with (a compare-and-set, ``flows.registry.aliases``); write
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
