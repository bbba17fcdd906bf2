"""Fashion-MNIST from Debian's package: imported, validated clean, a flow run. 500 images of
each class (of 7,000) keep ``make test`` short; ``bench/validate_throughput.py`` validates all
70,000."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli.main import main
from flows.orchestration.pipeline import pretrain_finetune
from tests.conftest import PARAMS, TINY

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} absent: Debian package "
                       "dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)"),
]


def test_import_idx_validate_and_run(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("fashion") / "data"
    assert main(["data", "import-idx", str(FASHION), "--out", str(out), "--limit-per-class", "500"]) == 0
    assert sum(1 for _ in out.rglob("*.png")) == 5_000
    state = pretrain_finetune(params=str(PARAMS), overrides=[*TINY, "data.limit_per_class=250",
                                                                "register.model_name=fashion-classifier",
                                                                "tracking.experiment=fashion-mnist"],
                              data_dir=str(out), artifacts=str(workspace / "fashion-artifacts"),
                              return_state=True)
    assert state.is_completed(), state.message
    report = json.loads((workspace / "fashion-artifacts" / "validation" / "report.json").read_text())
    assert report["success"] and report["n_images"] == 5_000 and report["failures"] == []
    assert report["images_per_class"] == {str(c): 500 for c in range(10)}
    splits = (workspace / "fashion-artifacts" / "preprocessed" / "splits.csv").read_text().splitlines()
    assert len(splits) == 1 + 2_500  # limit_per_class=250 over 10 classes
