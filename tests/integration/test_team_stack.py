"""The team stack of docker/compose.yaml run for real, without Docker: PostgreSQL (Debian's
package; a throwaway cluster that docker/postgres-init.sh sets up), an S3 endpoint (moto's
server standing in for MinIO), the MLflow tracking server on PostgreSQL with its artifacts
proxied to S3, and the Prefect server on PostgreSQL behind basic auth, each started with the
command and environment compose.yaml gives it. Then what a team does with it (README.md,
"Running as a team"): the data pushed to the DVC remote and pulled back by a teammate's clone,
two `pretrainflow run`s at once, and the tracking server killed in the middle of a third.

Without the PostgreSQL binaries or the Python packages of the dev extra the tests skip and say
what is missing; under CI=true they fail instead, since .ci/run installs them."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NoReturn
from uuid import UUID

import pytest
import yaml

from flows.orchestration import graph
from tests.conftest import REPO, free_port, wait_for_url, write_tiny_params

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
BUCKETS = COMPOSE["minio-init"]["environment"]
MODEL = "pretrainflow-classifier"
RUN_TIMEOUT_S = 600  # one `pretrainflow run` here takes about 2 minutes, two at once included
# docker/.env for this stack: throwaway values, every server here lives for one test module
SECRETS = {"PG_PREFECT_PASSWORD": "pg-prefect", "PG_MLFLOW_PASSWORD": "pg-mlflow",
           "S3_ACCESS_KEY": "pretrainflow", "S3_SECRET_KEY": "s3-secret",
           "PREFECT_AUTH_STRING": "admin:stack-secret"}
PYTHON_MODULES = {"moto": "moto[server]", "flask": "moto[server]", "flask_cors": "moto[server]",
                  "boto3": "boto3", "psycopg2": "psycopg2-binary"}


def _unavailable(what: str) -> NoReturn:
    """Skip, saying what is missing; under CI the test must run, so it fails instead."""
    if os.environ.get("CI"):
        pytest.fail(f"team stack: {what} (.ci/run installs it: CI must run this test)")
    pytest.skip(f"team stack: {what}")


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found and shutil.which("initdb"):
        found = [Path(shutil.which("initdb") or "").resolve()]
    if not found:
        _unavailable("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    return found[-1].parent


def _check_installed() -> None:
    missing = sorted({pkg for mod, pkg in PYTHON_MODULES.items() if importlib.util.find_spec(mod) is None})
    if missing:
        _unavailable(f"Python packages {', '.join(missing)} not installed: pip install -e '.[dev]'")


# ---- the servers ---------------------------------------------------------------------------

def _resolve(value: Any, exact: dict[str, str], inside: dict[str, str]) -> str:
    """A compose value with docker/.env's secrets filled in and the services' host names (and
    published ports) replaced by this machine's: ``exact`` for whole values, ``inside`` for parts."""
    value = re.sub(r"\$\{(\w+)[^}]*\}", lambda m: SECRETS[m.group(1)], str(value))
    value = exact.get(value, value)
    for old, new in inside.items():
        value = value.replace(old, new)
    return value


