"""Train/val/test splits that are a function of content: near copies share a split, and adding
or removing images moves no other image between splits.

Each group of copies (``data.nearcopy``: exact or near, transitively) takes a position in
[0, 1), the sha256 of ``preprocess.seed`` and the smallest sha256 among its files; the group is
test below ``test_fraction``, val below ``test_fraction + val_fraction``, train above. A group's
split therefore depends on its own bytes only: an image stays in its split across data
versions, whatever images are added or removed, as long as no new file joins its copy group.
Every class is split in the given fractions in expectation only. No rule can both promise each
class a group in every split and never move an image (a small class's groups would have to
move as it grows), so a split that drew none of a class's groups stays without it: preprocess
refuses a class with no training image and names those without validation or test images
(``classes_without``), and the gate asks for ``validate.min_distinct_per_class`` groups.
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
    return frame.assign(split=split).sort_values(["split", "label", "path"]).reset_index(drop=True)


def classes_without(splits: pd.DataFrame) -> dict[str, list[str]]:
    """``{split: [classes]}``: for each split of ``SPLITS``, the classes of ``splits`` that have
    no image in it (sorted; a small class can draw no group for a split)."""
    classes = set(splits["label"])
    return {name: sorted(classes - set(splits.loc[splits["split"] == name, "label"])) for name in SPLITS}


def split_fingerprint(splits: pd.DataFrame, name: str = "test") -> str:
    """Identifies a split by content and labels: sha256 over its sorted ``sha256:label`` lines.
    Two scores are comparable only on equal fingerprints; relabelling an image changes it."""
    rows = splits.loc[splits["split"] == name, ["sha256", "label"]]
    lines = sorted(f"{sha}:{label}" for sha, label in rows.itertuples(index=False))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
