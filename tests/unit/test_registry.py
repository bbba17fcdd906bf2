"""The registry on a real MLflow sqlite store: versions, tags, the two-step alias move."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch

from flows.registry import RegisterRecord, apply_decision, classifier_digest, register_model
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.preprocess import PreprocessRecord
from pipeline_tasks.evaluation.evaluate import score
from pipeline_tasks.models.classifier import load_classifier, save_classifier
from pipeline_tasks.models.encoders import Classifier, EncoderSpec, ResNetEncoder

NAME = "digits"
RECIPE = {"image_size": 28, "channels": 1, "resize": "crop"}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[mlflow.MlflowClient]:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(tmp_path)  # the Default experiment keeps its artifacts in ./mlruns
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


def classifier(tmp_path: Path, seed: int, classes: tuple[str, ...]) -> Path:
    """Random weights, seeded: equal seeds give equal weights (and equal digests)."""
    torch.manual_seed(seed)
    path = tmp_path / f"classifier-{seed}-{len(classes)}.pt"
    save_classifier(Classifier(ResNetEncoder(EncoderSpec(1, 4)), len(classes)).eval(), classes, RECIPE, path)
    return path


def register(path: Path, cfg: PipelineConfig, pre: PreprocessRecord, accuracy: float,
             lift: float | None = 5.0, split: str | None = None) -> RegisterRecord:
    metrics: dict[str, Any] = {"test_accuracy": accuracy, "test_macro_f1": accuracy, "test_images": 20,
                               "labels_used": 50, "lift_points": lift}
    with mlflow.start_run() as run:
        return register_model(path, metrics, {"test_split_sha256": split or pre.test_split_sha256}, cfg,
                              run.info.run_id, "md5-test", pre.out_dir)


def aliases(client: mlflow.MlflowClient) -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(NAME).aliases.items()}


@pytest.fixture
def cfg(tiny_cfg: PipelineConfig) -> PipelineConfig:
    return tiny_cfg.model_copy(update={"register_": tiny_cfg.register_.model_copy(
        update={"model_name": NAME, "require_lift": True, "min_improvement": 0.01})})


def test_aliases_move_only_when_applied_and_only_for_a_better_version(
        store: mlflow.MlflowClient, cfg: PipelineConfig, pre: PreprocessRecord, tmp_path: Path) -> None:
    first = register(classifier(tmp_path, 1, pre.classes), cfg, pre, 0.80)
    assert first.promote and aliases(store) == {}  # registered, nothing moved yet
    apply_decision(first)
    assert aliases(store) == {"champion": "1", "challenger": "1"}

    worse = apply_decision(register(classifier(tmp_path, 2, pre.classes), cfg, pre, 0.805))
    assert aliases(store) == {"champion": "1", "challenger": "2"} and worse.aliases == ("challenger",)
    tags = store.get_model_version(NAME, "2").tags
    assert tags["gate_decision"] == "challenger" and "not better by the margin" in tags["gate_reason"]
    assert "0.8050" in tags["gate_reason"] and "0.8000" in tags["gate_reason"]
    assert tags["test_split_sha256"] == pre.test_split_sha256 and tags["labels_used"] == "50"
    assert tags["lift_points"] == "5.0" and tags["data_version"] == "md5-test"
    assert "not better" in store.get_model_version(NAME, "2").description

    # a failure between registration and apply_decision (the flow's last step) moves nothing
    better = register(classifier(tmp_path, 3, pre.classes), cfg, pre, 0.90)
    assert better.promote and aliases(store) == {"champion": "1", "challenger": "2"}
    apply_decision(better)
    assert aliases(store) == {"champion": "3", "challenger": "3"}


def test_no_lift_over_scratch_means_no_champion(store: mlflow.MlflowClient, cfg: PipelineConfig,
                                                pre: PreprocessRecord, tmp_path: Path) -> None:
    record = apply_decision(register(classifier(tmp_path, 1, pre.classes), cfg, pre, 0.99, lift=-1.0))
    assert aliases(store) == {"challenger": "1"} and "scratch baseline" in record.reason


def test_an_identical_classifier_adds_no_version(store: mlflow.MlflowClient, cfg: PipelineConfig,
                                                 pre: PreprocessRecord, tmp_path: Path) -> None:
    path = classifier(tmp_path, 1, pre.classes)
    apply_decision(register(path, cfg, pre, 0.8))
    again = tmp_path / "again.pt"  # the same weights saved again: a new file, the same content
    save_classifier(*load_classifier(path), RECIPE, again)
    assert classifier_digest(again) == classifier_digest(path)
    record = apply_decision(register(again, cfg, pre, 0.8))
    assert not record.new_version and record.version == "1" and "identical" in record.reason
    assert len(store.search_model_versions(f"name = '{NAME}'")) == 1
    assert aliases(store) == {"champion": "1", "challenger": "1"}


def test_another_test_split_rescores_the_champion(store: mlflow.MlflowClient, cfg: PipelineConfig,
                                                  pre: PreprocessRecord, tmp_path: Path) -> None:
    champion = classifier(tmp_path, 1, pre.classes)
    apply_decision(register(champion, cfg, pre, 0.99, split="another-split"))  # its tag says 0.99
    record = register(classifier(tmp_path, 2, pre.classes), cfg, pre, 0.5)
    probs, y, _ = score(pre.out_dir, champion, 64)
    real = float((probs.argmax(1) == y).mean())  # the champion's accuracy on this split
    assert "re-scored on this run's test split" in record.reason and f"{real:.4f}" in record.reason
    assert record.promote == (0.5 > real + 0.01)


def test_another_class_set_never_takes_the_alias(store: mlflow.MlflowClient, cfg: PipelineConfig,
                                                 pre: PreprocessRecord, tmp_path: Path) -> None:
    apply_decision(register(classifier(tmp_path, 1, pre.classes), cfg, pre, 0.5))
    record = apply_decision(register(classifier(tmp_path, 2, ("cat", "dog")), cfg, pre, 0.99))
    assert aliases(store)["champion"] == "1" and "different task" in record.reason
    assert json.loads(store.get_model_version(NAME, "2").tags["classes"]) == ["cat", "dog"]


def test_a_dvc_experiment_leaves_champion_alone(store: mlflow.MlflowClient, cfg: PipelineConfig,
                                                pre: PreprocessRecord, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    apply_decision(register(classifier(tmp_path, 1, pre.classes), cfg, pre, 0.5))
    monkeypatch.setenv("DVC_EXP_NAME", "quick-fox")
    record = apply_decision(register(classifier(tmp_path, 2, pre.classes), cfg, pre, 0.99))
    assert aliases(store) == {"champion": "1", "challenger": "2"} and "quick-fox" in record.reason
