"""One job at a time per project: a lock on the artifacts folder, held by every flow run and
every ``pretrainflow stage``, with a record of who holds it.

Two jobs in one project overwrite each other's outputs: a second ``preprocess`` rewrote the
memory-mapped cache under a running flow, which died of SIGBUS. The lock is filelock's (an
``flock`` on ``artifacts/.lock``, released by the kernel when its process dies, however it
dies); beside it, ``artifacts/.lock.json`` names the holder (job id, pid, host, command, start).
A holder record found with the lock free was left by a job that crashed: its id lets the next
job end that job's MLflow runs as FAILED (``flows.tracking.runs.fail_runs_of``).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout


class ProjectBusy(RuntimeError):
    """Another job holds the project's lock; the message names it."""


@dataclass(frozen=True)
class Job:
    id: str
    crashed: str | None  # the job id of a holder that died without releasing its record


def _describe(holder: dict[str, object]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(str(holder.get("started", 0)))))
    return (f"`{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {started})")


@contextmanager
def project_lock(artifacts: Path, command: str) -> Iterator[Job]:
    """Hold the lock of the project whose outputs go to ``artifacts`` for the ``with`` block.
    Raises ``ProjectBusy`` at once, naming the holder, when another job holds it."""
    artifacts.mkdir(parents=True, exist_ok=True)
    record = artifacts / ".lock.json"
    lock = FileLock(artifacts / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _read(record)
        raise ProjectBusy(
            f"{artifacts}: another pretrainflow job is running in this project: {_describe(holder)}. "
            "Two jobs would overwrite each other's outputs; wait for it to finish, or stop it, then run "
            "again") from None
    try:
        crashed = _read(record).get("id")
        job = Job(uuid.uuid4().hex, str(crashed) if crashed else None)
        record.write_text(json.dumps({"id": job.id, "pid": os.getpid(), "host": socket.gethostname(),
                                      "command": command, "started": time.time()}))
        try:
            yield job
        finally:
            record.unlink(missing_ok=True)
    finally:
        lock.release()


def _read(record: Path) -> dict[str, object]:
    try:
        found = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
