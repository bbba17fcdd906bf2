"""`pretrainflow ui`: both servers answer, and a signal stops all of them, leaving nothing behind.

The real console script runs in its own session, so every process it starts, however deep,
carries that session id: after it exits, /proc must hold none of them (zombies aside: they
hold no port and no memory, and reaping them is PID 1's job).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.cli.servers import EXPERIMENT_KIND, TRAINING_KIND, ServerGroup
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _processes(*, session: int | None = None, pgid: int | None = None) -> dict[int, str]:
    """Live processes in a session or process group: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            state, _ppid, group, sid = stat[stat.rindex(")") + 2:].split()[:4]
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):  # not a pid, or gone meanwhile
            continue
        if state != "Z" and (int(sid) == session or int(group) == pgid):
            found[int(entry.name)] = cmd
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    return True


def _answers(url: str) -> bool:
    try:
        _DIRECT.open(url, timeout=2).close()
        return True
    except OSError:
        return False


@dataclass
class Ui:
    proc: subprocess.Popen[bytes]
    prefect_port: int
    mlflow_port: int
    log: Path
    experiment_id: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def tracking_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An mlflow.db holding one model-training experiment, as `pretrainflow run` leaves it."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment_id = client.create_experiment("pretrainflow", tags={EXPERIMENT_KIND: TRAINING_KIND})
    return db, experiment_id


@pytest.fixture
def ui(tmp_path: Path, tracking_store: tuple[Path, str]) -> Iterator[Ui]:
    """`pretrainflow ui` in a project folder with an MLflow store, answering on two free ports."""
    shutil.copy(tracking_store[0], tmp_path / "mlflow.db")
    shutil.copy(REPO / "params.yaml", tmp_path)  # the project's marker: a dvc.yaml in a parent is not it
    prefect_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    # PREFECT_HOME: a fresh Prefect database here, not the user's ~/.prefect
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PREFECT_HOME": str(tmp_path / "prefect")}
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["pretrainflow", "ui", "--prefect-port", str(prefect_port),
                                 "--mlflow-port", str(mlflow_port)], cwd=tmp_path, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    started = Ui(proc, prefect_port, mlflow_port, log, tracking_store[1])
    try:
        urls = [f"http://127.0.0.1:{prefect_port}/api/health", f"http://127.0.0.1:{mlflow_port}/health"]
        deadline = time.monotonic() + 180
        while not all(_answers(u) for u in urls):
            assert proc.poll() is None, f"pretrainflow ui exited early:\n{started.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer within 180 s:\n{started.output()[-3000:]}"
            time.sleep(1)
        yield started
    finally:  # a failed test must not leave servers behind for the next one
        for pid in _processes(session=proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("how", ["SIGTERM to the process", "Ctrl-C (SIGINT to its process group)"])
def test_signal_stops_both_servers(ui: Ui, how: str) -> None:
    running = _processes(session=ui.proc.pid)
    deadline = time.monotonic() + 30  # the URLs are printed just after both answer
    while "Ctrl-C" not in ui.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    out = ui.output()
    assert f"Prefect UI: http://127.0.0.1:{ui.prefect_port}" in out
    assert f"MLflow UI:  http://127.0.0.1:{ui.mlflow_port}" in out
    # served from the project's own mlflow.db, and opened on the runs, not on GenAI traces
    assert (f"runs of pretrainflow: http://127.0.0.1:{ui.mlflow_port}/#/experiments/{ui.experiment_id}"
            "?workflowType=machine_learning") in out
    # MLflow lean: one uvicorn worker, no job runner (before: 15 MLflow processes, ~3 GB)
    assert not [c for c in running.values() if "huey" in c or "_job_runner" in c or "spawn_main" in c]
    assert len(running) <= 4, running  # pretrainflow, prefect, mlflow, uvicorn

    if how.startswith("SIGTERM"):
        ui.proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(ui.proc.pid, signal.SIGINT)  # what a terminal sends to the foreground group
    started = time.monotonic()
    code = ui.proc.wait(timeout=30)

    assert code == 0, ui.output()[-3000:]
    assert time.monotonic() - started < 30
    assert _port_free(ui.prefect_port) and _port_free(ui.mlflow_port)
    assert _processes(session=ui.proc.pid) == {}
    assert "Prefect and MLflow stopped" in ui.output() and "did not stop" not in ui.output()


def test_server_that_ignores_sigterm_is_killed_with_its_children() -> None:
    # A "server" that ignores SIGTERM and starts a child that inherits that (as a stuck worker).
    stubborn = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)")
    group = ServerGroup()
    group.start("stubborn", [sys.executable, "-c", stubborn], {})
    assert group.pgid is not None
    deadline = time.monotonic() + 30
    while len(_processes(pgid=group.pgid)) < 2:  # the server and its child
        assert time.monotonic() < deadline, "the stub never started its child"
        time.sleep(0.2)

    started = time.monotonic()
    killed = group.stop(timeout=1.0)

    assert killed == ["stubborn"]
    assert 1.0 <= time.monotonic() - started < 10
    deadline = time.monotonic() + 5  # the orphaned child dies with the group's SIGKILL
    while _processes(pgid=group.pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes(pgid=group.pgid) == {}