def _service(name: str, exact: dict[str, str], inside: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command (its program from this virtualenv) and environment compose gives ``name``."""
    svc = COMPOSE[name]
    argv = [_resolve(a, exact, inside) for a in svc["command"]]
    env = {k: _resolve(v, exact, inside) for k, v in svc.get("environment", {}).items()}
    return [str(BIN / argv[0]), *argv[1:]], env


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else f"(no {path.name})"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (uvicorn workers included), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _start(stack: contextlib.ExitStack, argv: list[str], env: dict[str, str], log: Path,
           cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as sink:
        proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(_stop, proc)
    return proc


def _as_postgres(folder: Path) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user."""
    if os.geteuid() != 0:
        return []
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("no `postgres` user to run PostgreSQL as (apt-get install postgresql creates it)")
    if not shutil.which("runuser"):
        _unavailable("no runuser (util-linux) to run PostgreSQL as the `postgres` user")
    os.chown(folder, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def _pg(as_pg: list[str], *argv: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run([*as_pg, "env", *(f"{k}={v}" for k, v in (env or {}).items()), *argv],
                          capture_output=True, text=True, timeout=120)
    said = f"`{' '.join(argv[:2])}` said {(proc.stderr or proc.stdout)[-1500:]}"
    if proc.returncode != 0 and argv[0] == "sh":  # the project's own script: a failure, never a skip
        pytest.fail(f"docker/postgres-init.sh failed: {said}")
    if proc.returncode != 0:
        _unavailable(f"PostgreSQL did not start: {said}")


@contextlib.contextmanager
def _postgres(port: int) -> Iterator[None]:
    """A cluster in a temporary folder (pytest's are closed to other users) with the roles and
    databases of docker/postgres-init.sh; local socket trusted, TCP by password as in compose."""
    pg_bin = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="pretrainflow-pg-"))
    try:
        as_pg = _as_postgres(root)
        data, pg_ctl = root / "data", str(pg_bin / "pg_ctl")
        _pg(as_pg, str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C")
        try:
            _pg(as_pg, pg_ctl, "-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "60", "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
                "start")
            shutil.copy(REPO / "docker" / "postgres-init.sh", root / "init.sh")
            _pg(as_pg, "sh", str(root / "init.sh"), env={
                "PATH": f"{pg_bin}:/usr/bin:/bin", "PGHOST": str(root), "PGPORT": str(port),
                **{k: SECRETS[k] for k in ("PG_PREFECT_PASSWORD", "PG_MLFLOW_PASSWORD")}})
            yield
        finally:
            for mode in ("fast", "immediate"):
                if subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-m", mode, "-w", "-t", "30", "stop"],
                                  capture_output=True, timeout=60).returncode == 0:
                    break
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Stack:
    root: Path
    mlflow: str  # the tracking URI
    prefect_api: str
    s3: str  # the S3 endpoint
    pg_port: int
    env: dict[str, str]  # a teammate's shell (README.md, "Running as a team", step 2)
    mlflow_server: subprocess.Popen[bytes]
    booting: list[tuple[str, subprocess.Popen[bytes], Path]]  # (health URL, server, log)

    def ready(self) -> Stack:
        """Wait for MLflow and Prefect, which boot while DVC works; Prefect's API asks for the
        auth string, as compose sets it up."""
        for url, proc, log in self.booting:
            wait_for_url(url, proc, 180, partial(_tail, log))
        self.booting = []
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{self.prefect_api}/admin/version", timeout=10)
        assert refused.value.code == 401
        return self

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = _s3_client(self.s3).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def store(self) -> str:
        """The MLflow server's own database, for when the server is down."""
        return f"postgresql+psycopg2://mlflow:{SECRETS['PG_MLFLOW_PASSWORD']}@127.0.0.1:{self.pg_port}/mlflow"


def _s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=SECRETS["S3_ACCESS_KEY"],
                        aws_secret_access_key=SECRETS["S3_SECRET_KEY"])


