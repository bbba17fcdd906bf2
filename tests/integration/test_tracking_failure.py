"""The MLflow tracking server stops in the middle of a run: the run ends, after the retries,
with one message naming the tracking URI, and no alias moves."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_url, write_tiny_params

pytestmark = pytest.mark.slow


def test_a_stopped_tracking_server_ends_the_run_cleanly(tmp_path: Path, tiny_data: Path) -> None:
    import mlflow

    # 60 epochs: long enough to stop the server in the middle
    write_tiny_params(tmp_path / "params.yaml", "pretrain.epochs=60")
    shutil.copytree(tiny_data, tmp_path / "data")
    bin_dir, port = Path(sys.executable).parent, free_port()
    uri, store = f"http://127.0.0.1:{port}", f"sqlite:///{tmp_path}/server.db"
    server = subprocess.Popen([str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", store,
                               "--default-artifact-root", (tmp_path / "art").as_uri()],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for_url(f"{uri}/health", server, 120, lambda: "the mlflow server did not start")
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        env.pop("PREFECT_API_URL", None)
        run = subprocess.Popen(["pretrainflow", "run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        assert run.stdout is not None
        seen = []
        for line in run.stdout:  # stop the server once pretraining is under way
            seen.append(line)
            if "pretrain epoch 3/" in line:
                os.killpg(server.pid, signal.SIGKILL)
                break
        out = "".join(seen) + run.communicate(timeout=600)[0]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    assert run.returncode == 1, out[-3000:]
    messages = [line for line in out.splitlines() if line.startswith("pretrainflow run: error:")]
    assert len(messages) == 1, out[-3000:]
    message = messages[0]
    assert message.startswith("pretrainflow run: error: MLflow tracking store") and uri in message
    assert "Connection refused" in message and "No alias moved" in message and len(message) < 400
    client = mlflow.MlflowClient(store)  # the server's own store: nothing was registered
    assert client.search_registered_models() == []
    assert not (tmp_path / "artifacts" / "registered.json").exists()
