"""Label-efficiency sweeps: fine-tuning modes x label fractions x seeds on one encoder.

Every row is a real ``finetune_classifier`` run scored on the test split, so a sweep answers
the product's question with the product's code: how much does pretraining buy at each label
budget, against the same network trained from scratch with the same labels and steps?
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from pipeline_tasks.config import FinetuneConfig
from pipeline_tasks.evaluation.evaluate import score
from pipeline_tasks.finetune.train import finetune_classifier

MODES = ("linear", "full", "scratch")


def label_sweep(
    preprocessed_dir: str | Path, encoder_path: str | Path, classes: tuple[str, ...], cfg: FinetuneConfig,
    fractions: Sequence[float], seeds: Sequence[int], modes: Sequence[str] = MODES,
    out_dir: str | Path | None = None, on_row: Callable[[dict[str, object]], None] = lambda row: None,
    epochs: dict[float, int] | None = None,
) -> pd.DataFrame:
    """One row per (fraction, seed, mode): ``labels_used``, ``train_labels``, ``steps``,
    ``val_accuracy`` and ``test_accuracy``. ``epochs`` overrides ``cfg.epochs`` per fraction
    (a CPU cannot afford 30 epochs of every label); ``on_row`` sees each row as it lands."""
    out = Path(out_dir) if out_dir else Path(preprocessed_dir) / "sweep"
    rows = []
    for fraction in fractions:
        for seed in seeds:
            run_cfg = cfg.model_copy(update={"label_fraction": fraction, "seed": seed,
                                             "epochs": (epochs or {}).get(fraction, cfg.epochs)})
            for mode in modes:
                rec = finetune_classifier(preprocessed_dir, encoder_path, classes, run_cfg, out,
                                          mode=mode, out_name=f"{mode}.pt")
                probs, y, _ = score(preprocessed_dir, rec.classifier_path, 512)
                row = {"mode": mode, "fraction": fraction, "seed": seed, "labels_used": rec.labels_used,
                       "train_labels": rec.n_labeled, "steps": rec.steps,
                       "val_accuracy": rec.best_val_accuracy,
                       "test_accuracy": float((probs.argmax(1) == y).mean())}
                on_row(row)
                rows.append(row)
    return pd.DataFrame(rows)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (fraction, mode): mean and std of test accuracy over seeds, and the lift over
    scratch in points (difference of the means)."""
    table = rows.groupby(["fraction", "mode"], sort=True)["test_accuracy"].agg(["mean", "std", "count"])
    table = table.reset_index()
    scratch = table[table["mode"] == "scratch"].set_index("fraction")["mean"]
    table["lift_points"] = (table["mean"] - table["fraction"].map(scratch)) * 100
    labels = rows.groupby("fraction")["train_labels"].first()
    table.insert(1, "train_labels", table["fraction"].map(labels))
    return table
