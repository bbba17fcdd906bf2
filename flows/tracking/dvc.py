"""The few DVC operations the CLI needs, through DVC's own command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


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


def tracks(folder: str | Path) -> bool:
    """True when ``folder`` is a data folder of this DVC project (a direct child of the project
    root, like ``data/`` and ``unlabeled/``), which ``FOLDER.dvc`` tracks; folders elsewhere
    are read where they are and not versioned."""
    return in_dvc_repo() and Path(folder).resolve().parent == Path.cwd().resolve()


def record_data_version(data_dir: str | Path) -> None:
    """``dvc add`` the data folder: FOLDER.dvc then names the exact version a run used, and
    ``dvc checkout`` can bring it back. The cache holds its own copy of each image (or a reflink
    where the file system has them; ``.dvc/config``), so an image edited in place in the folder
    never changes the recorded version."""
    dvc("add", "--quiet", str(data_dir))


def commit_stage_outputs() -> None:
    """Record the flow's outputs in dvc.lock, as `dvc repro` would have, so `dvc status` is
    clean. Only valid when the flow ran with params.yaml as is and the tracked data."""
    dvc("commit", "--force", "--quiet")


def untracked_pool_warning(pool_dir: str | Path | None) -> str | None:
    """A warning when ``dvc.yaml``'s validate stage does not depend on the unlabeled pool:
    ``dvc repro`` would then not notice a changed pool (DVC cannot template an optional dep)."""
    if not pool_dir or not in_dvc_repo():
        return None
    try:
        deps = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]["validate"].get("deps", [])
    except (yaml.YAMLError, KeyError, TypeError):
        return None
    listed = {Path(str(d)).resolve() for d in deps}
    pool = Path(pool_dir).resolve()
    if pool in listed:
        return None
    try:
        relative = pool.relative_to(Path.cwd().resolve())
    except ValueError:
        return (f"warning: the unlabeled pool {pool} is outside this DVC project, so `dvc repro` cannot "
                f"notice when it changes; import it with `pretrainflow data import-unlabeled {pool_dir}`")
    return (f"warning: dvc.yaml's validate stage does not list the unlabeled pool under deps, so `dvc repro` "
            f"will not notice when the pool changes; add `- {relative}` there")
