"""A run survives a slow start of Prefect's temporary API (no PREFECT_API_URL): under CPU load
it took over Prefect's default 20 s to answer, and the flow failed before its first stage."""

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
