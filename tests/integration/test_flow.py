"""The real Prefect flow on 120 digits, with a temporary MLflow sqlite store."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.orchestration.pipeline import pretrain_finetune
from pipeline_tasks.data.datasets import write_builtin
from tests.conftest import PARAMS, TINY, free_port, wait_for_url

pytestmark = pytest.mark.slow
MODEL = "pretrainflow-classifier"


def _flow(workspace: Path, data: Path, *extra: str) -> Any:
    return pretrain_finetune(params=str(PARAMS), overrides=[*TINY, *extra], data_dir=str(data),
                             artifacts=str(workspace / "artifacts"), return_state=True)


def _runs(stage: str) -> list[Any]:
    """The MLflow runs of one stage (named for what they did; the stage is a tag)."""
    exp = mlflow.get_experiment_by_name("pretrainflow")
    return mlflow.search_runs([exp.experiment_id], filter_string=f"tags.`pretrainflow.stage` = '{stage}'",
                              output_format="list")


@pytest.fixture(scope="module")
def first(workspace: Path, tiny_data: Path) -> dict[str, Any]:
    state = _flow(workspace, tiny_data)
    assert state.is_completed(), state.message
    return state.result()


def _label_budget(workspace: Path) -> tuple[int, int]:
    """Training labels (label_fraction 0.5 of each class, at least 1) and validation labels
    (val_per_class 10 of each class, or all it has) of the tiny digits' splits."""
    pre = workspace / "artifacts" / "preprocessed"
    train, val = (np.bincount(np.load(pre / f"{s}_labels.npy")) for s in ("train", "val"))
    return sum(max(1, round(n * 0.5)) for n in train), int(np.minimum(val, 10).sum())


def test_summary_and_outputs(first: dict[str, Any], workspace: Path) -> None:
    assert first["model_version"] == "1" and "champion" in first["aliases"]
    train_labels, val_labels = _label_budget(workspace)
    assert (first["train_labels"], first["val_labels"]) == (train_labels, val_labels)
    assert first["labels_used"] == train_labels + val_labels
    splits = json.loads((workspace / "artifacts" / "preprocessed" / "splits.json").read_text())
    assert first["pretrain_images"] == splits["n_train"] and first["test_images"] == splits["n_test"]
    metrics = json.loads((workspace / "artifacts" / "metrics.json").read_text())
    # three lifts, each against the baseline that lacks one thing: pretraining (scratch through the
    # same pool stage), the pool stage (the model before it), the whole pipeline (labels alone)
    for lift, baseline in (("pretraining_lift", "scratch_pool"), ("pool_lift", "pretrained"),
                           ("pipeline_lift", "scratch")):
        points = round((metrics["test_accuracy"] - metrics[f"{baseline}_test_accuracy"]) * 100, 2)
        assert metrics[f"{lift}_points"] == points, lift
        assert 0 <= metrics[f"{lift}_p_value"] <= 1
        assert first[f"{lift}_points"].startswith(f"{points:+.2f} points (")
        assert f"McNemar p {metrics[f'{lift}_p_value']:.2g})" in first[f"{lift}_points"]
    assert "lift_points" not in metrics  # no lift without saying against what
    for key in ("test_accuracy", "scratch_test_accuracy", "scratch_pool_test_accuracy",
                "pretrained_test_accuracy", "pixels_test_accuracy", "encoder_test_accuracy", "labels_used"):
        assert metrics[key] == first[key], key
    assert first["model"] == "full fine-tune of the pretrained encoder + pool (fixmatch)"
    for rel in ["validation/report.json", "preprocessed/train_images.npy", "pretrain/encoder.pt",
                "finetune/classifier.pt", "finetune/baseline.pt", "pool/classifier.pt", "pool/baseline.pt",
                "plots/confusion_matrix.png", "registered.json"]:
        assert (workspace / "artifacts" / rel).is_file(), rel
    registered = json.loads((workspace / "artifacts" / "registered.json").read_text())
    assert registered["aliases"] == ["challenger", "champion"] and registered["promote"]


