"""Held-out evaluation: accuracy, macro F1, calibration, a confusion-matrix plot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline_tasks.config import EvaluateConfig
from pipeline_tasks.finetune import load_classifier, predict_logits
from pipeline_tasks.models import resolve_device
from pipeline_tasks.preprocess import load_split


@dataclass(frozen=True)
class EvaluateRecord:
    metrics_path: str
    confusion_png: str
    test_accuracy: float
    test_macro_f1: float
    scratch_test_accuracy: float | None = None  # the from-scratch baseline, when trained
    lift_points: float | None = None  # (test_accuracy - scratch_test_accuracy) * 100


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``[n_classes, n_classes]`` counts; rows are true classes, columns predictions."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of per-class F1 (a class never predicted nor present scores 0)."""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """|confidence - accuracy| averaged over equal-width confidence bins, weighted by count."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - (pred[mask] == y_true[mask]).mean())
    return float(ece)


def render_confusion(cm: np.ndarray, classes: list[str], path: Path, cell: int = 40) -> None:
    """A PNG heat map with counts (PIL only: the stages stay importable on a bare GPU box)."""
    n, margin = len(classes), 60
    img = Image.new("RGB", (margin + n * cell + 10, margin + n * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    peak = max(int(cm.max()), 1)
    draw.text((margin, 5), "confusion matrix (rows: true, cols: predicted)", fill="black")
    for i in range(n):
        draw.text((5, margin + i * cell + cell // 3), classes[i][:8], fill="black")
        draw.text((margin + i * cell + 4, margin - 18), classes[i][:5], fill="black")
        for j in range(n):
            shade = int(255 * (1 - cm[i, j] / peak))
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255),
                           outline="gray")
            draw.text((x0 + 4, y0 + cell // 3), str(int(cm[i, j])),
                      fill="white" if shade < 128 else "black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def score(preprocessed_dir: str | Path, classifier_path: str | Path, batch_size: int,
          device: str = "auto") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(probabilities [N, K], true labels [N], class names)`` on the test split, computed on
    ``device`` (the GPU when there is one)."""
    model, classes = load_classifier(classifier_path)
    x, y = load_split(preprocessed_dir, "test")
    if len(x) == 0:
        raise ValueError("the test split is empty: add images or raise preprocess.test_fraction")
    target = resolve_device(device)
    probs = torch.softmax(predict_logits(model.to(target), x, target, batch_size), 1).numpy()
    return probs, y.numpy(), classes


def evaluate_classifier(
    preprocessed_dir: str | Path, classifier_path: str | Path, cfg: EvaluateConfig,
    metrics_path: str | Path, plots_dir: str | Path, baseline_path: str | Path | None = None,
    extra: dict[str, float] | None = None, init_baseline_path: str | Path | None = None,
) -> EvaluateRecord:
    """Score the classifier, and the baselines given (``baseline_path``: scratch;
    ``init_baseline_path``: fine-tuned from ``pretrain.init`` without pretraining), on the test
    split; writes ``metrics_path`` (DVC metrics, with ``extra`` merged in) and
    ``plots_dir/{confusion_matrix.png, predictions.csv}``."""
    probs, y_true, classes = score(preprocessed_dir, classifier_path, cfg.batch_size, cfg.device)
    y_pred = probs.argmax(1)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    metrics: dict[str, float] = {
        "test_accuracy": float((y_true == y_pred).mean()),
        "test_macro_f1": macro_f1(cm),
        "test_ece": expected_calibration_error(probs, y_true),
        "test_images": int(len(y_true)),
    }
    scratch = lift = None
    for name, path in (("scratch", baseline_path), ("init", init_baseline_path)):
        if path is not None:
            base_probs, _, _ = score(preprocessed_dir, path, cfg.batch_size, cfg.device)
            accuracy = float((base_probs.argmax(1) == y_true).mean())
            gain = round((metrics["test_accuracy"] - accuracy) * 100, 2)
            metrics[f"{name}_test_accuracy"] = accuracy
            metrics["lift_points" if name == "scratch" else "lift_over_init_points"] = gain
            if name == "scratch":
                scratch, lift = accuracy, gain
    metrics.update(extra or {})
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
    plots = Path(plots_dir)
    png = plots / "confusion_matrix.png"
    render_confusion(cm, classes, png)
    rows = "".join(f"{classes[t]},{classes[p]}\n" for t, p in zip(y_true, y_pred, strict=True))
    (plots / "predictions.csv").write_text("actual,predicted\n" + rows)
    return EvaluateRecord(str(metrics_path), str(png), metrics["test_accuracy"], metrics["test_macro_f1"],
                          scratch, lift)
