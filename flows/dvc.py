"""The few DVC operations the CLI needs, through DVC's own command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class DvcError(RuntimeError):
    pass


def in_dvc_repo() -> bool:
    return Path(".dvc").is_dir() and Path("dvc.yaml").is_file()


def dvc(*args: str) -> str:
    """Run ``dvc ARGS`` with this interpreter's DVC; raise ``DvcError`` with its message."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise DvcError(f"`dvc {' '.join(args)}` failed: {detail[-1] if detail else proc.returncode}")
    return proc.stdout


def tracks(data_dir: str | Path) -> bool:
    """True when ``data_dir`` is the project's ``data/``, which ``data.dvc`` tracks."""
    return in_dvc_repo() and Path(data_dir).resolve() == Path("data").resolve()


def record_data_version(data_dir: str | Path) -> None:
    """``dvc add`` the data folder: data.dvc then names the exact version a run used, and
    ``dvc checkout`` can bring it back. Files are copied into the cache, never modified."""
    dvc("add", "--quiet", str(data_dir))


def commit_stage_outputs() -> None:
    """Record the flow's outputs in dvc.lock, as `dvc repro` would have, so `dvc status` is
    clean. Only valid when the flow ran with params.yaml as is and the tracked data."""
    dvc("commit", "--force", "--quiet")