def _s3(stack: contextlib.ExitStack, root: Path) -> str:
    """moto's S3 server, with the two buckets minio-init.sh makes."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(stack, [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], {},
                  root / "s3.log", root)
    wait_for_url(f"{url}/moto-api/", proc, 60, lambda: _tail(root / "s3.log"))
    for bucket in (BUCKETS["MLFLOW_BUCKET"], BUCKETS["DVC_BUCKET"]):
        _s3_client(url).create_bucket(Bucket=bucket)
    return url


def _servers(started: contextlib.ExitStack, root: Path, pg_port: int, s3: str) -> Stack:
    """The MLflow and Prefect servers, started together as compose runs them (not yet answering)."""
    mlflow_port, prefect_port = free_port(), free_port()
    inside = {"@postgres:5432/": f"@127.0.0.1:{pg_port}/", "http://minio:9000": s3,
              "127.0.0.1:4200": f"127.0.0.1:{prefect_port}"}
    argv, env = _service("mlflow", {"0.0.0.0": "127.0.0.1", "5000": str(mlflow_port)}, inside)
    # 2 workers, not uvicorn's 4, and no GenAI job runner (8 more processes): a 2-core machine
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    mlflow = _start(started, [*argv, "--workers", "2"], env, root / "mlflow.log", root)
    argv, env = _service("prefect-server", {"0.0.0.0": "127.0.0.1", "4200": str(prefect_port),
                                            "postgres": "127.0.0.1", "5432": str(pg_port)}, inside)
    api, uri = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
    env.update(PREFECT_HOME=str(root / "prefect-server"), PREFECT_API_URL=api,
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(prefect_port))
    prefect = _start(started, argv, env, root / "prefect.log", root)
    shell = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_API_URL": api,
             "PREFECT_API_AUTH_STRING": SECRETS["PREFECT_AUTH_STRING"], "MLFLOW_TRACKING_URI": uri,
             "AWS_ACCESS_KEY_ID": SECRETS["S3_ACCESS_KEY"], "AWS_SECRET_ACCESS_KEY": SECRETS["S3_SECRET_KEY"],
             "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    booting = [(f"{uri}/health", mlflow, root / "mlflow.log"),
               (f"{api}/health", prefect, root / "prefect.log")]
    return Stack(root, uri, api, s3, pg_port, shell, mlflow, booting)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Every server, stopped (in the reverse order) when the module's tests are done, pass or fail."""
    _check_installed()
    _pg_bin()
    root, pg_port = tmp_path_factory.mktemp("stack"), free_port()
    with _postgres(pg_port), contextlib.ExitStack() as started:
        yield _servers(started, root, pg_port, _s3(started, root))


# ---- the team's projects --------------------------------------------------------------------

