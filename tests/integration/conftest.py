"""One Prefect test harness (temporary API + database) and one MLflow sqlite store per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary project folder: cwd, MLflow store and Prefect results all live here."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    root = tmp_path_factory.mktemp("workspace")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    with prefect_test_harness(server_startup_timeout=120), \
            temporary_settings({PREFECT_LOCAL_STORAGE_PATH: root / "prefect-results"}):
        yield root
    mp.undo()
