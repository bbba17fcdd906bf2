"""A run survives what stands between it and Prefect's temporary API (no PREFECT_API_URL): a
slow start (under CPU load it took over Prefect's default 20 s to answer, and the flow failed
before its first stage) and a proxy in the environment (HTTP(S)_PROXY without NO_PROXY sent its
health checks to the proxy)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# A flow run in a process that imported the CLI, its temporary server 25 s slow to start.
SLOW_START = """
import subprocess
import flows.cli.main  # noqa: F401 - the CLI's settings, set before Prefect is imported
from prefect import flow

real = subprocess.Popen

class Slow(real):
    def __init__(self, args, *rest, **kwargs):
        super().__init__(["sh", "-c", 'sleep 25; exec "$@"', "sh", *args], *rest, **kwargs)

subprocess.Popen = Slow  # only the temporary server starts a process here

@flow
def hello() -> int:
    return 42

print("result", hello())
"""


def test_a_flow_waits_for_a_slow_temporary_server() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")}
    proc = subprocess.run([sys.executable, "-c", SLOW_START], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "result 42" in proc.stdout, proc.stderr[-2000:]


HELLO = """
import flows.cli.main  # noqa: F401 - the CLI's settings, set before Prefect is imported
from prefect import flow

@flow
def hello() -> int:
    return 42

print("result", hello())
"""


def test_a_proxy_in_the_environment_is_not_used_for_the_local_api() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "NO_PROXY", "no_proxy")}
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="30")
    proc = subprocess.run([sys.executable, "-c", HELLO], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "result 42" in proc.stdout, proc.stderr[-2000:]