def _sh(cwd: Path, env: dict[str, str], *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _dvc(cwd: Path, env: dict[str, str], *args: str) -> str:
    return _sh(cwd, env, sys.executable, "-m", "dvc", *args)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Projects:
    alice: Path  # pushed the data, removed it and her cache, pulled it back
    bob: Path  # cloned alice's repository and pulled the data
    pushed: dict[str, bytes]
    pulled: dict[str, bytes]
    cloned: dict[str, bytes]


@pytest.fixture(scope="module")
def projects(stack: Stack, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Projects:
    """README.md's step 3: a repository with the DVC remote on the stack's S3, the data added and
    pushed; then the data and the cache removed and pulled back, and a teammate's clone pulls it."""
    alice = tmp_path_factory.mktemp("alice")
    for name in ("pipeline_tasks", "flows"):
        shutil.copytree(REPO / name, alice / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", alice / "dvc.yaml")
    write_tiny_params(alice / "params.yaml")
    shutil.copytree(tiny_data, alice / "data")
    git = ("git", "-c", "user.name=alice", "-c", "user.email=alice@pretrainflow.invalid")
    env, remote = stack.env, f"s3://{BUCKETS['DVC_BUCKET']}"
    _sh(alice, env, "git", "init", "-q")
    _dvc(alice, env, "init", "-q")
    _dvc(alice, env, "remote", "add", "-d", "minio", remote)
    _dvc(alice, env, "remote", "modify", "--local", "minio", "endpointurl", stack.s3)
    _dvc(alice, env, "add", "-q", "data")
    _sh(alice, env, *git, "add", "-A")
    _sh(alice, env, *git, "commit", "-qm", "code, params, data.dvc and the DVC remote")
    _dvc(alice, env, "push", "data.dvc")
    pushed = _snapshot(alice / "data")
    shutil.rmtree(alice / "data")
    shutil.rmtree(alice / ".dvc" / "cache")
    _dvc(alice, env, "pull", "data.dvc")
    bob = tmp_path_factory.mktemp("team") / "bob"
    _sh(bob.parent, env, "git", "clone", "-q", str(alice), str(bob))
    _dvc(bob, env, "remote", "modify", "--local", "minio", "endpointurl", stack.s3)
    _dvc(bob, env, "pull", "data.dvc")
    return Projects(alice, bob, pushed, _snapshot(alice / "data"), _snapshot(bob / "data"))


def test_the_data_round_trips_through_the_dvc_remote(stack: Stack, projects: Projects) -> None:
    nfiles = yaml.safe_load((projects.alice / "data.dvc").read_text())["outs"][0]["nfiles"]
    assert len(projects.pushed) == nfiles == 120
    assert projects.pulled == projects.pushed, "dvc pull did not bring back the pushed bytes"
    assert projects.cloned == projects.pushed, "a teammate's clone pulled other bytes"
    stored = stack.keys(BUCKETS["DVC_BUCKET"])
    assert len([k for k in stored if k.startswith("files/md5/")]) == nfiles + 1, stored[:5]  # + the .dir


# ---- runs -------------------------------------------------------------------------------------

@pytest.fixture
def launch() -> Iterator[Any]:
    """Starts `pretrainflow run` as a teammate's shell would (one torch thread each: two runs share
    2 cores); whatever is still running when the test ends, pass or fail, is killed."""
    runs: list[subprocess.Popen[str]] = []
    watchdogs: list[threading.Timer] = []

    def run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
        home = cwd.parent / f"{cwd.name}-prefect-home"  # each teammate's own PREFECT_HOME
        runs.append(subprocess.Popen(["pretrainflow", "run", *args], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                     env={**os.environ, **env, "PREFECT_HOME": str(home),
                                          "OMP_NUM_THREADS": "1"}))
        watchdogs.append(threading.Timer(RUN_TIMEOUT_S, runs[-1].kill))  # a hung run ends the test
        watchdogs[-1].start()
        return runs[-1]

    yield run
    for timer in watchdogs:
        timer.cancel()
    for proc in runs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)


def _prefect_run(stack: Stack, flow_run_id: str) -> Any:
    from prefect import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.prefect_api,
                             PREFECT_API_AUTH_STRING: SECRETS["PREFECT_AUTH_STRING"]}):
        with get_client(sync_client=True) as client:
            return client.read_flow_run(UUID(flow_run_id))


def _new_parent_runs(client: Any, since_ms: int) -> list[Any]:
    exp = client.get_experiment_by_name("pretrainflow")
    return client.search_runs([exp.experiment_id], "attributes.run_name LIKE 'pretrain-finetune%' and "
                              f"attributes.start_time >= {since_ms}")


def _wait_for(check: Any, seconds: float, what: str, runs: list[subprocess.Popen[str]]) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        for run in runs:
            assert run.poll() is None, f"{what}: a run ended first:\n{run.communicate()[0][-4000:]}"
        time.sleep(1)
    raise AssertionError(f"{what}: not within {seconds:.0f} s")


