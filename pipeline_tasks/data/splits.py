"""Stratified train/val/test splits that keep every group of near copies in one split."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline_tasks.config import PreprocessConfig
from pipeline_tasks.data.nearcopy import duplicate_groups

SPLITS = ("train", "val", "test")


def split_manifest(
    manifest: pd.DataFrame, cfg: PreprocessConfig, limit_per_class: int | None = None
) -> pd.DataFrame:
    """Add a ``split`` column, stratified by label and seeded, that keeps every duplicate
    group in one split: no test image has a copy (exact or near) in training.

    Groups are drawn in random order; each fills its label's test quota, then val, then train.
    Every class gets at least one test and one val image when it has 3 or more.
    """
    rng = np.random.default_rng(cfg.seed)
    frame = manifest.sort_values("path").reset_index(drop=True)
    if limit_per_class is not None:
        order = frame.assign(_r=rng.random(len(frame))).sort_values("_r")
        frame = order.groupby("label").head(limit_per_class).drop(columns="_r").sort_values("path")
        frame = frame.reset_index(drop=True)
    group = duplicate_groups(frame)
    sizes = frame.groupby("label").size()
    quota = {lab: (max(1, round(n * cfg.test_fraction)) if n >= 3 else 0,
                   max(1, round(n * cfg.val_fraction)) if n >= 3 else 0) for lab, n in sizes.items()}
    taken = {lab: [0, 0] for lab in quota}
    split = np.empty(len(frame), dtype=object)
    labels = frame["label"].to_numpy()
    members = pd.Series(np.arange(len(frame))).groupby(group).apply(list)
    for g in rng.permutation(members.index.to_numpy()):
        rows = members[g]
        lab = labels[rows[0]]
        for k, name in enumerate(("test", "val")):
            if taken[lab][k] < quota[lab][k]:
                taken[lab][k] += len(rows)
                split[rows] = name
                break
        else:
            split[rows] = "train"
    return frame.assign(split=split).sort_values(["split", "label", "path"]).reset_index(drop=True)


def test_fingerprint(splits: pd.DataFrame) -> str:
    """Identifies the test split by content: scores are comparable only on equal fingerprints."""
    shas = sorted(splits.loc[splits["split"] == "test", "sha256"])
    return hashlib.sha256("\n".join(shas).encode()).hexdigest()
