"""Label-efficiency sweeps: label budgets x seeds x models, on one pretrained encoder.

Every row is the product's own code scored on the test split, so a sweep answers the product's
question with the product: what do raw pixels, the network from scratch, the pretrained encoder
(a linear probe, full fine-tuning) and the pool stage on top of either buy at each label budget?
Models (``MODES``):

- ``pixels``: the better of a logistic regression and a k-NN on raw pixels (chosen on val);
- ``linear``, ``full``, ``scratch``: ``finetune_classifier`` in that mode;
- ``full+pool``, ``scratch+pool``: the pool stage (``pool.method``) from that classifier.

Every model of a (budget, seed) gets the same labels, seed and step budget; all selection is
on the validation labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline_tasks.config import FinetuneConfig, PoolConfig
from pipeline_tasks.data.cache import load_split_labels, open_images
from pipeline_tasks.evaluation.evaluate import score
from pipeline_tasks.evaluation.references import Split, best_of, reference_points
from pipeline_tasks.finetune.pool import learn_from_pool
from pipeline_tasks.finetune.subsets import (
    LABELS,
    labeled_subset,
    load_label_budget,
    save_label_budget,
    stratified_subset,
)
from pipeline_tasks.finetune.train import finetune_classifier

MODES = ("pixels", "linear", "full", "scratch", "full+pool", "scratch+pool")


@dataclass(frozen=True)
class Sweep:
    """What every row shares: the cache, the encoder, the class names and the recipes."""

    preprocessed_dir: Path
    encoder_path: Path
    classes: tuple[str, ...]
    finetune: FinetuneConfig
    pool: PoolConfig
    out_dir: Path


def budget_config(cfg: FinetuneConfig, budget: float, seed: int, epochs: int | None = None) -> FinetuneConfig:
    """``budget``: labels per class when a whole number above 1 (10, 100), else a fraction."""
    update: dict[str, Any] = {"seed": seed, "epochs": epochs or cfg.epochs}
    if budget > 1 and float(budget).is_integer():
        update["labels_per_class"] = int(budget)
    else:
        update.update(label_fraction=float(budget), labels_per_class=None)
    return cfg.model_copy(update=update)


def _test_accuracy(sweep: Sweep, classifier: Path) -> float:
    probs, y, _ = score(sweep.preprocessed_dir, classifier, 512)
    return float((probs.argmax(1) == y).mean())


def _pixels(sweep: Sweep, labels_path: Path) -> tuple[float, float]:
    """``(val, test)`` accuracy of the better pixel model, fitted on the run's labels."""
    train_idx, val_idx = load_label_budget(labels_path)
    splits = []
    for name, idx in (("train", train_idx), ("val", val_idx), ("test", None)):
        pre = sweep.preprocessed_dir
        images, labels = open_images(pre, name), load_split_labels(pre, name)
        rows = np.arange(len(labels)) if idx is None else idx.numpy()
        splits.append(Split(np.array(images[rows]).reshape(len(rows), -1) / 255.0, labels[rows]))
    best = best_of(reference_points((splits[0], splits[1], splits[2]), None), "pixels")
    assert best is not None
    return best.val_accuracy, best.test_accuracy


def _one(sweep: Sweep, cfg: FinetuneConfig, mode: str, out: Path, trained: dict[str, Any]) -> dict[str, Any]:
    """Train and score one model of one (budget, seed); ``trained`` holds the classifiers of
    this (budget, seed) so far, for the pool stage to start from."""
    if mode == "pixels":
        val, test = _pixels(sweep, out / LABELS)
        return {"val_accuracy": val, "test_accuracy": test, "steps": 0}
    if mode.endswith("+pool"):
        base = trained[mode.removesuffix("+pool")]
        pool = sweep.pool.model_copy(update={"seed": cfg.seed})
        pooled = learn_from_pool(sweep.preprocessed_dir, base.classifier_path, pool, out / LABELS,
                                 out / f"{mode}.pt", cfg.augment)
        return {"val_accuracy": pooled.best_val_accuracy, "steps": pooled.steps,
                "test_accuracy": _test_accuracy(sweep, Path(pooled.classifier_path))}
    rec = finetune_classifier(sweep.preprocessed_dir, sweep.encoder_path, sweep.classes, cfg, out, mode=mode,
                              out_name=f"{mode}.pt")
    trained[mode] = rec
    return {"val_accuracy": rec.best_val_accuracy, "steps": rec.steps,
            "test_accuracy": _test_accuracy(sweep, Path(rec.classifier_path))}