def _check_run(stack: Stack, client: Any, parent: Any, md5: str) -> Any:
    """One finished run as the team sees it: its stage runs and metrics in MLflow, its model
    version, the model's files in S3, and its flow run COMPLETED in Prefect."""
    tags, run_id, exp = parent.data.tags, parent.info.run_id, parent.info.experiment_id
    assert parent.info.status == "FINISHED" and tags["data_dvc_md5"] == md5
    assert {"test_accuracy", "pretraining_lift_points", "pipeline_seconds"} <= parent.data.metrics.keys()
    stages = client.search_runs([exp], f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(s.data.tags["pretrainflow.stage"] for s in stages) == sorted(graph.NAMES)
    assert all(s.info.status == "FINISHED" for s in stages)
    pretrain = next(s for s in stages if s.data.tags["pretrainflow.stage"] == "pretrain")
    assert "steps_trained" in pretrain.data.metrics
    version = client.get_model_version(MODEL, tags["registered_version"])
    assert version.tags["data_version"] == md5 and version.run_id == version.tags["run_id"] == run_id
    location = client.get_model_version_download_uri(MODEL, version.version)
    assert location.startswith("mlflow-artifacts:/"), location  # proxied by the server, not direct S3
    prefix = location.removeprefix("mlflow-artifacts:/").strip("/")
    stored = stack.keys(BUCKETS["MLFLOW_BUCKET"], prefix + "/")
    assert {f"{prefix}/MLmodel", f"{prefix}/artifacts/classifier.pt"} <= set(stored), stored
    run_files = stack.keys(BUCKETS["MLFLOW_BUCKET"], f"{exp}/{run_id}/")
    assert f"{exp}/{run_id}/artifacts/metrics.json" in run_files, run_files
    flow_run = _prefect_run(stack, tags["prefect_flow_run_id"])
    assert flow_run.state_type.value == "COMPLETED" and f"data:{md5[:12]}" in flow_run.tags
    assert tags["prefect_flow_run_url"].startswith(stack.prefect_api.removesuffix("/api"))
    return version


# Two runs' setup_tracking in one process, each thread a run: both look for the experiment before
# either creates it (the barrier), as two teammates' first runs at once on a fresh stack can.
FIRST_RUNS = """
import sys, threading, mlflow
from flows.tracking.runs import setup_tracking
real, barrier, looked = mlflow.get_experiment_by_name, threading.Barrier(2, timeout=120), threading.local()
def look_then_wait(name):
    found = real(name)
    if not getattr(looked, "once", False):
        looked.once = True
        barrier.wait()
    return found
mlflow.get_experiment_by_name = look_then_wait
ids = []
runs = [threading.Thread(target=lambda: ids.append(setup_tracking(sys.argv[1]))) for _ in range(2)]
for run in runs: run.start()
for run in runs: run.join()
print("experiments:", *ids)
"""


def test_two_first_runs_at_once_share_one_experiment(stack: Stack) -> None:
    """Trust issue: two teammates' first runs on a fresh stack both found no experiment, both
    created it, and the later one ended with a RESOURCE_ALREADY_EXISTS traceback."""
    proc = subprocess.run([sys.executable, "-c", FIRST_RUNS, "first-runs"], cwd=stack.root, text=True,
                          env={**os.environ, **stack.ready().env}, capture_output=True, timeout=300)
    found = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("experiments:")]
    assert proc.returncode == 0 and len(found) == 1, proc.stderr[-3000:]
    assert len(found[0]) == 2 and found[0][0] == found[0][1], proc.stderr[-3000:]


def _both_decide(client: Any, runs: list[subprocess.Popen[str]], since: int) -> None:
    """Wait until both runs' register stages have finished: each has registered its version and
    decided on the champion; neither can have moved an alias, the test holds the lock."""
    decided = ("tags.`pretrainflow.stage` = 'register' and attributes.status = 'FINISHED' and "
               f"attributes.start_time >= {since}")
    exp = _wait_for(lambda: client.get_experiment_by_name("pretrainflow"), 300, "the experiment", runs)
    _wait_for(lambda: len(client.search_runs([exp.experiment_id], decided)) == 2, 400,
              "both runs registered", runs)


