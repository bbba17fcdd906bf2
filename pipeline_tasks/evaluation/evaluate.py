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
from pipeline_tasks.evaluation.grids import worst_misclassified
from pipeline_tasks.evaluation.metrics import classification_metrics, confusion_matrix
from pipeline_tasks.evaluation.plots import (
    compare_scores,
    confusion_matrices,
    per_class_accuracy,
    reliability_diagram,
)
from pipeline_tasks.evaluation.references import Chunks, Split, best_of, reference_points
from pipeline_tasks.finetune.subsets import load_label_budget
from pipeline_tasks.models.classifier import load_classifier
from pipeline_tasks.models.inference import Images, embed, predict_logits
from pipeline_tasks.models.weights import load_encoder
from pipeline_tasks.runtime import Runtime, resolve_runtime


@dataclass(frozen=True)
class EvaluateRecord:
    metrics_path: str
    confusion_png: str
    test_accuracy: float
    test_macro_f1: float
    pretraining_lift_points: float | None = None  # against the model without pretraining, in points
    runtime: dict[str, str] = field(default_factory=dict)  # device, device_name, precision


def score(preprocessed_dir: str | Path, classifier_path: str | Path, batch_size: int,
          runtime: Runtime | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(probabilities [N, K], true labels [N], class names)`` on the test split, streamed from
    the memory-mapped cache ``batch_size`` images at a time, on ``runtime`` (default: the GPU
    when there is one, quietly the CPU otherwise). ``ValueError`` for a model whose class names
    are not the data's (``classes.json``): its predictions would be read as other classes."""
    model, classes = load_classifier(classifier_path)
    names = Path(preprocessed_dir) / "classes.json"
    data_classes = json.loads(names.read_text()) if names.is_file() else classes
    if classes != data_classes:
        raise ValueError(f"{classifier_path}: a model of classes {classes}, but the data's are "
                         f"{data_classes}; it was trained on other data: train it again on this data "
                         "(pretrainflow run)")
    x, y = open_images(preprocessed_dir, "test"), load_split_labels(preprocessed_dir, "test")
    if len(x) == 0:
        raise ValueError("the test split is empty: add images or raise preprocess.test_fraction")
    rt = runtime or resolve_runtime("cpu" if not torch.cuda.is_available() else "auto", "auto", "evaluate")
    logits = predict_logits(model.to(rt.device), x, rt.device, batch_size, rt.dtype)
    return torch.softmax(logits, 1).numpy(), y, classes


PIXEL_CHUNK_BYTES = 64 << 20  # of float64 test pixels the pixel references hold at once


def lift_names(baselines: dict[str, Path]) -> dict[str, str | None]:
    """Baseline name -> the prefix of the lift metrics (points and McNemar p-value) against it,
    each lift named for the one thing the model has and the baseline lacks (None: the baseline
    differs in more than one thing; its accuracy is reported, no lift):

    - ``scratch_pool`` (the same network from scratch, through the same pool stage): the
      ``pretraining_lift``;
    - ``pretrained`` (the fine-tuned model before the pool stage): the ``pool_lift``;
    - ``scratch`` (from scratch on the labels alone): the ``pipeline_lift`` when the pool stage
      ran, else the ``pretraining_lift`` (then the model differs from it in pretraining only);
    - ``init_pool``, or ``init`` without a pool stage (the starting weights fine-tuned without
      self-supervised pretraining): the ``lift_over_init``.
    """
    pooled = "pretrained" in baselines
    return {"scratch_pool": "pretraining_lift", "pretrained": "pool_lift",
            "scratch": "pipeline_lift" if pooled else "pretraining_lift",
            "init_pool": "lift_over_init", "init": None if pooled else "lift_over_init"}


def evaluate_classifier(
    preprocessed_dir: str | Path, classifier_path: str | Path, cfg: EvaluateConfig,
    metrics_path: str | Path, plots_dir: str | Path, baselines: dict[str, Path] | None = None,
    extra: dict[str, float] | None = None, references: tuple[Path, Path] | None = None,
) -> EvaluateRecord:
    """Score the classifier and the ``baselines`` (``lift_names`` says which) on the test split;
    each lift comes with the p-value of McNemar's test on the same images. With ``references``
    (the encoder and fine-tuning's ``labels.npz``), the reference points too
    (``evaluation.references``). Writes ``metrics_path`` (DVC metrics, ``extra`` merged in) and
    ``plots_dir/`` (``confusion_matrix.png``, ``reliability.png``, ``baselines.png``,
    ``per_class_accuracy.png``, ``worst_misclassified.png``, and ``predictions.csv``: per test
    image its sha256, true and predicted class, and each baseline's)."""
    runtime = resolve_runtime(cfg.device, cfg.precision, "evaluate")
    probs, y_true, classes = score(preprocessed_dir, classifier_path, cfg.batch_size, runtime)
    y_pred = probs.argmax(1)
    metrics: dict[str, float] = {**classification_metrics(probs, y_true), "test_images": int(len(y_true))}
    predictions = pd.DataFrame({"sha256": _test_shas(preprocessed_dir, len(y_true)),
                                "actual": [classes[i] for i in y_true],
                                "predicted": [classes[i] for i in y_pred]})
    per_model = {"this model": y_pred}
    lifts = lift_names(baselines or {})
    for name, path in (baselines or {}).items():
        base = score(preprocessed_dir, path, cfg.batch_size, runtime)[0].argmax(1)
        paired = mcnemar(y_pred == y_true, base == y_true)
        metrics[f"{name}_test_accuracy"] = paired.score_b
        if lifts[name] is not None:
            metrics.update({f"{lifts[name]}_points": round(paired.difference_points, 2),
                            f"{lifts[name]}_p_value": paired.p_value})
        predictions[f"{name}_predicted"] = [classes[i] for i in base]
        per_model[name] = base
    if references is not None:
        metrics.update(reference_metrics(Path(preprocessed_dir), *references, runtime))
    metrics.update(extra or {})
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
    png = _plots(Path(plots_dir), probs, y_true, classes, metrics, per_model, Path(preprocessed_dir))
    predictions.to_csv(Path(plots_dir) / "predictions.csv", index=False)
    return EvaluateRecord(str(metrics_path), str(png), metrics["test_accuracy"], metrics["test_macro_f1"],
                          metrics.get("pretraining_lift_points"), runtime.describe())


def reference_metrics(preprocessed_dir: Path, encoder_path: Path, labels_path: Path,
                      runtime: Runtime) -> dict[str, float]:
    """The reference points' test accuracies with the run's labels, the best pixel and encoder
    model (chosen on validation), and how many points the encoder beats pixels by. The test
    split's pixels are read a chunk at a time (``PIXEL_CHUNK_BYTES``), its embeddings once."""
    train_idx, val_idx = load_label_budget(labels_path)
    encoder = load_encoder(encoder_path).to(runtime.device)

    def features(x: Images) -> np.ndarray:
        return embed(encoder, x, runtime.device, normalize=False, dtype=runtime.dtype).cpu().numpy()

    pixels, embedded = [], []
    for split, idx in (("train", train_idx.numpy()), ("val", val_idx.numpy())):
        x = np.array(open_images(preprocessed_dir, split)[idx])
        y = load_split_labels(preprocessed_dir, split)[idx]
        pixels.append(Split(_flat(x), y))
        embedded.append(Split(features(x), y))
    test, test_y = open_images(preprocessed_dir, "test"), load_split_labels(preprocessed_dir, "test")
    found = reference_points((pixels[0], pixels[1], _pixel_chunks(test, test_y)),
                             (embedded[0], embedded[1], Split(features(test), test_y)))
    out = {f"{r.name}_test_accuracy": r.test_accuracy for r in found}
    best_pixels, best_encoder = best_of(found, "pixels"), best_of(found, "encoder")
    assert best_pixels is not None and best_encoder is not None
    pixel, encoded = best_pixels.test_accuracy, best_encoder.test_accuracy
    out.update(pixels_test_accuracy=pixel, encoder_test_accuracy=encoded,
               encoder_over_pixels_points=round((encoded - pixel) * 100, 2))
    return out


def _flat(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> float64 ``[N, C*H*W]`` in [0, 1]: the pixel references' features."""
    return np.asarray(images).reshape(len(images), -1) / 255.0


def _pixel_chunks(images: np.ndarray, labels: np.ndarray) -> Chunks:
    """The split's pixel features, ``PIXEL_CHUNK_BYTES`` at a time."""
    rows = max(1, PIXEL_CHUNK_BYTES // (8 * int(np.prod(images.shape[1:]))))
    return lambda: (Split(_flat(images[s:s + rows]), labels[s:s + rows]) for s in range(0, len(labels), rows))


def _worst(preprocessed_dir: Path, probs: np.ndarray, y_true: np.ndarray, classes: list[str], path: Path,
           n: int = 16) -> Path:
    """The ``n`` test images the model got wrong with the highest confidence, as a grid."""
    pred, conf = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(pred != y_true)
    rows = wrong[np.argsort(-conf[wrong], kind="stable")][:n]
    test = open_images(preprocessed_dir, "test")
    images = np.stack([test[i] for i in rows]) if len(rows) else np.empty((0, *test.shape[1:]), np.uint8)
    titles = [f"{classes[y_true[i]]} -> {classes[pred[i]]} ({conf[i]:.2f})" for i in rows]
    return worst_misclassified(images, titles, path)


def _test_shas(preprocessed_dir: str | Path, n: int) -> list[str]:
    """The test images' sha256, in cache order (``splits.csv``), or blanks without it."""
    path = Path(preprocessed_dir) / "splits.csv"
    if not path.is_file():
        return [""] * n
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    shas = list(rows.loc[rows["split"] == "test", "sha256"])
    return shas if len(shas) == n else [""] * n


BASELINE_LABELS = {"pretrained_test_accuracy": "pretrained, no pool", "scratch_test_accuracy": "scratch",
                   "scratch_pool_test_accuracy": "scratch + pool",
                   "init_pool_test_accuracy": "starting weights + pool",
                   "init_test_accuracy": "starting weights", "pixels_test_accuracy": "pixels",
                   "encoder_test_accuracy": "frozen encoder"}


def _plots(plots: Path, probs: np.ndarray, y_true: np.ndarray, classes: list[str], metrics: dict[str, float],
           per_model: dict[str, np.ndarray], preprocessed_dir: Path) -> Path:
    png = confusion_matrices(confusion_matrix(y_true, probs.argmax(1), len(classes)), classes,
                             plots / "confusion_matrix.png")
    reliability_diagram(probs, y_true, plots / "reliability.png")
    compare_scores({"this model": metrics["test_accuracy"],
                    **{label: metrics[key] for key, label in BASELINE_LABELS.items() if key in metrics}},
                   plots / "baselines.png")
    per_class_accuracy(y_true, per_model, classes, plots / "per_class_accuracy.png")
    _worst(preprocessed_dir, probs, y_true, classes, plots / "worst_misclassified.png")
    return png
