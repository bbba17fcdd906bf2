"""Where the project is: the folder a relative tracking store (and `pretrainflow ui`'s servers)
resolve against, whatever folder a command runs in.

Standard library only: ``pretrainflow ui`` reads it without importing MLflow.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_MARKERS = ("params.yaml", "dvc.yaml")


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (the working directory) that holds
    ``params.yaml`` or ``dvc.yaml``: the project; the working directory when none does."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).is_file() for marker in PROJECT_MARKERS):
            return folder
    return here
