"""Outputs of a stage belong to this run's inputs: a stage never mixes in an output an earlier
run left behind (`stage evaluate` without `stage pool` scored a stale pool model trained on
other classes, exit 0), and evaluation refuses a model of other classes than the data's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.cli.main import main
from pipeline_tasks.data.preprocess import PreprocessRecord
from pipeline_tasks.evaluation.evaluate import score
from pipeline_tasks.models.classifier import save_classifier
from pipeline_tasks.models.encoders import Classifier, Encoder, EncoderSpec
from tests.conftest import PARAMS, TINY


def _stage(capsys: pytest.CaptureFixture[str], name: str, data: Path) -> tuple[int, str]:
    sets = [a for item in [*TINY, f"data.dir={data}", "pool.steps=2"] for a in ("--set", item)]
    code = main(["stage", name, "--params", str(PARAMS), *sets])
    return code, capsys.readouterr().err


def test_a_stage_refuses_an_output_an_earlier_run_left(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       tiny_data: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(tiny_data, first)
    for c in "01234":  # the same images, other classes: what a second project version may be
        shutil.copytree(tiny_data / c, second / f"class_{c}")
    for stage in ("validate", "preprocess", "start", "pretrain", "finetune", "pool"):
        code, err = _stage(capsys, stage, first)
        assert code == 0, (stage, err[-500:])
    for stage in ("validate", "preprocess", "start", "pretrain", "finetune"):  # the pool stage forgotten
        code, err = _stage(capsys, stage, second)
        assert code == 0, (stage, err[-500:])
    code, err = _stage(capsys, "evaluate", second)
    assert code == 1 and "artifacts/pool was computed from another" in err, err
    assert "run `pretrainflow stage pool`" in err and not (tmp_path / "artifacts" / "metrics.json").exists()
    assert _stage(capsys, "pool", second)[0] == 0
    assert _stage(capsys, "evaluate", second)[0] == 0 and (tmp_path / "artifacts" / "metrics.json").is_file()


def test_a_model_of_other_classes_is_not_scored(pre: PreprocessRecord, tmp_path: Path) -> None:
    """Its predictions would be read as the data's classes: label 0 of the model is not class 0."""
    recipe = {"image_size": 28, "channels": 1, "resize": "crop"}
    other = tmp_path / "other.pt"
    save_classifier(Classifier(Encoder(EncoderSpec(1, 4)), 10), [f"c{i}" for i in range(10)], recipe, other)
    with pytest.raises(ValueError, match="a model of classes .* but the data's are"):
        score(pre.out_dir, other, 64)
    mine = tmp_path / "mine.pt"
    save_classifier(Classifier(Encoder(EncoderSpec(1, 4)), 10), pre.classes, recipe, mine)
    assert score(pre.out_dir, mine, 64)[0].shape == (pre.n_test, 10)
