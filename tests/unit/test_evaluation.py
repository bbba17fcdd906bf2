"""Metrics are scikit-learn's (and torchmetrics' calibration error), worked by hand on a
fixed example; every picture is a matplotlib figure that shows class names in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm

from pipeline_tasks.evaluation import figures as figures_module
from pipeline_tasks.evaluation import grids, plots
from pipeline_tasks.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
)

Y = np.array([0, 0, 1, 1, 2, 2, 2, 0])
PROBS = np.array([[0.9, 0.05, 0.05], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1],
                  [0.1, 0.1, 0.8], [0.6, 0.2, 0.2], [0.3, 0.3, 0.4], [0.7, 0.2, 0.1]])


def test_metrics_equal_scikit_learn_and_a_hand_count() -> None:
    pred = PROBS.argmax(1)
    m = classification_metrics(PROBS, Y)
    assert m["test_accuracy"] == skm.accuracy_score(Y, pred) == 6 / 8
    assert m["test_macro_f1"] == pytest.approx(skm.f1_score(Y, pred, average="macro"))
    # by hand: F1 class 0 = 2*2/(3+3) = 2/3, class 1 = 2*2/(2+3) = 0.8, class 2 = 2*2/(3+2) = 0.8
    assert m["test_macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.8) / 3)
    assert confusion_matrix(Y, pred, 4).tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert macro_f1(Y, pred, 4) == pytest.approx((2 / 3 + 0.8 + 0.8 + 0) / 4)  # absent class 3 scores 0


def test_calibration_error_by_hand() -> None:
    # 2 bins: confidences 0.9 0.5 0.8 0.7 0.8 0.6 0.4 0.7; (0, .5]: 0.5 (wrong), 0.4 (right)
    # -> |0.45 - 0.5| x 2/8; (.5, 1]: mean 0.75, accuracy 5/6 -> |0.75 - 5/6| x 6/8
    expected = abs(0.45 - 0.5) * 2 / 8 + abs(0.75 - 5 / 6) * 6 / 8
    assert expected_calibration_error(PROBS, Y, bins=2) == pytest.approx(expected, abs=1e-6)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The matplotlib figures the plot functions save."""
    figures: list[Any] = []
    real = figures_module.save

    def keep(fig: Any, path: Path) -> Path:
        figures.append(fig)
        return real(fig, path)

    for module in (plots, grids):
        monkeypatch.setattr(module, "save", keep)
    return figures


def _texts(fig: Any) -> set[str]:
    return {t.get_text() for ax in fig.axes for t in [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.title]}


def test_pictures_are_matplotlib_with_full_class_names(captured: list[Any], tmp_path: Path) -> None:
    classes = ["Pullover", "Ankle boot", "a very long class name indeed"]
    cm = confusion_matrix(Y, PROBS.argmax(1), 3)
    plots.confusion_matrices(cm, classes, tmp_path / "cm.png")
    assert set(classes) <= _texts(captured[-1]) and len(captured[-1].axes) >= 2  # raw, normalised (+ bars)
    plots.reliability_diagram(PROBS, Y, tmp_path / "rel.png")
    plots.compare_scores({"this model": 0.8, "scratch baseline": 0.7}, tmp_path / "bars.png")
    assert {"this model", "scratch baseline"} <= _texts(captured[-1])
    views = np.random.default_rng(0).integers(0, 255, (2, 3, 1, 8, 8), dtype=np.uint8)
    grids.view_grid(views, tmp_path / "views.png", row_labels=classes[:2])
    table = pd.DataFrame({"mode": ["full", "full", "scratch", "scratch"], "train_labels": [10, 100, 10, 100],
                          "mean": [0.7, 0.9, 0.5, 0.85], "std": [0.01, 0.02, 0.03, 0.01]})
    plots.label_efficiency_chart(table, tmp_path / "eff.png", "title")
    for name in ("cm", "rel", "bars", "views", "eff"):
        with Image.open(tmp_path / f"{name}.png") as im:
            assert im.format == "PNG" and im.width > 200
    assert len(captured) == 5


def test_per_class_accuracy_and_the_most_confident_mistakes(captured: list[Any], tmp_path: Path) -> None:
    from pipeline_tasks.data.cache import save_split
    from pipeline_tasks.evaluation.evaluate import _worst

    pred = PROBS.argmax(1)  # right on 6 of 8; wrong on image 1 (0 -> 1, 0.5) and image 5 (2 -> 0, 0.6)
    plots.per_class_accuracy(Y, {"this model": pred, "scratch": np.zeros_like(Y)}, ["a", "b", "c"],
                             tmp_path / "per_class.png")
    heights = [round(p.get_height(), 4) for p in captured[-1].axes[0].patches]
    assert heights == [round(v, 4) for v in [2 / 3, 1.0, 2 / 3, 1.0, 0.0, 0.0]]  # recall per class, per model
    images = np.arange(8, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 4, 4), np.uint8)
    save_split(tmp_path, "test", images, Y)
    _worst(tmp_path, PROBS, Y, ["a", "b", "c"], tmp_path / "worst.png")
    shown = [ax for ax in captured[-1].axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["c -> a (0.60)", "a -> b (0.50)"]  # most confident first
    assert [int(ax.images[0].get_array()[0, 0]) for ax in shown] == [5, 1]  # and the right pictures


def test_validation_curves_share_one_chart(captured: list[Any], tmp_path: Path) -> None:
    plots.validation_curves({"full (this model)": [(10, 0.5), (20, 0.8)], "scratch": [(10, 0.3), (20, 0.6)]},
                            tmp_path / "curves.png")
    (ax,) = captured[-1].axes
    assert [line.get_label() for line in ax.lines] == ["full (this model)", "scratch"]
    assert list(ax.lines[1].get_ydata()) == [0.3, 0.6]


def test_the_contact_sheet_shows_every_image_under_its_title(captured: list[Any], tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, (13, 3, 8, 8), dtype=np.uint8)
    titles = [f"#{i + 1} (cluster of {20 - i})" for i in range(13)]
    grids.suggestion_sheet(images, titles, tmp_path / "sheet.png")
    shown = [ax for ax in captured[-1].axes if ax.images]
    assert len(shown) == 13 and [ax.get_title() for ax in shown] == titles  # 2 rows of 10, in rank order
    with Image.open(tmp_path / "sheet.png") as im:
        assert im.format == "PNG" and im.width > 200
