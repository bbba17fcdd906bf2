"""The real Prefect flow on 120 digits, with a temporary MLflow sqlite store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from PIL import Image

from flows.pipeline import pretrain_finetune
from tests.conftest import PARAMS, TINY

pytestmark = pytest.mark.slow
MODEL = "pretrainflow-classifier"


def _flow(workspace: Path, data: Path, *extra: str) -> Any:
    return pretrain_finetune(params=str(PARAMS), overrides=[*TINY, *extra], data_dir=str(data),
                             artifacts=str(workspace / "artifacts"), return_state=True)


def _runs(name: str) -> list[Any]:
    exp = mlflow.get_experiment_by_name("pretrainflow")
    return mlflow.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{name}'",
                              output_format="list")


@pytest.fixture(scope="module")
def first(workspace: Path, tiny_data: Path) -> dict[str, Any]:
    state = _flow(workspace, tiny_data)
    assert state.is_completed(), state.message
    return state.result()


def test_summary_and_outputs(first: dict[str, Any], workspace: Path) -> None:
    assert 0 <= first["test_accuracy"] <= 1 and 0 <= first["test_macro_f1"] <= 1
    assert first["model_version"] == "1" and "champion" in first["aliases"]
    metrics = json.loads((workspace / "artifacts" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == first["test_accuracy"]
    for rel in ["validation/report.json", "preprocessed/train.pt", "pretrain/encoder.pt",
                "finetune/classifier.pt", "plots/confusion_matrix.png", "registered.json"]:
        assert (workspace / "artifacts" / rel).is_file(), rel


def test_prefect_shows_the_validation_summary(first: dict[str, Any]) -> None:
    from prefect.artifacts import Artifact

    summary = Artifact.get("data-validation")
    assert summary is not None and summary.type == "markdown"
    assert "Data validation passed" in summary.data and "| 7 | 12 |" in summary.data
    assert "expect_column_values_to_be_in_set" in summary.data


def test_mlflow_parent_run_with_a_nested_run_per_stage(first: dict[str, Any]) -> None:
    client = mlflow.MlflowClient()
    parent = client.get_run(first["mlflow_run_id"])
    assert parent.data.params["pretrain.epochs"] == "1"
    assert parent.data.params["finetune.label_fraction"] == "0.5"
    assert {"git_commit", "data_dvc_md5", "prefect_flow_run_id"} <= set(parent.data.tags)
    assert parent.data.metrics["test_accuracy"] == first["test_accuracy"]
    children = mlflow.search_runs(
        [parent.info.experiment_id], output_format="list",
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == sorted(
        ["validate", "preprocess", "pretrain", "finetune", "evaluate", "register"])
    finetune = next(r for r in children if r.info.run_name == "finetune")
    history = client.get_metric_history(finetune.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [0, 1]  # one point per epoch
    artifacts = {a.path for a in client.list_artifacts(
        next(r for r in children if r.info.run_name == "evaluate").info.run_id, "plots")}
    assert "plots/confusion_matrix.png" in artifacts


def test_champion_predicts_labels_for_images_from_data(first: dict[str, Any], tiny_data: Path) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    files = sorted(tiny_data.glob("*/*.png"))[::7]
    batch = np.stack([np.asarray(Image.open(f)) for f in files])  # [N, 28, 28] uint8
    preds = model.predict(batch)
    assert len(preds) == len(files)
    assert set(preds["label"]) <= {str(c) for c in range(10)}
    assert ((preds["confidence"] > 0) & (preds["confidence"] <= 1)).all()


def test_predict_command(first: dict[str, Any], tiny_data: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    out = tmp_path / "preds.csv"
    assert main(["predict", str(tiny_data / "3"), str(tiny_data / "7"), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "path,label,confidence" and len(lines) == 1 + 24
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["predict", str(tmp_path / "notes.png")]) == 1
    err = capsys.readouterr().err
    assert "notes.png: does not decode as an image" in err and "Traceback" not in err


def test_second_run_is_cached_and_gate_keeps_the_champion(first: dict[str, Any], workspace: Path,
                                                          tiny_data: Path) -> None:
    state = _flow(workspace, tiny_data)
    second = state.result()
    assert len(_runs("pretrain")) == 1  # cached: no second pretraining run
    assert second["test_accuracy"] == first["test_accuracy"]
    client = mlflow.MlflowClient()
    # version 2 scores the same, which is not better: champion stays, challenger moves
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "2"


def test_changing_finetune_params_reruns_finetune_only(first: dict[str, Any], workspace: Path,
                                                       tiny_data: Path) -> None:
    before = len(_runs("finetune"))
    assert _flow(workspace, tiny_data, "finetune.lr=0.002").is_completed()
    assert len(_runs("pretrain")) == 1 and len(_runs("finetune")) == before + 1


def test_deleted_output_is_rebuilt_not_trusted(first: dict[str, Any], workspace: Path,
                                               tiny_data: Path) -> None:
    encoder = workspace / "artifacts" / "pretrain" / "encoder.pt"
    encoder.unlink()
    assert _flow(workspace, tiny_data).is_completed()
    assert encoder.is_file() and len(_runs("pretrain")) == 2


def test_validation_failure_stops_before_training(workspace: Path, tiny_data: Path,
                                                  tmp_path: Path) -> None:
    one_class = tmp_path / "data"
    shutil.copytree(tiny_data / "3", one_class / "3")
    state = _flow(workspace, one_class)
    assert state.is_failed()
    assert "data validation failed" in state.message and "min_classes" in state.message