def test_two_runs_at_once_record_everything_and_one_champion(stack: Stack, projects: Projects,
                                                             launch: Any) -> None:
    """Alice and Bob run at once. The champion's compare-and-set is made to matter: the test
    holds the alias lock (flows/registry/aliases.py) until both have registered and decided against the
    same champion (none), so both decide to promote, and only the first to move may."""
    import mlflow

    client = mlflow.MlflowClient(stack.ready().mlflow)
    since = int(time.time() * 1000)
    client.create_registered_model(f"{MODEL}--alias-lock", description="held by the test")
    try:
        runs = [launch(p, stack.env, "--set", f"finetune.seed={seed}")
                for seed, p in ((1, projects.alice), (2, projects.bob))]
        _both_decide(client, runs, since)
    finally:
        client.delete_registered_model(f"{MODEL}--alias-lock")
    for run in runs:
        out = run.communicate(timeout=300)[0]
        assert run.returncode == 0, out[-4000:]
    md5 = yaml.safe_load((projects.alice / "data.dvc").read_text())["outs"][0]["md5"]
    parents = _new_parent_runs(client, since)
    assert sorted(p.data.params["finetune.seed"] for p in parents) == ["1", "2"]
    versions = [_check_run(stack, client, client.get_run(p.info.run_id), md5) for p in parents]
    assert len({v.version for v in versions}) == 2  # each run registered its own version
    _check_aliases(client, versions)
    # README step 5: the champion, from any teammate's shell, its model files from S3 through MLflow
    _sh(projects.bob, stack.env, "pretrainflow", "predict", "data/3", "--output", "preds.csv")
    preds = (projects.bob / "preds.csv").read_text().splitlines()
    assert len(preds) == 1 + len(list((projects.bob / "data" / "3").iterdir())), preds[:3]


def _check_aliases(client: Any, versions: list[Any]) -> None:
    """`champion` on exactly one version, the first to move; the other kept from it, saying the
    champion changed under it, and `challenger` on a registered version."""
    champion = client.get_model_version_by_alias(MODEL, "champion")
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    decisions = {v.version: client.get_model_version(MODEL, v.version).tags for v in versions}
    assert sorted(t["gate_decision"] for t in decisions.values()) == ["challenger", "champion"], decisions
    (first,) = [v for v, t in decisions.items() if t["gate_decision"] == "champion"]
    (second,) = [v for v, t in decisions.items() if t["gate_decision"] == "challenger"]
    assert champion.version == first and challenger.version == second  # an alias names one version
    assert f"the champion changed from none to version {first}" in decisions[second]["gate_reason"]


def _aliases(client: Any) -> dict[str, str]:
    found = {}
    for alias in ("champion", "challenger"):
        with contextlib.suppress(Exception):
            found[alias] = str(client.get_model_version_by_alias(MODEL, alias).version)
    return found


def test_a_killed_tracking_server_ends_the_run_with_one_message(stack: Stack, projects: Projects,
                                                                launch: Any) -> None:
    """The tracking server dies (SIGKILL, every worker) while pretraining runs: one message naming
    the tracking store, exit status 1, the flow run FAILED in Prefect, and no alias moved."""
    import mlflow

    client = mlflow.MlflowClient(stack.ready().mlflow)
    before, versions = _aliases(client), len(client.search_model_versions(f"name = '{MODEL}'"))
    registered = projects.alice / "artifacts" / "registered.json"
    kept = registered.read_bytes() if registered.is_file() else None
    since = int(time.time() * 1000)
    env = {**stack.env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    run = launch(projects.alice, env, "--set", "pretrain.epochs=60")
    seen = []
    for line in run.stdout:  # kill the server once pretraining is under way
        seen.append(line)
        if "pretrain epoch 2/" in line:
            os.killpg(stack.mlflow_server.pid, signal.SIGKILL)
            break
    out = "".join(seen) + run.communicate(timeout=300)[0]
    assert stack.mlflow_server.poll() is not None, "the run ended before pretraining: " + out[-3000:]
    assert run.returncode == 1, out[-3000:]
    (message,) = [line for line in out.splitlines() if line.startswith("pretrainflow run: error:")]
    assert message.startswith("pretrainflow run: error: MLflow tracking store") and stack.mlflow in message
    assert "Connection refused" in message and "No alias moved" in message and len(message) < 400
    store = mlflow.MlflowClient(stack.store())  # the server's database: nothing moved or registered
    assert _aliases(store) == before and len(store.search_model_versions(f"name = '{MODEL}'")) == versions
    assert (registered.read_bytes() if registered.is_file() else None) == kept
    (parent,) = _new_parent_runs(store, since)
    flow_run = _prefect_run(stack, parent.data.tags["prefect_flow_run_id"])
    assert flow_run.state_type.value == "FAILED" and stack.mlflow in (flow_run.state.message or "")
