"""Shared fixtures: real digits, the real params.yaml shrunk to seconds (lightning-hydra style)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

# Under pytest-xdist (make test: two workers on a 2-core machine) each worker, and each command it
# starts, runs torch and BLAS on one thread: two workers with two spinning OpenMP threads each made
# small training steps 50x slower (a 0.9 s test took 52 s).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = "1"

from pipeline_tasks.config import PipelineConfig, load_config  # noqa: E402
from pipeline_tasks.data.datasets import write_builtin  # noqa: E402
from pipeline_tasks.data.manifest import build_manifest  # noqa: E402
from pipeline_tasks.data.preprocess import PreprocessRecord, preprocess_data  # noqa: E402

# Before anything imports prefect: the tests' flow runs (and the CLI runs they start) go to a
# throwaway Prefect home, never the user's ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pretrainflow-tests-prefect-")

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"

# Everything small: 1 pretrain epoch on ~85 images, a 2-check, 10-step fine-tune, a 6-step pool
# stage, CPU. On so little data the lift over scratch is noise, so the gate does not require it.
TINY = [
    "validate.min_images_per_class=5",
    "pretrain.epochs=1", "pretrain.batch_size=32", "pretrain.base_width=8", "pretrain.device=cpu",
    "finetune.epochs=2", "finetune.min_steps=10", "finetune.label_fraction=0.5",
    "finetune.batch_size=16", "finetune.device=cpu",
    "pool.steps=6", "pool.checks=2", "pool.unlabeled_batch=32", "pool.device=cpu",
    "register.require_lift=false",
]


# Longest first (seconds of one worker in `make test`, measured before the channels-last encoder and
# the per-stage imports made them shorter): pytest-xdist hands each file to one worker in this order
# (with --no-loadscope-reorder; by default it reorders by test count, which put the one-test,
# 8-minute label-efficiency file last and left the other worker idle meanwhile).
LONGEST_FIRST = (
    "tests/integration/test_label_efficiency.py",  # 466 s
    "tests/integration/test_dvc.py",  # 316
    "tests/integration/test_resume_and_ddp.py",  # 200
    "tests/integration/test_flow.py",  # 152
    "tests/integration/test_team_stack.py",  # 149
    "tests/integration/test_deployment.py",  # 105
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``LONGEST_FIRST`` files at the front, everything else in collection order."""
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


def write_tiny_params(dest: Path, *extra: str) -> None:
    """params.yaml with TINY (and ``extra``) written in, for a command run in a project copy."""
    params = yaml.safe_load(PARAMS.read_text())
    for item in [*TINY, *extra]:
        key, value = item.split("=", 1)
        section, field = key.split(".")
        params[section][field] = yaml.safe_load(value)
    dest.write_text(yaml.safe_dump(params))


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_url(url: str, server: subprocess.Popen[bytes], seconds: float, why: Callable[[], str]) -> None:
    """Wait until ``url`` answers; fail with ``why()`` if ``server`` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, f"{url} did not answer: {why()}"
            time.sleep(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real MNIST digits per class (120 PNGs) in the ImageFolder layout."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    write_builtin("mnist-5k", out, limit_per_class=12)
    return out


@pytest.fixture(scope="session")
def tiny_cfg(tiny_data: Path) -> PipelineConfig:
    return load_config(PARAMS, [*TINY, f"data.dir={tiny_data}"])


@pytest.fixture(scope="session")
def pre(tiny_cfg: PipelineConfig, tmp_path_factory: pytest.TempPathFactory) -> PreprocessRecord:
    """The tiny digits validated and preprocessed: 9 train, 1 val, 2 test images per class."""
    out = tmp_path_factory.mktemp("pre")
    build_manifest(tiny_cfg.data.dir).to_csv(out / "manifest.csv", index=False)
    return preprocess_data(out / "manifest.csv", tiny_cfg.data.dir, tiny_cfg.data, tiny_cfg.preprocess,
                           out / "preprocessed")
