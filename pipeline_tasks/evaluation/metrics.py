"""Classification metrics from predictions: scikit-learn for accuracy, macro F1 and the
confusion matrix; torchmetrics for the expected calibration error, which scikit-learn only
offers as a binary reliability curve."""

from __future__ import annotations

import numpy as np
import torch
from sklearn import metrics as skm
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 15  # equal-width confidence bins, as Guo et al. 2017 (On Calibration of Modern Neural Networks)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``[n_classes, n_classes]`` counts; rows are true classes, columns predictions."""
    return np.asarray(skm.confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over ``n_classes`` (a class neither present nor
    predicted scores 0)."""
    return float(skm.f1_score(y_true, y_pred, labels=np.arange(n_classes), average="macro",
                              zero_division=0))


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> float:
    """|confidence - accuracy| over equal-width confidence bins, weighted by the share of
    images in each bin (``probs``: ``[N, K]`` rows summing to 1; ``y_true``: ``[N]``)."""
    return float(multiclass_calibration_error(torch.from_numpy(np.asarray(probs, np.float32)),
                                              torch.from_numpy(np.asarray(y_true, np.int64)),
                                              num_classes=probs.shape[1], n_bins=bins, norm="l1"))


def classification_metrics(probs: np.ndarray, y_true: np.ndarray, prefix: str = "test_") -> dict[str, float]:
    """Accuracy, macro F1 and calibration error of ``probs`` ``[N, K]`` against ``y_true``."""
    y_pred = probs.argmax(1)
    return {f"{prefix}accuracy": float(skm.accuracy_score(y_true, y_pred)),
            f"{prefix}macro_f1": macro_f1(y_true, y_pred, probs.shape[1]),
            f"{prefix}ece": expected_calibration_error(probs, y_true)}
