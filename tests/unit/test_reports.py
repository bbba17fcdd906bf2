"""What users read in the Prefect UI: links that open MLflow on its training pages, and a
headline that answers "did it help"."""

from __future__ import annotations

import re

from flows.orchestration.reports import TRAINING_LAYOUT, headline, model_link, run_link
from tests.conftest import REPO


def test_every_mlflow_link_opens_the_training_layout() -> None:
    uri = "http://127.0.0.1:5000"
    assert run_link(uri, "1", "abc").endswith(f"/#/experiments/1/runs/abc{TRAINING_LAYOUT})")
    assert model_link(uri, "m", "3").endswith(f"/#/models/m/versions/3{TRAINING_LAYOUT})")
    assert run_link("sqlite:///mlflow.db", "1", "abc") == "`abc`"  # no server, no link
    # every MLflow UI address in flows/ is built by reports.run_url/model_url or ends in the layout
    for path in (REPO / "flows").rglob("*.py"):
        for line in path.read_text().splitlines():
            if re.search(r"/#/(experiments|models)/", line) and path.name != "reports.py":
                assert "TRAINING_LAYOUT" in line, f"{path.name}: {line.strip()}"


def test_the_headline_puts_the_model_against_its_baselines() -> None:
    lift = "+5.00 points (pretraining: against scratch + the same pool stage; McNemar p 1e-05)"
    summary = {"test_accuracy": 0.93, "scratch_test_accuracy": 0.75, "pretrained_test_accuracy": 0.85,
               "scratch_pool_test_accuracy": 0.88, "pixels_test_accuracy": 0.6,
               "pretraining_lift_points": lift, "labels_used": 140,
               "train_labels": 40, "val_labels": 100, "test_images": 1000}
    text = headline(summary)
    assert "test accuracy 0.9300" in text and "scratch 0.7500" in text and "raw pixels 0.6000" in text
    assert "pretrained without the pool 0.8500" in text and "scratch + pool 0.8800" in text
    assert f"pretraining lift {lift}" in text
    assert "140 labels (40 training + 100 validation)" in text


def test_the_tests_never_touch_the_users_prefect_home() -> None:
    import os

    from prefect.settings import PREFECT_HOME

    home = str(PREFECT_HOME.value())
    assert "pretrainflow-tests-prefect-" in home and os.environ["PREFECT_HOME"] == home
    assert not home.startswith(os.path.expanduser("~/.prefect"))
