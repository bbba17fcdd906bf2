"""Bad input a user can cause: one clear message, a non-zero exit, no traceback."""

from pathlib import Path

import pytest

from flows.cli import main
from tests.conftest import PARAMS


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_misspelt_set_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "run", "--params", str(PARAMS), "--set", "pretrain.epoch=2")
    assert code == 2 and "unknown key 'pretrain.epoch'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_data_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = _run(capsys, "run", "--params", str(PARAMS), "--data-dir", str(tmp_path / "nope"))
    assert code == 1 and f"{tmp_path / 'nope'}: data folder not found" in err
    assert "--data-dir" in err and len(err.strip().splitlines()) == 1


def test_empty_data_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, err = _run(capsys, "run", "--params", str(PARAMS), "--data-dir", str(tmp_path / "empty"))
    assert code == 1 and "no images found" in err
    assert list((tmp_path / "empty").iterdir()) == []  # nothing written into the user's folder


def test_missing_params_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = _run(capsys, "run", "--params", str(tmp_path / "p.yaml"))
    assert code == 2 and "params file not found" in err


def test_stage_out_of_order(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch, tiny_data: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    code, err = _run(capsys, "stage", "pretrain", "--params", str(PARAMS),
                     "--set", f"data.dir={tiny_data}")
    assert code == 1 and "train_images.npy: not found" in err and "pretrainflow stage preprocess" in err


def test_unreachable_mlflow_server(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                   tiny_data: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: refused
    code, err = _run(capsys, "run", "--params", str(PARAMS), "--data-dir", str(tiny_data))
    assert code == 1 and "http://127.0.0.1:9" in err and "not answering" in err


def test_data_builtin_refuses_existing_folder(capsys: pytest.CaptureFixture[str], tiny_data: Path) -> None:
    code, err = _run(capsys, "data", "builtin", "mnist-5k", "--out", str(tiny_data))
    assert code == 1 and "refusing to overwrite" in err
