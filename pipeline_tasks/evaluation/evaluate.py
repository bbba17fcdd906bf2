"""Held-out evaluation: accuracy, macro F1, calibration, the confusion matrices, a reliability
diagram and the model against its baselines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline_tasks.config import EvaluateConfig
from pipeline_tasks.data.cache import load_split_labels, open_images
from pipeline_tasks.evaluation.compare import mcnemar
from pipeline_tasks.evaluation.metrics import classification_metrics, confusion_matrix
from pipeline_tasks.evaluation.plots import compare_scores, confusion_matrices, reliability_diagram
from pipeline_tasks.models.classifier import load_classifier
from pipeline_tasks.models.inference import predict_logits
from pipeline_tasks.runtime import Runtime, resolve_runtime


@dataclass(frozen=True)
class EvaluateRecord:
    metrics_path: str
    confusion_png: str
    test_accuracy: float
    test_macro_f1: float
    scratch_test_accuracy: float | None = None  # the from-scratch baseline, when trained
    lift_points: float | None = None  # (test_accuracy - scratch_test_accuracy) * 100
    runtime: dict[str, str] = field(default_factory=dict)  # device, device_name, precision


def score(preprocessed_dir: str | Path, classifier_path: str | Path, batch_size: int,
          runtime: Runtime | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(probabilities [N, K], true labels [N], class names)`` on the test split, streamed from
    the memory-mapped cache ``batch_size`` images at a time, on ``runtime`` (default: the GPU
    when there is one, quietly the CPU otherwise)."""
    model, classes = load_classifier(classifier_path)
    x, y = open_images(preprocessed_dir, "test"), load_split_labels(preprocessed_dir, "test")
    if len(x) == 0:
        raise ValueError("the test split is empty: add images or raise preprocess.test_fraction")
    rt = runtime or resolve_runtime("cpu" if not torch.cuda.is_available() else "auto", "auto", "evaluate")
    logits = predict_logits(model.to(rt.device), x, rt.device, batch_size, rt.dtype)
    return torch.softmax(logits, 1).numpy(), y, classes


def evaluate_classifier(
    preprocessed_dir: str | Path, classifier_path: str | Path, cfg: EvaluateConfig,
    metrics_path: str | Path, plots_dir: str | Path, baseline_path: str | Path | None = None,
    extra: dict[str, float] | None = None, init_baseline_path: str | Path | None = None,
) -> EvaluateRecord:
    """Score the classifier, and the baselines given (``baseline_path``: scratch;
    ``init_baseline_path``: fine-tuned from ``pretrain.init`` without pretraining), on the test
    split; each baseline's lift comes with the p-value of McNemar's test on the same images.
    Writes ``metrics_path`` (DVC metrics, with ``extra`` merged in) and ``plots_dir/``
    (``confusion_matrix.png``, ``reliability.png``, ``baselines.png``, and ``predictions.csv``:
    one row per test image with its sha256, true and predicted class, and each baseline's)."""
    runtime = resolve_runtime(cfg.device, cfg.precision, "evaluate")
    probs, y_true, classes = score(preprocessed_dir, classifier_path, cfg.batch_size, runtime)
    y_pred = probs.argmax(1)
    metrics: dict[str, float] = {**classification_metrics(probs, y_true), "test_images": int(len(y_true))}
    predictions = pd.DataFrame({"sha256": _test_shas(preprocessed_dir, len(y_true)),
                                "actual": [classes[i] for i in y_true],
                                "predicted": [classes[i] for i in y_pred]})
    for name, path in (("scratch", baseline_path), ("init", init_baseline_path)):
        if path is not None:
            base = score(preprocessed_dir, path, cfg.batch_size, runtime)[0].argmax(1)
            paired = mcnemar(y_pred == y_true, base == y_true)
            gain = "lift_points" if name == "scratch" else "lift_over_init_points"
            metrics.update({f"{name}_test_accuracy": paired.score_b, gain: round(paired.difference_points, 2),
                            f"{gain.removesuffix('_points')}_p_value": paired.p_value})
            predictions[f"{name}_predicted"] = [classes[i] for i in base]
    metrics.update(extra or {})
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
    png = _plots(Path(plots_dir), probs, y_true, classes, metrics)
    predictions.to_csv(Path(plots_dir) / "predictions.csv", index=False)
    return EvaluateRecord(str(metrics_path), str(png), metrics["test_accuracy"], metrics["test_macro_f1"],
                          metrics.get("scratch_test_accuracy"), metrics.get("lift_points"),
                          runtime.describe())


def _test_shas(preprocessed_dir: str | Path, n: int) -> list[str]:
    """The test images' sha256, in cache order (``splits.csv``), or blanks without it."""
    path = Path(preprocessed_dir) / "splits.csv"
    if not path.is_file():
        return [""] * n
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    shas = list(rows.loc[rows["split"] == "test", "sha256"])
    return shas if len(shas) == n else [""] * n


def _plots(plots: Path, probs: np.ndarray, y_true: np.ndarray, classes: list[str],
           metrics: dict[str, float]) -> Path:
    png = confusion_matrices(confusion_matrix(y_true, probs.argmax(1), len(classes)), classes,
                             plots / "confusion_matrix.png")
    reliability_diagram(probs, y_true, plots / "reliability.png")
    compare_scores({"this model": metrics["test_accuracy"],
                    **{f"{n} baseline": metrics[f"{n}_test_accuracy"] for n in ("scratch", "init")
                       if f"{n}_test_accuracy" in metrics}}, plots / "baselines.png")
    return png