def label_sweep(sweep: Sweep, budgets: Sequence[float], seeds: Sequence[int], modes: Sequence[str] = MODES,
                on_row: Callable[[dict[str, Any]], None] = lambda row: None,
                epochs: dict[float, int] | None = None) -> pd.DataFrame:
    """One row per (budget, seed, mode): ``train_labels``, ``val_labels``, ``labels_used``, ``steps``,
    ``val_accuracy``, ``test_accuracy`` and ``seconds``. ``epochs`` overrides
    ``finetune.epochs`` per budget. Base modes of ``+pool`` rows run first."""
    order = [m for m in MODES if m in modes]
    needed = [m for m in ("full", "scratch") if f"{m}+pool" in order and m not in order]
    rows = []
    for budget in budgets:
        for seed in seeds:
            cfg = budget_config(sweep.finetune, budget, seed, (epochs or {}).get(budget))
            out, trained = sweep.out_dir / f"{budget}-{seed}", dict[str, Any]()
            n_train, n_val = _label_budget(sweep, cfg, out)
            for mode in [*needed, *order]:
                start = time.perf_counter()
                found = _one(sweep, cfg, mode, out, trained)
                if mode not in needed:
                    row = {"mode": mode, "budget": budget, "seed": seed, "train_labels": n_train,
                           "val_labels": n_val, "labels_used": n_train + n_val, **found,
                           "seconds": round(time.perf_counter() - start, 1)}
                    on_row(row)
                    rows.append(row)
    return pd.DataFrame(rows)


def _label_budget(sweep: Sweep, cfg: FinetuneConfig, out: Path) -> tuple[int, int]:
    """Write the (budget, seed)'s labels (what finetune_classifier will draw) to ``out``."""
    train_y = torch.from_numpy(load_split_labels(sweep.preprocessed_dir, "train"))
    val_y = torch.from_numpy(load_split_labels(sweep.preprocessed_dir, "val"))
    train = labeled_subset(train_y, cfg.label_fraction, cfg.seed, cfg.labels_per_class)
    val = stratified_subset(val_y, cfg.seed, per_class=cfg.val_per_class)
    out.mkdir(parents=True, exist_ok=True)
    save_label_budget(out / LABELS, train, val)
    return len(train), len(val)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (budget, mode): mean and std of test accuracy over seeds, the labels used (training
    and validation) and pretraining's lift in points (difference of the means) against the same
    route from scratch: ``scratch + pool`` for a mode with the pool stage, ``scratch`` for one
    without (NaN when that baseline was not run)."""
    table = rows.groupby(["budget", "mode"], sort=True)["test_accuracy"].agg(["mean", "std", "count"])
    table = table.reset_index()
    means = table.set_index(["budget", "mode"])["mean"]
    baseline = table["mode"].map(lambda m: "scratch+pool" if m.endswith("+pool") else "scratch")
    table["pretraining_lift_points"] = [
        (mean - means.get((budget, base), float("nan"))) * 100
        for mean, budget, base in zip(table["mean"], table["budget"], baseline, strict=True)]
    for column in ("val_labels", "train_labels"):
        if column in rows:
            table.insert(1, column, table["budget"].map(rows.groupby("budget")[column].max()))
    return table
