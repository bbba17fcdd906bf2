"""Held-out evaluation: accuracy, macro F1, calibration, a confusion-matrix plot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline_tasks.config import EvaluateConfig
from pipeline_tasks.data.cache import load_split
from pipeline_tasks.evaluation.metrics import confusion_matrix, expected_calibration_error, macro_f1
from pipeline_tasks.evaluation.plots import render_confusion
from pipeline_tasks.models.classifier import load_classifier
from pipeline_tasks.models.device import resolve_device
from pipeline_tasks.models.inference import predict_logits


@dataclass(frozen=True)
class EvaluateRecord:
    metrics_path: str
    confusion_png: str
    test_accuracy: float
    test_macro_f1: float
    scratch_test_accuracy: float | None = None  # the from-scratch baseline, when trained
    lift_points: float | None = None  # (test_accuracy - scratch_test_accuracy) * 100










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
