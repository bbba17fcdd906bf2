"""Train/val/test splits that are a function of content: near copies share a split, and adding
or removing images moves no other image between splits.

Each group of copies (``data.nearcopy``: exact or near, transitively) takes a position in
[0, 1), the sha256 of ``preprocess.seed`` and the smallest sha256 among its files; the group is
test below ``test_fraction``, val below ``test_fraction + val_fraction``, train above. A group's
split therefore depends on its own bytes only: a test image stays a test image across data
versions, as long as no new file joins its copy group. In expectation every class is split in
the given fractions; in a class of 3 or more copy groups a split that drew none borrows one from
the fullest split (the group positioned nearest to its range), so small classes are trained,
selected and scored.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline_tasks.config import PreprocessConfig
from pipeline_tasks.data.nearcopy import groups

SPLITS = ("train", "val", "test")


def position(seed: int, sha256: str) -> float:
    """A stable position in [0, 1) for content ``sha256`` under ``seed``."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _limit(frame: pd.DataFrame, seed: int, per_class: int) -> pd.DataFrame:
    """At most ``per_class`` images per label: those with the lowest positions (stable too)."""
    pos = [position(seed + 1, s or p) for s, p in zip(frame["sha256"], frame["path"], strict=True)]
    order = frame.assign(_pos=pos).sort_values("_pos")
    return order.groupby("label").head(per_class).drop(columns="_pos").sort_values("path", ignore_index=True)


def _lend(split: np.ndarray, labels: np.ndarray, group: np.ndarray, pos: np.ndarray,
          cfg: PreprocessConfig) -> None:
    """Give each class with 3 or more copy groups at least one group in every split: a split
    that drew none takes, from the split with the most groups, the group positioned nearest to
    its own range."""
    tf, vf = cfg.test_fraction, cfg.val_fraction
    centre = {"test": tf / 2, "val": tf + vf / 2, "train": (1 + tf + vf) / 2}
    for lab in np.unique(labels):
        mine = labels == lab
        if len(np.unique(group[mine])) < 3:
            continue
        for name in ("train", "test", "val"):
            held = {s: np.unique(group[mine & (split == s)]) for s in SPLITS}
            if len(held[name]):
                continue
            donor = max(held, key=lambda s: len(held[s]))
            chosen = min(held[donor], key=lambda g: (abs(pos[group == g][0] - centre[name]), g))
            split[group == chosen] = name


def split_manifest(manifest: pd.DataFrame, cfg: PreprocessConfig,
                   limit_per_class: int | None = None) -> pd.DataFrame:
    """Add a ``split`` column (``train``/``val``/``test``) by the module's rule; sorted by
    split, label and path. Needs columns ``path``, ``label``, ``sha256`` and ``phash``."""
    frame = manifest.sort_values("path").reset_index(drop=True)
    if limit_per_class is not None:
        frame = _limit(frame, cfg.seed, limit_per_class)
    group = groups(frame)
    shas = frame["sha256"].where(frame["sha256"].astype(bool), frame["path"]).to_numpy()
    smallest = pd.Series(shas).groupby(group).transform("min").to_numpy()
    pos = np.array([position(cfg.seed, s) for s in smallest])
    split = np.where(pos < cfg.test_fraction, "test",
                     np.where(pos < cfg.test_fraction + cfg.val_fraction, "val", "train")).astype(object)
    _lend(split, frame["label"].to_numpy(), group, pos, cfg)
    return frame.assign(split=split).sort_values(["split", "label", "path"]).reset_index(drop=True)


def split_fingerprint(splits: pd.DataFrame, name: str = "test") -> str:
    """Identifies a split by content and labels: sha256 over its sorted ``sha256:label`` lines.
    Two scores are comparable only on equal fingerprints; relabelling an image changes it."""
    rows = splits.loc[splits["split"] == name, ["sha256", "label"]]
    lines = sorted(f"{sha}:{label}" for sha, label in rows.itertuples(index=False))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
