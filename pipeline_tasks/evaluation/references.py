"""Reference points on every run, with the run's own labels: what raw pixels and the frozen
encoder are worth before any fine-tuning: whether the encoder learned more than the pixels
already hold, said on every run.

- ``pixels``: a logistic regression and a k-NN on the raw pixels (scaled to [0, 1]);
- ``encoder``: a k-NN (cosine) and a linear probe (logistic regression) on its embeddings.

Each is trained on the run's labeled training subset, its one setting (inverse regularisation
``C``, or ``k``) chosen on the run's validation labels, and scored once on the test split, which
may come a chunk at a time (``Chunks``) so that its raw pixels are never all in memory at once.
scikit-learn does the fitting; the module only wires the run's splits to it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

C_GRID = (0.01, 0.1, 1.0, 10.0)
K_GRID = (1, 3, 5, 10, 20)


@dataclass(frozen=True)
class Split:
    """Features ``[N, D]`` (float) and labels ``[N]`` of one split."""

    x: np.ndarray
    y: np.ndarray


Chunks = Callable[[], Iterable[Split]]  # a split read a chunk at a time, from the start at each call


@dataclass(frozen=True)
class Reference:
    name: str  # e.g. "pixels_logreg"
    setting: str  # the chosen C or k
    val_accuracy: float
    test_accuracy: float


def _accuracy(model: object, parts: Iterable[Split]) -> float:
    correct, total = 0, 0
    for part in parts:
        correct += int((model.predict(part.x) == part.y).sum()) if len(part.y) else 0  # type: ignore[attr-defined]
        total += len(part.y)
    return correct / total if total else float("nan")


def _choose(name: str, candidates: list[tuple[str, object]], train: Split, val: Split,
            test: Split | Chunks) -> Reference:
    """Fit each candidate on ``train``, keep the best on ``val`` (the first on ties), score it
    on ``test`` (a ``Split``, or ``Chunks`` of it)."""
    best: tuple[float, str, object] | None = None
    for setting, model in candidates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(train.x, train.y)  # type: ignore[attr-defined]
        score = _accuracy(model, [val])
        if best is None or score > best[0] or np.isnan(best[0]):
            best = (score, setting, model)
    assert best is not None
    parts = [test] if isinstance(test, Split) else test()
    return Reference(name, best[1], best[0], _accuracy(best[2], parts))


def logistic_regression(name: str, train: Split, val: Split, test: Split | Chunks) -> Reference:
    """Multinomial logistic regression on features standardised by the training subset's mean
    and spread, ``C`` chosen on ``val``."""
    models = [(f"C={c}", make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)))
              for c in C_GRID]
    return _choose(name, models, train, val, test)


def knn(name: str, train: Split, val: Split, test: Split | Chunks) -> Reference:
    """Cosine k-NN (distance-weighted votes), ``k`` chosen on ``val`` among those the training
    set allows."""
    ks = [k for k in K_GRID if k <= len(train.y)] or [1]
    models = [(f"k={k}", KNeighborsClassifier(k, weights="distance", metric="cosine")) for k in ks]
    return _choose(name, models, train, val, test)


def reference_points(pixels: tuple[Split, Split, Split | Chunks],
                     embeddings: tuple[Split, Split, Split | Chunks] | None) -> list[Reference]:
    """The four reference points (two without an encoder): ``(train, val, test)`` of raw pixels
    ``[N, C*H*W]`` in [0, 1] and of encoder embeddings ``[N, D]``."""
    found = [logistic_regression("pixels_logreg", *pixels), knn("pixels_knn", *pixels)]
    if embeddings is not None:
        found += [logistic_regression("encoder_linear", *embeddings), knn("encoder_knn", *embeddings)]
    return found


def best_of(references: list[Reference], prefix: str) -> Reference | None:
    """The reference of that family (``pixels`` or ``encoder``) that did best on validation."""
    family = [r for r in references if r.name.startswith(prefix)]
    return max(family, key=lambda r: (r.val_accuracy, -family.index(r))) if family else None
