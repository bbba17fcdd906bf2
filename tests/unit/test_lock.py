"""One job at a time per project: a second job is refused with the holder's name, and the MLflow
runs of a job that crashed (killed, a signal) end FAILED when the next job starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from flows.cli.main import main
from tests.conftest import PARAMS, REPO

HOLDER = """
import os, signal, sys, time
from pathlib import Path
import mlflow
from flows.orchestration.lock import project_lock
from flows.tracking.runs import JOB_TAG
artifacts, uri, crash = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "crash"
with project_lock(artifacts, "pretrainflow run (the first job)") as job:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("pretrainflow")
    mlflow.start_run(tags={JOB_TAG: job.id})
    (artifacts / "started").write_text("yes")
    if crash:
        os.kill(os.getpid(), signal.SIGKILL)  # as SIGBUS or the OOM killer would: no cleanup runs
    time.sleep(120)
"""


def _hold(tmp_path: Path, uri: str, crash: bool) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "artifacts"), uri,
                             "crash" if crash else "hold"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while not (tmp_path / "artifacts" / "started").exists():
        assert proc.poll() is None or crash, "the holder exited early"
        assert time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.2)
    return proc


def _validate(capsys: pytest.CaptureFixture[str], data: Path) -> tuple[int, str]:
    code = main(["stage", "validate", "--params", str(PARAMS), "--set", f"data.dir={data}",
                 "--set", "validate.min_images_per_class=5"])
    return code, capsys.readouterr().err


def test_a_second_job_is_refused_and_names_the_first(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     tiny_data: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    holder = _hold(tmp_path, uri, crash=False)
    try:
        code, err = _validate(capsys, tiny_data)
        assert code == 1 and "another pretrainflow job is running in this project" in err, err
        assert "pretrainflow run (the first job)" in err and f"pid {holder.pid}" in err
        assert not (tmp_path / "artifacts" / "validation").exists()  # it wrote nothing
    finally:
        holder.kill()
        holder.wait()
    code, err = _validate(capsys, tiny_data)  # the kernel released the dead holder's lock
    assert code == 0, err


def test_the_runs_of_a_crashed_job_end_failed(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, tiny_data: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    _hold(tmp_path, uri, crash=True).wait()
    crashed = json.loads((tmp_path / "artifacts" / ".lock.json").read_text())["id"]
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("pretrainflow").experiment_id
    (run,) = client.search_runs([experiment])
    assert run.info.status == "RUNNING"  # what a killed job leaves behind
    assert _validate(capsys, tiny_data)[0] == 0
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert crashed and not (tmp_path / "artifacts" / ".lock.json").exists()  # a finished job leaves none
