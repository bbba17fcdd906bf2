"""Bad input a user can cause: one clear message, a non-zero exit, no traceback."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.cli.main import main
from tests.conftest import PARAMS, REPO, free_port


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
    assert code == 1 and "report.json: not found" in err and "pretrainflow stage validate" in err


def test_a_stage_after_a_failed_validation_refuses_its_outputs(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        tiny_data: Path) -> None:
    """What `dvc repro -s preprocess` or a script does after the gate closed."""
    import shutil

    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    (data / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    args = ("--params", str(PARAMS), "--set", f"data.dir={data}", "--set", "validate.min_images_per_class=5")
    code, err = _run(capsys, "stage", "validate", *args)
    assert code == 1 and "3/broken.png" in err
    for stage in ("preprocess", "pretrain", "register"):
        code, err = _run(capsys, "stage", stage, *args)
        assert code == 1, stage
        assert "the last validation failed (expect_column_values_to_be_in_set on decodes" in err, stage
    assert not (tmp_path / "artifacts" / "preprocessed").exists()


def test_predict_inside_a_data_folder_writes_nothing_there(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        tiny_data: Path) -> None:
    import shutil

    shutil.copy(PARAMS, tmp_path / "params.yaml")  # a project folder
    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    before = sorted(p.name for p in (data / "3").iterdir())
    monkeypatch.chdir(data / "3")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, err = _run(capsys, "predict", ".")
    assert code == 1 and "cannot load model models:/pretrainflow-classifier@champion" in err
    assert sorted(p.name for p in (data / "3").iterdir()) == before  # no mlflow.db, no mlruns
    assert (tmp_path / "mlflow.db").is_file()  # the project's one store


def test_unreachable_mlflow_server(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                   tiny_data: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: refused
    code, err = _run(capsys, "run", "--params", str(PARAMS), "--data-dir", str(tiny_data))
    assert code == 1 and "http://127.0.0.1:9" in err and "not answering" in err


def test_data_builtin_refuses_existing_folder(capsys: pytest.CaptureFixture[str], tiny_data: Path) -> None:
    code, err = _run(capsys, "data", "builtin", "mnist-5k", "--out", str(tiny_data))
    assert code == 1 and "refusing to overwrite" in err


@pytest.mark.parametrize("module", ["flows.cli", "flows.cli.main"])
def test_python_dash_m_keeps_the_one_line_error(module: str) -> None:
    # `python -m flows.cli.main` imports the module twice (__main__ and flows.cli.main): the error
    # that the handlers raise must still be the one main() catches, not a traceback.
    proc = subprocess.run([sys.executable, "-m", module, "run", "--params", "params.yaml",
                           "--set", "pretrain.epoch=2"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "pretrainflow run: error: invalid configuration (params.yaml + --set overrides): unknown key "
        "'pretrain.epoch': check its spelling against params.yaml"]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("flag", ["--prefect-port", "--mlflow-port"])
def test_ui_port_in_use(capsys: pytest.CaptureFixture[str], held_port: int, flag: str) -> None:
    other = "--mlflow-port" if flag == "--prefect-port" else "--prefect-port"
    started = time.monotonic()
    code, err = _run(capsys, "ui", flag, str(held_port), other, str(free_port()))
    # refused before any server starts: no minute-long wait, no server log, one line
    assert code == 2 and time.monotonic() - started < 5 and len(err.strip().splitlines()) == 1
    assert f"port {held_port} on 127.0.0.1 is already in use" in err and f"pass another {flag}" in err


def test_ui_same_port_twice(capsys: pytest.CaptureFixture[str]) -> None:
    port = str(free_port())
    code, err = _run(capsys, "ui", "--prefect-port", port, "--mlflow-port", port)
    assert code == 2 and "--prefect-port and --mlflow-port are both" in err


def test_named_weights_missing_from_the_cache(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before anything runs (the first check: the data folder here does not exist),
    naming the file and its URL; with --allow-download the run goes on to the data folder."""
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    expected = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    args = ("--params", str(PARAMS), "--set", "pretrain.encoder=resnet18", "--set",
            "pretrain.init=torchvision:resnet18", "--set", f"data.dir={tmp_path / 'nope'}")
    for command in (["run"], ["stage", "pretrain"]):
        code, err = _run(capsys, *command, *args)
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert f"looked in torch.hub's cache: {expected}" in err and url in err and "--allow-download" in err
    code, err = _run(capsys, "run", *args, "--allow-download")
    assert code == 1 and "data folder not found" in err and not expected.exists()
    code, err = _run(capsys, "stage", "validate", *args)  # a stage that does not read the weights
    assert code == 1 and "data folder not found" in err