def test_prefect_shows_the_validation_summary(first: dict[str, Any]) -> None:
    from prefect.artifacts import Artifact

    summary = Artifact.get("data-validation")
    assert summary is not None and summary.type == "markdown"
    assert "Data validation passed" in summary.data and "| 7 | 12 |" in summary.data
    assert "| image-files | every file decodes as an image | - | 0 files | ok |" in summary.data
    assert "| image-classes | images per class at least | 5 | 0 classes off | ok |" in summary.data
    clash = "| image-files | no two file paths differ only by case or Unicode form | - | 0 files | ok |"
    assert clash in summary.data
    results = Artifact.get("run-summary")  # the latest version: published after the aliases moved
    assert results is not None and "against scratch" in results.data
    assert f"{first['labels_used']} labels" in results.data
    assert "aliases after this run: challenger, champion" in results.data
    from prefect import get_client

    with get_client(sync_client=True) as client:  # the run's first screen: its tags
        tags = client.read_flow_run(results.flow_run_id).tags
    assert {f"test_accuracy {first['test_accuracy']:.4f}", f"champion v{first['model_version']}"} <= set(tags)
    assert any(t.startswith("data:") for t in tags) and any(t.startswith("pretraining lift ") for t in tags)


def test_mlflow_parent_run_with_a_nested_run_per_stage(first: dict[str, Any]) -> None:
    client = mlflow.MlflowClient()
    parent = client.get_run(first["mlflow_run_id"])
    assert parent.data.params["pretrain.epochs"] == "1"
    assert parent.data.params["finetune.label_fraction"] == "0.5"
    assert {"git_commit", "data_dvc_md5", "prefect_flow_run_id"} <= set(parent.data.tags)
    assert parent.data.metrics["test_accuracy"] == first["test_accuracy"]
    # the run page opens with the answer: the model against its baselines, and why it is champion
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"**This run's model: test accuracy {first['test_accuracy']:.4f}** against ")
    assert f"**Promotion gate:** {first['gate']}" in note and "Prefect flow run" in note
    children = mlflow.search_runs(
        [parent.info.experiment_id], output_format="list",
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {r.data.tags["pretrainflow.stage"]: r for r in children}
    assert sorted(by_stage) == sorted(
        ["validate", "preprocess", "start", "pretrain", "finetune", "pool", "evaluate", "register"])
    assert by_stage["finetune"].info.run_name == "finetune full 50% labels"  # named for what it did
    version = client.get_model_version(MODEL, first["model_version"])
    assert version.run_id == parent.info.run_id  # the version's source run is the one with the metrics
    finetune = by_stage["finetune"]
    history = client.get_metric_history(finetune.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [5, 10]  # finetune.epochs=2 checks over min_steps=10
    assert client.get_metric_history(finetune.info.run_id, "scratch_val_accuracy")  # the baseline
    artifacts = {a.path for a in client.list_artifacts(
        by_stage["evaluate"].info.run_id, "plots")}
    assert {f"plots/{name}.png" for name in ("confusion_matrix", "per_class_accuracy", "worst_misclassified",
                                             "reliability", "baselines")} <= artifacts
    curves = {a.path for a in client.list_artifacts(finetune.info.run_id, "plots")}
    assert curves == {"plots/validation_curves.png"}  # this model and scratch in one chart


def test_champion_takes_files_and_arrays_of_any_size_and_mode(first: dict[str, Any], tiny_data: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRETRAINFLOW_ALLOW_PATHS", raising=False)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    files = sorted(tiny_data.glob("*/*.png"))[::7]
    by_file = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    assert list(by_file.columns[:3]) == ["label", "class_name", "confidence"]
    assert list(by_file.columns[3:]) == [*(f"prob_{c}" for c in range(10)), "error"]
    assert (by_file["error"] == "").all()
    assert np.allclose(by_file.iloc[:, 3:-1].sum(axis=1), 1, atol=1e-4)
    assert (by_file["class_name"] == by_file["label"].astype(str)).all()  # classes are "0".."9"
    # arrays of other sizes, modes and dtypes: the model preprocesses them as it does the same
    # pixels in a file (compared on probabilities: the tiny model's labels flip on any change)
    def probs(images: list[Any]) -> np.ndarray:
        return model.predict(pd.DataFrame({"image": images})).iloc[:, 3:-1].to_numpy(float)

    def png(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    big_rgb = [np.asarray(Image.open(f).convert("RGB").resize((56, 56))) for f in files]
    assert np.allclose(probs(big_rgb), probs([png(a) for a in big_rgb]), atol=1e-5)
    as_float = [np.asarray(Image.open(f), dtype=np.float32) / 255 for f in files]
    assert np.allclose(probs(as_float), by_file.iloc[:, 3:-1].to_numpy(float), atol=1e-5)
    # paths: refused by default, read with the operator's opt-in (local batch use)
    paths = pd.DataFrame({"image": [str(f) for f in files]})
    assert model.predict(paths)["error"].str.contains("file paths are refused").all()
    monkeypatch.setenv("PRETRAINFLOW_ALLOW_PATHS", "1")
    by_path = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(paths)
    pd.testing.assert_frame_equal(by_path, by_file)


def test_predict_command(first: dict[str, Any], tiny_data: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli.main import main

    out = tmp_path / "preds.csv"
    assert main(["predict", str(tiny_data / "3"), str(tiny_data / "7"), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("path,label,class_name,confidence,prob_0,") and len(lines) == 1 + 24
    (tmp_path / "notes.png").write_text("not an image")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "notes.png"), str(tiny_data / "3")]) == 1
    captured = capsys.readouterr()
    assert "notes.png: the file is not an image" in captured.err and "Traceback" not in captured.err
    assert len(captured.out.splitlines()) == 1 + 1 + 12  # a row for it too, and the other files predicted


def test_second_run_is_cached_and_registers_nothing_new(first: dict[str, Any], workspace: Path,
                                                        tiny_data: Path) -> None:
    state = _flow(workspace, tiny_data)
    second = state.result()
    assert all(len(_runs(s)) == 1 for s in ("preprocess", "pretrain", "finetune", "evaluate"))  # all cached
    assert second["test_accuracy"] == first["test_accuracy"]
    assert second["model_version"] == "1" and "identical" in second["gate"]
    client = mlflow.MlflowClient()
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    # the new flow run still shows the numbers, and names the run that computed them
    parent = client.get_run(second["mlflow_run_id"])
    assert parent.data.metrics["test_accuracy"] == first["test_accuracy"]
    assert parent.data.tags["cached_from_run"] == first["mlflow_run_id"]
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/confusion_matrix.png" in plots
    from prefect.artifacts import Artifact

    summary = Artifact.get("run-summary")
    assert summary is not None and f"cached from run `{first['mlflow_run_id']}`" in summary.data


def test_changing_finetune_params_reruns_finetune_only(first: dict[str, Any], workspace: Path,
                                                       tiny_data: Path) -> None:
    before = {s: len(_runs(s)) for s in ("preprocess", "pretrain", "finetune", "evaluate", "register")}
    assert _flow(workspace, tiny_data, "finetune.lr=0.002").is_completed()
    after = {s: len(_runs(s)) for s in before}
    assert after == {**before, "finetune": before["finetune"] + 1, "evaluate": before["evaluate"] + 1,
                     "register": before["register"] + 1}


def test_an_edited_image_reruns_every_stage(workspace: Path, tiny_data: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    extra = ("register.model_name=edited", "validate.min_images_per_class=5")
    assert _flow(workspace, data, *extra).is_completed()
    before = {s: len(_runs(s)) for s in ("preprocess", "pretrain", "finetune", "evaluate")}
    image = sorted((data / "4").iterdir())[0]
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)
    assert _flow(workspace, data, *extra).is_completed()
    assert {s: len(_runs(s)) for s in before} == {s: n + 1 for s, n in before.items()}


def test_a_failure_after_registration_moves_no_alias(
        first: dict[str, Any], workspace: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.orchestration.summary

    client = mlflow.MlflowClient()
    before = {a: str(v) for a, v in client.get_registered_model(MODEL).aliases.items()}
    versions = len(client.search_model_versions(f"name = '{MODEL}'"))

    def broken(**kwargs: Any) -> None:
        if kwargs.get("key") == "run-summary":
            raise RuntimeError("the Prefect API went away")

    # where run-summary is published
    monkeypatch.setattr(flows.orchestration.summary, "create_markdown_artifact", broken)
    assert _flow(workspace, tiny_data, "finetune.lr=0.003", "register.min_improvement=0").is_failed()
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == versions + 1  # registered...
    after = {a: str(v) for a, v in client.get_registered_model(MODEL).aliases.items()}
    assert after == before  # ...but no alias moved


def test_deleted_output_is_rebuilt_not_trusted(first: dict[str, Any], workspace: Path,
                                               tiny_data: Path) -> None:
    encoder = workspace / "artifacts" / "pretrain" / "encoder.pt"
    assert _flow(workspace, tiny_data).is_completed()
    before = len(_runs("pretrain"))
    encoder.unlink()
    assert _flow(workspace, tiny_data).is_completed()
    assert encoder.is_file() and len(_runs("pretrain")) == before + 1


def test_validation_failure_stops_before_training(workspace: Path, tiny_data: Path,
                                                  tmp_path: Path) -> None:
    one_class = tmp_path / "data"
    shutil.copytree(tiny_data / "3", one_class / "3")
    state = _flow(workspace, one_class)
    assert state.is_failed()
    assert "data validation failed" in state.message and "min_classes" in state.message


def test_a_run_that_cannot_list_its_data_publishes_no_old_report(first: dict[str, Any], workspace: Path,
                                                                 tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    assert (workspace / "artifacts" / "validation" / "report.json").is_file()  # the first run's
    state = _flow(workspace, tmp_path / "missing")
    assert state.is_failed() and "data folder not found" in state.message
    assert not (workspace / "artifacts" / "validation" / "report.json").exists()
    latest = Artifact.get("data-validation")
    assert latest is not None and latest.flow_run_id != state.state_details.flow_run_id



def test_pretraining_uses_the_pool_without_copies_of_labeled_images(
        workspace: Path, tiny_data: Path, tmp_path: Path) -> None:
    """3 labeled digits per class and a pool in nested folders that also holds copies of a test
    image (exact and resized): the copies are removed and named, the rest is pretrained on."""
    labeled, pool = tmp_path / "labeled", tmp_path / "pool"
    for label in range(10):
        (labeled / str(label)).mkdir(parents=True)
        for f in sorted((tiny_data / str(label)).iterdir())[:3]:
            shutil.copy(f, labeled / str(label) / f.name)
    write_builtin("mnist-5k", tmp_path / "more", limit_per_class=20)  # 8 digits per class unseen
    for i, f in enumerate(sorted((tmp_path / "more").glob("*/*.png"))):
        if int(f.stem) not in {int(p.stem) for p in tiny_data.glob("*/*.png")}:
            (pool / f"batch{i % 3}").mkdir(parents=True, exist_ok=True)
            shutil.copy(f, pool / f"batch{i % 3}" / f"img{i:04d}.png")
    n_pool = sum(1 for _ in pool.rglob("*.png"))
    state = _flow(workspace, labeled, f"data.unlabeled_dir={pool}", "validate.min_images_per_class=3",
                  "register.model_name=pool-classifier", "finetune.label_fraction=1.0")
    assert state.is_completed(), state.message  # a first run to learn the split
    artifacts = workspace / "artifacts"
    splits = pd.read_csv(artifacts / "preprocessed" / "splits.csv", dtype=str)
    test_image = labeled / splits[splits["split"] == "test"]["path"].iloc[0]
    shutil.copy(test_image, pool / "copy.png")
    Image.open(test_image).resize((56, 56)).save(pool / "batch0" / "resized-copy.png")
    summary = _flow(workspace, labeled, f"data.unlabeled_dir={pool}", "validate.min_images_per_class=3",
                    "register.model_name=pool-classifier", "finetune.label_fraction=1.0").result()
    report = json.loads((artifacts / "validation" / "report.json").read_text())
    removed = {c["path"]: (c["copy_of"], c["match"]) for c in report["pool"]["removed_copies"]}
    rel = str(test_image.relative_to(labeled))
    assert removed["copy.png"] == (rel, "exact") and removed["batch0/resized-copy.png"] == (rel, "near")
    # other removals are look-alikes within the near-copy distance (a "1" is much like another)
    assert report["pool"]["n_kept"] == n_pool + 2 - len(removed)
    n_train = int((splits["split"] == "train").sum())
    # the pool plus the labeled training split
    assert summary["pretrain_images"] == report["pool"]["n_kept"] + n_train
    assert summary["train_labels"] == n_train  # fine-tuning: the labeled images only


def _post(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return list(json.loads(response.read())["predictions"])


def test_mlflow_models_serve_answers_invocations(first: dict[str, Any], tiny_data: Path,
                                                 tmp_path: Path) -> None:
    """The champion behind `mlflow models serve`: base64 PNGs and pixel arrays in, labels out."""
    port, log, bin_dir = free_port(), tmp_path / "serve.log", Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}  # it execs uvicorn
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{url}/ping", server, 120, lambda: log.read_text()[-3000:])
        files = sorted(tiny_data.glob("*/*.png"))[::12]
        expected = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(
            pd.DataFrame({"image": [f.read_bytes() for f in files]}))
        b64 = [[base64.b64encode(f.read_bytes()).decode()] for f in files]
        served = _post(f"{url}/invocations", {"dataframe_split": {"columns": ["image"], "data": b64}})
        assert [p["class_name"] for p in served] == list(expected["class_name"])
        assert all(abs(sum(v for k, v in p.items() if k.startswith("prob_")) - 1) < 1e-4 for p in served)
        arrays = [{"image": np.asarray(Image.open(f)).tolist()} for f in files]
        served = _post(f"{url}/invocations", {"dataframe_records": arrays})
        assert [p["class_name"] for p in served] == list(expected["class_name"])
        # bad rows beside good ones: still 200, an answer per row, no stack trace, no file read
        bad = [b64[0], [base64.b64encode(b"not an image").decode()], [str(files[0])]]
        served = _post(f"{url}/invocations", {"dataframe_split": {"columns": ["image"], "data": bad}})
        assert served[0]["error"] == "" and served[0]["class_name"] == expected["class_name"][0]
        assert served[1]["label"] == -1
        assert served[1]["error"].startswith("row 1: base64 text is not an image")
        assert "file paths are refused" in served[2]["error"] and "Traceback" not in json.dumps(served)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_encoder_is_registered_and_reused_as_a_starting_point(first: dict[str, Any], workspace: Path,
                                                                  tiny_data: Path) -> None:
    client = mlflow.MlflowClient()
    assert client.search_model_versions("name = 'pretrainflow-encoder'")  # one per distinct encoder
    embedded = mlflow.pyfunc.load_model("models:/pretrainflow-encoder/1").predict(
        pd.DataFrame({"image": [f.read_bytes() for f in sorted(tiny_data.glob("3/*.png"))[:2]] + [b"?"]}))
    assert len(embedded["embedding"][0]) == 64  # compact ResNet, base width 8
    assert list(embedded["error"][:2]) == ["", ""] and len(embedded["embedding"][2]) == 0  # a bad row
    state = _flow(workspace, tiny_data, "pretrain.init=models:/pretrainflow-encoder/1",
                  "register.model_name=from-init", "finetune.min_steps=150", "finetune.label_fraction=1.0")
    assert state.is_completed(), state.message
    summary = state.result()
    # fine-tuned from the starting weights directly, then through the same pool stage: the
    # baseline that lacks only the self-supervised pretraining
    assert summary["init_test_accuracy"] > 0.4  # the second baseline learned too (chance 0.1)
    lift = round((summary["test_accuracy"] - summary["init_pool_test_accuracy"]) * 100, 2)
    assert summary["lift_over_init_points"].startswith(f"{lift:+.2f} points (")
    assert (workspace / "artifacts" / "finetune" / "init_baseline.pt").is_file()
    assert (workspace / "artifacts" / "pool" / "init_baseline.pt").is_file()
