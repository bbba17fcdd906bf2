"""The registry on a real MLflow sqlite store: versions, tags, the champion re-scored on the
images it never saw, significance, and the alias move as a compare-and-set."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from flows.registry.models import classifier_digest
from flows.registry.register import RegisterRecord, apply_decision, register_model
from flows.stages.artifacts import ArtifactPaths
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.manifest import build_manifest, describe_file
from pipeline_tasks.data.preprocess import PreprocessRecord, preprocess_data
from pipeline_tasks.data.seen import SEEN, read_seen
from pipeline_tasks.evaluation.evaluate import score
from pipeline_tasks.models.classifier import load_classifier, save_classifier
from pipeline_tasks.models.encoders import Classifier, Encoder, EncoderSpec

NAME = "digits"
RECIPE = {"image_size": 28, "channels": 1, "resize": "crop"}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[mlflow.MlflowClient]:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(tmp_path)  # the Default experiment keeps its artifacts in ./mlruns
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def paths(pre: PreprocessRecord, tmp_path: Path) -> ArtifactPaths:
    """A run's artifacts folder holding the tiny digits' cache."""
    run = ArtifactPaths(tmp_path / "artifacts")
    shutil.copytree(pre.out_dir, run.preprocessed)
    return run


@pytest.fixture
def cfg(tiny_cfg: PipelineConfig) -> PipelineConfig:
    return tiny_cfg.model_copy(update={"register_": tiny_cfg.register_.model_copy(
        update={"model_name": NAME, "require_lift": True, "min_improvement": 0.0, "significance": 0.05})})


def classifier(tmp_path: Path, seed: int, classes: tuple[str, ...]) -> Path:
    """Random weights, seeded: equal seeds give equal weights (and equal digests)."""
    torch.manual_seed(seed)
    path = tmp_path / f"classifier-{seed}-{len(classes)}.pt"
    save_classifier(Classifier(Encoder(EncoderSpec(1, 4)), len(classes)).eval(), classes, RECIPE, path)
    return path


def split_test_rows(paths: ArtifactPaths) -> pd.DataFrame:
    splits = pd.read_csv(paths.preprocessed / "splits.csv", dtype=str, keep_default_na=False)
    return splits[splits["split"] == "test"].reset_index(drop=True)


def predicted_by(model: Path, paths: ArtifactPaths) -> np.ndarray:
    probs, _, classes = score(paths.preprocessed, model, 64)
    return np.array(classes)[probs.argmax(1)]


def register(model: Path, cfg: PipelineConfig, paths: ArtifactPaths, predicted: np.ndarray | None = None,
             lift: float | None = 5.0, lift_p: float | None = 0.001) -> RegisterRecord:
    """Register ``model`` as evaluated with ``predicted`` (its own predictions by default)."""
    rows = split_test_rows(paths)
    predicted = predicted_by(model, paths) if predicted is None else predicted
    paths.plots.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"sha256": rows["sha256"], "actual": rows["label"], "predicted": predicted}).to_csv(
        paths.plots / "predictions.csv", index=False)
    accuracy = float((predicted == rows["label"].to_numpy()).mean())
    metrics: dict[str, Any] = {"test_accuracy": accuracy, "test_macro_f1": accuracy, "test_images": len(rows),
                               "labels_used": 50, "pretraining_lift_points": lift,
                               "pretraining_lift_p_value": lift_p}
    split = json.loads((paths.preprocessed / "splits.json").read_text())
    with mlflow.start_run() as run:
        return register_model(model, metrics, split, cfg, run.info.run_id, "md5-test", paths)


def aliases(client: mlflow.MlflowClient) -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(NAME).aliases.items()}


def test_better_beyond_noise_is_promoted_and_noise_is_not(
        store: mlflow.MlflowClient, cfg: PipelineConfig, paths: ArtifactPaths, pre: PreprocessRecord,
        tmp_path: Path) -> None:
    champion = classifier(tmp_path, 1, pre.classes)
    first = register(champion, cfg, paths)
    assert first.promote and aliases(store) == {}  # registered, nothing moved yet
    apply_decision(first)
    assert aliases(store) == {"champion": "1", "challenger": "1"}

    theirs, truth = predicted_by(champion, paths), split_test_rows(paths)["label"].to_numpy()
    wrong = np.flatnonzero(theirs != truth)
    one_more = theirs.copy()
    one_more[wrong[0]] = truth[wrong[0]]  # right on one image more: within noise
    noise = apply_decision(register(classifier(tmp_path, 2, pre.classes), cfg, paths, one_more))
    assert aliases(store) == {"champion": "1", "challenger": "2"} and noise.aliases == ("challenger",)
    tags = store.get_model_version(NAME, "2").tags
    assert tags["gate_decision"] == "challenger" and "not beyond noise" in tags["gate_reason"]
    assert "McNemar p = 0.5" in tags["gate_reason"] and tags["gate_p_value"] == "0.5"
    assert tags["test_split_sha256"] == json.loads((paths.preprocessed / "splits.json").read_text())[
        "test_split_sha256"] and tags["labels_used"] == "50" and tags["pretraining_lift_p_value"] == "0.001"

    better = register(classifier(tmp_path, 3, pre.classes), cfg, paths, truth)  # right on every image
    assert better.promote and "better beyond noise" in better.reason
    assert aliases(store) == {"champion": "1", "challenger": "2"}  # nothing moves before apply_decision
    apply_decision(better)
    assert aliases(store) == {"champion": "3", "challenger": "3"}


def test_a_lift_within_noise_or_below_zero_means_no_champion(
        store: mlflow.MlflowClient, cfg: PipelineConfig, paths: ArtifactPaths, tmp_path: Path) -> None:
    classes = tuple(str(c) for c in range(10))
    record = apply_decision(register(classifier(tmp_path, 1, classes), cfg, paths, lift=-1.0))
    assert aliases(store) == {"challenger": "1"} and "the same network from scratch" in record.reason
    record = apply_decision(register(classifier(tmp_path, 2, classes), cfg, paths, lift=1.5, lift_p=0.3))
    assert aliases(store) == {"challenger": "2"} and "within noise: McNemar p = 0.3" in record.reason


def test_an_identical_classifier_adds_no_version(store: mlflow.MlflowClient, cfg: PipelineConfig,
                                                 paths: ArtifactPaths, tmp_path: Path) -> None:
    path = classifier(tmp_path, 1, tuple(str(c) for c in range(10)))
    apply_decision(register(path, cfg, paths))
    again = tmp_path / "again.pt"  # the same weights saved again: a new file, the same content
    save_classifier(*load_classifier(path), RECIPE, again)
    assert classifier_digest(again) == classifier_digest(path)
    record = apply_decision(register(again, cfg, paths))
    assert not record.new_version and record.version == "1" and "identical" in record.reason
    assert len(store.search_model_versions(f"name = '{NAME}'")) == 1
    assert aliases(store) == {"champion": "1", "challenger": "1"}


def test_the_champion_is_never_scored_on_images_it_saw(
        store: mlflow.MlflowClient, cfg: PipelineConfig, paths: ArtifactPaths, pre: PreprocessRecord,
        tiny_cfg: PipelineConfig, tmp_path: Path) -> None:
    """A champion trained on another split (another seed) has seen most of this run's test
    images, and a near copy of one more; they are left out of the comparison, and the reason
    says how many."""
    other = ArtifactPaths(tmp_path / "other")
    build_manifest(tiny_cfg.data.dir).to_csv(tmp_path / "manifest.csv", index=False)
    preprocess_data(tmp_path / "manifest.csv", tiny_cfg.data.dir, tiny_cfg.data,
                    tiny_cfg.preprocess.model_copy(update={"seed": 7}), other.preprocessed)
    seen = read_seen(other.preprocessed / SEEN)
    test = split_test_rows(paths)
    exact = int(test["sha256"].isin(seen["sha256"]).sum())
    assert 0 < exact < len(test) - 1
    # and a copy of one more test image, turned a quarter and enlarged: a near copy, not the same bytes
    unseen = test[~test["sha256"].isin(seen["sha256"])].iloc[0]
    copy = tmp_path / "copy.png"
    Image.open(Path(tiny_cfg.data.dir) / unseen["path"]).rotate(90).resize((56, 56)).save(copy)
    row = describe_file(copy, "copy.png", "")
    assert row["sha256"] != unseen["sha256"]
    with open(other.preprocessed / SEEN, "a") as f:
        f.write(f"{row['sha256']} {row['phash']} {row['phash_flips']}\n")
    champion = classifier(tmp_path, 1, pre.classes)
    apply_decision(register(champion, cfg, other))
    overlap = exact + 1
    record = register(classifier(tmp_path, 2, pre.classes), cfg, paths)
    assert f"({overlap} left out that the champion trained or pretrained on)" in record.reason
    assert f"on the same {len(split_test_rows(paths)) - overlap} test images" in record.reason


def test_a_changed_gate_metric_rescores_the_champion_with_a_message(
        store: mlflow.MlflowClient, cfg: PipelineConfig, paths: ArtifactPaths, pre: PreprocessRecord,
        tmp_path: Path) -> None:
    apply_decision(register(classifier(tmp_path, 1, pre.classes), cfg, paths))
    f1 = cfg.model_copy(update={"register_": cfg.register_.model_copy(update={"metric": "test_macro_f1"})})
    store.delete_model_version_tag(NAME, "1", "test_macro_f1")  # registered when the gate read accuracy
    truth = split_test_rows(paths)["label"].to_numpy()
    record = register(classifier(tmp_path, 2, pre.classes), f1, paths, truth)
    assert "had no test_macro_f1 tag (register.metric changed since): re-scored here" in record.reason
    assert "paired bootstrap" in record.reason and record.promote


def test_two_registrations_racing_for_the_alias_promote_one(
        store: mlflow.MlflowClient, cfg: PipelineConfig, paths: ArtifactPaths, pre: PreprocessRecord,
        tmp_path: Path) -> None:
    both = [register(classifier(tmp_path, seed, pre.classes), cfg, paths) for seed in (1, 2)]
    assert all(r.promote and r.champion_version is None for r in both)  # each decided against no champion
    done: list[RegisterRecord] = []
    threads = [threading.Thread(target=lambda r=r: done.append(apply_decision(r))) for r in both]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    promoted = [r for r in done if "champion" in r.aliases]
    assert len(promoted) == 1 and aliases(store)["champion"] == promoted[0].version
    loser = next(r for r in done if r is not promoted[0])
    assert "the champion changed from none to version" in loser.reason and not loser.promote
    assert store.get_model_version(NAME, loser.version).tags["gate_decision"] == "challenger"


def test_another_class_set_never_takes_the_alias(store: mlflow.MlflowClient, cfg: PipelineConfig,
                                                 paths: ArtifactPaths, pre: PreprocessRecord,
                                                 tmp_path: Path) -> None:
    apply_decision(register(classifier(tmp_path, 1, pre.classes), cfg, paths))
    cats = classifier(tmp_path, 2, ("cat", "dog"))
    record = apply_decision(register(cats, cfg, paths, np.array(["cat"] * len(split_test_rows(paths)))))
    assert aliases(store)["champion"] == "1" and "different task" in record.reason
    assert json.loads(store.get_model_version(NAME, "2").tags["classes"]) == ["cat", "dog"]


def test_a_dvc_experiment_leaves_champion_alone(store: mlflow.MlflowClient, cfg: PipelineConfig,
                                                paths: ArtifactPaths, pre: PreprocessRecord, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    apply_decision(register(classifier(tmp_path, 1, pre.classes), cfg, paths))
    monkeypatch.setenv("DVC_EXP_NAME", "quick-fox")
    record = apply_decision(register(classifier(tmp_path, 2, pre.classes), cfg, paths,
                                     split_test_rows(paths)["label"].to_numpy()))
    assert aliases(store) == {"champion": "1", "challenger": "2"} and "quick-fox" in record.reason


def test_a_retried_registration_registers_one_version_and_finishes_it(
        store: mlflow.MlflowClient, cfg: PipelineConfig, paths: ArtifactPaths, pre: PreprocessRecord,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect retries the registry tasks: a registration that failed after its version was
    created, then an alias move that failed after the aliases moved, each run again, leave one
    version, decided on and promoted, as a run without failures would."""
    import flows.registry.register as registry

    model, real_tag = classifier(tmp_path, 1, pre.classes), registry._tag_version
    calls = {"n": 0}

    def fails_once(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise mlflow.exceptions.MlflowException("the tracking server blinked")
        real_tag(*args, **kwargs)

    monkeypatch.setattr(registry, "_tag_version", fails_once)
    with mlflow.start_run() as run:  # one flow run: the retry has the same run id
        with pytest.raises(mlflow.exceptions.MlflowException):
            registry.register_model(model, _metrics(paths, model), _split(paths), cfg, run.info.run_id,
                                    "md5", paths)
        record = registry.register_model(model, _metrics(paths, model), _split(paths), cfg, run.info.run_id,
                                         "md5", paths)
    assert record.new_version and record.version == "1" and record.promote
    assert len(store.search_model_versions(f"name = '{NAME}'")) == 1
    assert store.get_model_version(NAME, "1").tags["test_split_sha256"]  # tagged on the retry
    moved = apply_decision(record)
    again = apply_decision(record)  # the alias move retried after it had moved them
    assert moved.aliases == again.aliases == ("challenger", "champion") and again.promote
    assert "champion changed" not in again.reason and aliases(store) == {"champion": "1", "challenger": "1"}


def _metrics(paths: ArtifactPaths, model: Path) -> dict[str, Any]:
    rows = split_test_rows(paths)
    predicted = predicted_by(model, paths)
    paths.plots.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"sha256": rows["sha256"], "actual": rows["label"], "predicted": predicted}).to_csv(
        paths.plots / "predictions.csv", index=False)
    accuracy = float((predicted == rows["label"].to_numpy()).mean())
    return {"test_accuracy": accuracy, "test_macro_f1": accuracy, "test_images": len(rows), "labels_used": 50,
            "pretraining_lift_points": 5.0, "pretraining_lift_p_value": 0.001}


def _split(paths: ArtifactPaths) -> dict[str, Any]:
    return dict(json.loads((paths.preprocessed / "splits.json").read_text()))
