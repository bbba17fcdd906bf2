"""The charts a run logs, drawn by matplotlib (its object API: no pyplot state, no display);
the image grids are in ``grids``.

Every function writes one PNG and returns its path; class names are shown in full.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline_tasks.evaluation.figures import figure, save

if TYPE_CHECKING:
    import pandas as pd

def confusion_matrices(cm: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Counts (left) and the share of each true class (right, rows sum to 1), ``cm``
    ``[K, K]`` with rows = true class, columns = prediction."""
    from sklearn.metrics import ConfusionMatrixDisplay  # noqa: PLC0415

    k = len(classes)
    side = max(4.5, 0.55 * k + 2.5)
    fig, (raw, share) = figure(2 * side, side, ncols=2)
    rows = cm.sum(1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    panels = ((raw, cm, "d", "images"), (share, normalised, ".2f", "share of the true class"))
    for ax, values, fmt, title in panels:
        ConfusionMatrixDisplay(values, display_labels=list(classes)).plot(
            ax=ax, values_format=fmt, cmap="Blues", colorbar=True, xticks_rotation=45,
            include_values=k <= 20)
        ax.set_title(f"confusion matrix: {title}")
    return save(fig, path)


def reliability_diagram(probs: np.ndarray, y_true: np.ndarray, path: Path, bins: int = 15) -> Path:
    """Accuracy against confidence in equal-width bins (bars), the diagonal of perfect
    calibration, and how many images fall in each bin (``probs`` ``[N, K]``)."""
    conf, correct = probs.max(1), probs.argmax(1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    accuracy = np.divide(np.bincount(which, correct, bins), count, out=np.zeros(bins), where=count > 0)
    fig, (ax,) = figure(5.5, 5)
    centres = (edges[:-1] + edges[1:]) / 2
    ax.bar(centres, accuracy, width=1 / bins, edgecolor="black", label="accuracy in the bin")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for x, n in zip(centres, count, strict=True):
        if n:
            ax.annotate(str(n), (x, 0.02), ha="center", fontsize=7, rotation=90)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class probability)", ylabel="accuracy",
           title="reliability diagram (numbers: images per bin)")
    ax.legend(loc="upper left")
    return save(fig, path)


def compare_scores(scores: Mapping[str, float], path: Path, metric: str = "test accuracy") -> Path:
    """One bar per model (this run's model, its baselines), the value written on each."""
    fig, (ax,) = figure(max(5.0, 1.3 * len(scores) + 2), 4)
    names, values = list(scores), [scores[n] for n in scores]
    bars = ax.bar(names, values, color=["tab:green", *["tab:grey"] * (len(names) - 1)])
    ax.bar_label(bars, fmt="%.3f")
    ax.set(ylim=(0, 1.05), ylabel=metric, title=f"{metric}: this run's model against its baselines")
    return save(fig, path)


def label_efficiency_chart(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Test accuracy against the number of training labels, one line per model, error bars
    = std over seeds; ``table`` has columns ``mode``, ``train_labels``, ``mean``, ``std``."""
    fig, (ax,) = figure(7, 4.5)
    for mode, rows in table.groupby("mode", sort=True):
        rows = rows.sort_values("train_labels")
        ax.errorbar(rows["train_labels"], rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3,
                    label=str(mode))
    ax.set_xscale("log")
    ticks = sorted(int(n) for n in table["train_labels"].unique())
    ax.set_xticks(ticks, [f"{n:,}" for n in ticks])  # the budgets measured, not powers of ten
    ax.minorticks_off()
    ax.set(xlabel="training labels", ylabel="test accuracy (mean over seeds)")
    ax.set_title(textwrap.fill(title, 80), fontsize=10)  # the data's description, often long
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def validation_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> Path:
    """Validation accuracy against fine-tuning step, one line per model (``curves``: name ->
    ``[(step, accuracy), ...]``), so the pretrained model and its baselines share one chart."""
    fig, (ax,) = figure(7, 4.5)
    for name, points in curves.items():
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker=".", label=name)
    ax.set(xlabel="fine-tuning step", ylabel="validation accuracy", ylim=(0, 1.02),
           title="validation accuracy while fine-tuning (the best check is kept)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def per_class_accuracy(y_true: np.ndarray, predictions: Mapping[str, np.ndarray], classes: Sequence[str],
                       path: Path) -> Path:
    """Per class, the share of its test images each model gets right (recall, scikit-learn),
    grouped bars: ``predictions`` name -> predicted class indices ``[N]``."""
    from sklearn.metrics import recall_score  # noqa: PLC0415

    k, n = len(classes), max(1, len(predictions))
    fig, (ax,) = figure(max(6.0, 0.5 * k * n + 2), 4.5)
    width = 0.8 / n
    for i, (name, pred) in enumerate(predictions.items()):
        recall = recall_score(y_true, pred, labels=list(range(k)), average=None, zero_division=0)
        ax.bar(np.arange(k) + (i - (n - 1) / 2) * width, recall, width, label=name)
    ax.set_xticks(np.arange(k), list(classes), rotation=45 if k > 10 else 0)
    ax.set(ylim=(0, 1.05), ylabel="accuracy within the class", title="per-class test accuracy")
    ax.legend()
    return save(fig, path)
