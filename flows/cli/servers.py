"""``pretrainflow ui``: local Prefect and MLflow servers, started together and stopped together.

Both servers run in one process group of their own, apart from this process's group, so that
one ``killpg`` reaches them and everything they spawn (uvicorn workers, MLflow's job runner
when asked for), and a terminal's Ctrl-C reaches only this supervisor, which stops them in
order. SIGINT, SIGTERM and SIGHUP stop both and exit 0; a group still alive STOP_TIMEOUT_S
after SIGTERM is killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from flows.cli.errors import UserError
from flows.orchestration.reports import TRAINING_LAYOUT
from flows.tracking.project import project_root

STOP_TIMEOUT_S = 15.0
# MLflow answers /health ~10-20 s after start on 2 busy cores; a first Prefect start migrates
# its database. Both start at once, so this bounds the slower of the two.
HEALTH_TIMEOUT_S = 120.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A server bound to every interface is still reached, from here, through loopback.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}
# The experiment tag that marks an MLflow experiment as model training (not a GenAI app).
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
# Health checks go straight to the servers, never through an http_proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Server:
    """One server: its command line, what it adds to the environment, and where it answers."""

    name: str
    port: int
    port_flag: str
    argv: list[str]
    env: dict[str, str]
    health_url: str
    ui_url: str


def _url(host: str, port: int, path: str = "") -> str:
    host = _LOOPBACK.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def build_servers(host: str, prefect_port: int, mlflow_port: int, mlflow_jobs: bool = False) -> list[Server]:
    """The Prefect server (its database in PREFECT_HOME, where `pretrainflow run` records flow
    runs) and the MLflow server on the project's sqlite:///mlflow.db and mlartifacts/."""
    bin_dir, root = Path(sys.executable).parent, project_root()
    api = _url(host, prefect_port, "/api")
    prefect_env = {"PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(prefect_port),
                   "PREFECT_API_URL": api, "PREFECT_UI_API_URL": api,
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    # MLflow's job runner is 8 more processes (~1.4 GB PSS here) that only GenAI scorer jobs use.
    jobs = "true" if mlflow_jobs else os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    mlflow_env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": jobs,
                  "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")}
    return [
        Server("Prefect", prefect_port, "--prefect-port",
               [str(bin_dir / "prefect"), "server", "start", "--host", host, "--port", str(prefect_port),
                "--analytics-off"],
               prefect_env, _url(host, prefect_port, "/api/health"), _url(host, prefect_port)),
        Server("MLflow", mlflow_port, "--mlflow-port",
               [str(bin_dir / "mlflow"), "server", "--host", host, "--port", str(mlflow_port),
                "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                "--default-artifact-root", (root / "mlartifacts").as_uri()],
               mlflow_env, _url(host, mlflow_port, "/health"), _url(host, mlflow_port)),
    ]


def check_port_free(host: str, server: Server) -> None:
    """Bind the port as the server will (SO_REUSEADDR: a TIME_WAIT leftover is no conflict)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, server.port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: not a known address ({exc.strerror}); pass an address of this "
                        "machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)",
                        code=2) from exc
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {server.port} on {host} is already in use, so the {server.name} server cannot "
                    f"start; stop what listens there (`ss -ltnp 'sport = :{server.port}'` names it) or "
                    f"pass another {server.port_flag}", code=2) from exc
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"--host {host} is not an address of this machine ({exc.strerror}); pass "
                                "one of its addresses, e.g. 127.0.0.1 or 0.0.0.0", code=2) from exc
            raise UserError(f"cannot listen on {host} port {server.port} ({exc.strerror}); pass another "
                            f"{server.port_flag}", code=2) from exc


class ServerGroup:
    """Processes started in one new process group: stopped together, killed if they linger."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.pgid: int | None = None

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        # The first process leads a new group (process_group=0); the others join it. No stdin:
        # a server in a background group that read the terminal would be stopped (SIGTTIN).
        try:
            proc = subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                    process_group=0 if self.pgid is None else self.pgid)
        except OSError as exc:
            raise UserError(f"cannot start the {name} server ({argv[0]}): {exc.strerror}; "
                            "reinstall with `make run` or `pip install -e .`") from exc
        self.pgid = proc.pid if self.pgid is None else self.pgid
        self.procs.append((name, proc))

    def exited(self) -> tuple[str, int] | None:
        """The first server that has stopped, with its exit status."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> list[str]:
        """SIGTERM to the group, then SIGKILL to whatever of it is left after ``timeout``, even a
        child whose server is gone; returns the names of the servers that had to be killed."""
        if self.pgid is None:
            return []
        _signal_group(self.pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        killed = [name for name, proc in self.procs if proc.poll() is None]
        _signal_group(self.pgid, signal.SIGKILL)
        for _, proc in self.procs:
            proc.wait()
        return killed


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:  # every member already gone
        pass


class _StopRequest:
    """A signal handler that only records the signal: the loops below poll it and stop."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name


@contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    stop = _StopRequest()
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _answers(url: str) -> bool:
    try:
        _DIRECT.open(url, timeout=2).close()
        return True
    except (OSError, http.client.HTTPException):
        return False


def _raise_if_exited(group: ServerGroup, servers: list[Server], when: str) -> None:
    if (gone := group.exited()) is not None:
        name, code = gone
        url = next(s.health_url for s in servers if s.name == name)
        raise UserError(f"the {name} server exited with status {code} {when} ({url}); see its log above")


def _wait_healthy(servers: list[Server], group: ServerGroup, stop: _StopRequest,
                  timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """True once every server answers; False if a stop signal came first."""
    pending, deadline = list(servers), time.monotonic() + timeout
    while not stop.signal:
        _raise_if_exited(group, servers, "before it answered")
        pending = [s for s in pending if not _answers(s.health_url)]
        if not pending:
            return True
        if time.monotonic() > deadline:
            raise UserError(f"{pending[0].health_url} did not answer within {timeout:.0f} s; see the "
                            f"{pending[0].name} server's log above")
        time.sleep(0.5)
    return False


def training_runs_urls(mlflow: Server) -> list[str]:
    """A link to each experiment tagged as model training, opened on its runs. MLflow 3.17's UI
    picks its GenAI or model-training pages from its own GenAI / Model training switch (GenAI
    unless the browser stored another choice), not from the tag, so the link sets the switch."""
    try:
        with _DIRECT.open(f"{mlflow.ui_url}/api/2.0/mlflow/experiments/search?max_results=1000",
                          timeout=10) as answer:
            experiments = json.load(answer).get("experiments", [])
    except (OSError, ValueError, http.client.HTTPException):
        return []  # a convenience only: the MLflow UI URL above still works
    return [f"runs of {e['name']}: {mlflow.ui_url}/#/experiments/{e['experiment_id']}{TRAINING_LAYOUT}"
            for e in experiments
            if {t["key"]: t["value"] for t in e.get("tags", [])}.get(EXPERIMENT_KIND) == TRAINING_KIND]


def _print_urls(servers: list[Server]) -> None:
    prefect, mlflow = servers
    runs = "".join(f"\n  {line}" for line in training_runs_urls(mlflow))
    print(f"Prefect UI: {prefect.ui_url}\nMLflow UI:  {mlflow.ui_url}{runs}\n"
          f"To send runs there: export PREFECT_API_URL={prefect.ui_url}/api "
          f"MLFLOW_TRACKING_URI={mlflow.ui_url}\nCtrl-C (or SIGTERM) stops both.", flush=True)


def run_ui(host: str, prefect_port: int, mlflow_port: int, mlflow_jobs: bool = False) -> int:
    if prefect_port == mlflow_port:
        raise UserError(f"--prefect-port and --mlflow-port are both {prefect_port}; pass two ports", code=2)
    servers = build_servers(host, prefect_port, mlflow_port, mlflow_jobs)
    for server in servers:  # before starting anything: one clear message, nothing to clean up
        check_port_free(host, server)
    group = ServerGroup()
    with _stop_on_signals() as stop:
        try:
            for server in servers:
                group.start(server.name, server.argv, server.env)
            if _wait_healthy(servers, group, stop):
                _print_urls(servers)
            while not stop.signal:
                _raise_if_exited(group, servers, "by itself")
                time.sleep(0.5)
        finally:
            print(f"stopping Prefect and MLflow{f' ({stop.signal})' if stop.signal else ''}", flush=True)
            for name in group.stop():
                print(f"the {name} server did not stop within {STOP_TIMEOUT_S:.0f} s after SIGTERM; "
                      "killed it and its children (SIGKILL)", file=sys.stderr, flush=True)
    print("Prefect and MLflow stopped", flush=True)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    return run_ui(args.host, args.prefect_port, args.mlflow_port, args.mlflow_jobs)
