"""The deployment as a Prefect UI user meets it: a real `prefect server start`, `pretrainflow
serve --cron`, then, through the Prefect API, the deployment, its schedule with a timezone, its
parameters with descriptions, and a run triggered from it that completes and links to MLflow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, write_tiny_params

pytestmark = pytest.mark.slow


def _api(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One Prefect API call. A 503 is Prefect's "retry me" (e.g. its sqlite database was busy
    with the serving process's writes): retried with backoff, as Prefect's own client does."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(6):
        request = urllib.request.Request(f"{base}{path}", data, {"Content-Type": "application/json"},
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or "null")
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 5:
                raise
            time.sleep(2 ** attempt)


def _wait(check: Any, seconds: float, what: str, procs: list[subprocess.Popen[bytes]], logs: Path) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), f"{what}: a process exited\n" + logs.read_text()[-4000:]
        try:
            found = check()
            if found:
                return found
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{what}: not within {seconds:.0f} s\n" + logs.read_text()[-4000:])


@pytest.fixture
def project(tmp_path: Path, tiny_data: Path) -> Path:
    write_tiny_params(tmp_path / "params.yaml")
    shutil.copytree(tiny_data, tmp_path / "data")
    return tmp_path


@pytest.fixture
def stack(project: Path) -> Iterator[tuple[str, dict[str, str], list[subprocess.Popen[bytes]], Path]]:
    port, bin_dir = free_port(), Path(sys.executable).parent
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(project / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "2", "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db"}
    logs = project / "logs.txt"
    procs: list[subprocess.Popen[bytes]] = []
    with open(logs, "wb") as sink:
        procs.append(subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
                                       "--port", str(port)], cwd=project, env=env, stdout=sink,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        try:
            _wait(lambda: _api(api, "/health"), 120, "prefect server health", procs, logs)
            yield api, env, procs, logs
        finally:
            # One at a time, the server last (as compose stops them): `serve` pauses its
            # deployment through the API on SIGTERM, and waited 30 s for a server stopped with it.
            for proc in reversed(procs):
                if proc.poll() is None:
                    os.killpg(os.getpgid(proc.pid), signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(os.getpgid(proc.pid), signal.SIGKILL)


def test_served_deployment_runs_from_the_api(project: Path, stack: Any) -> None:
    api, env, procs, logs = stack
    with open(logs, "ab") as sink:
        procs.append(subprocess.Popen(["pretrainflow", "serve", "--cron", "0 3 * * *", "--timezone",
                                       "Europe/Paris"], cwd=project, env=env, stdout=sink,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    deployment = _wait(lambda: _api(api, "/deployments/name/pretrain-finetune/pretrain-finetune"), 120,
                       "the deployment", procs, logs)
    (schedule,) = deployment["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * *" and schedule["schedule"]["timezone"] == "Europe/Paris"
    properties = deployment["parameter_openapi_schema"]["properties"]
    assert "section.key=value" in properties["overrides"]["description"]
    assert all(properties[p].get("description") for p in ("params", "overrides", "data_dir", "no_cache"))
    assert "<" not in properties["data_dir"]["description"]  # the form renders the help as HTML
    assert deployment["concurrency_limit"] == 1 or deployment.get("global_concurrency_limit")

    run = _api(api, f"/deployments/{deployment['id']}/create_flow_run", {})
    final = _wait(lambda: _done(api, run["id"]), 300, "the triggered flow run", procs, logs)
    assert final == "COMPLETED", logs.read_text()[-4000:]
    artifacts = _api(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    summary = next(a for a in artifacts if a["key"] == "run-summary")
    assert "MLflow run" in summary["data"] and "Promotion gate" in summary["data"]
    flow_run = _api(api, f"/flow_runs/{run['id']}")
    assert any(tag.startswith("data:") for tag in flow_run["tags"])  # the data version, filterable
    # the engine's lines reach the flow run's log when a deployment (not the CLI) starts the run
    query = {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200}
    lines = [entry["message"] for entry in _api(api, "/logs/filter", query)]
    assert any("pretrain epoch 1/1" in line for line in lines), lines[-20:]
    assert any(line.startswith("finetune (full)") for line in lines), lines[-20:]


def _done(api: str, run_id: str) -> str | None:
    state = _api(api, f"/flow_runs/{run_id}")["state"]["type"]
    return state if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
