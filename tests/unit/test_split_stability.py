"""A split is a function of each copy group's own content: adding distinct images never moves
an existing image between splits, small classes included (trust issue: a group lent to a split
its small class lacked went back when images were added, so a trained image became a test
image)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline_tasks.config import PreprocessConfig
from pipeline_tasks.data.datasets import load_mnist_5k
from pipeline_tasks.data.decode import decode
from pipeline_tasks.data.nearcopy import phashes
from pipeline_tasks.data.splits import split_manifest


@pytest.fixture(scope="module")
def digits() -> pd.DataFrame:
    """600 real digits (60 per class) as manifest rows: path, label, sha256 and pHashes."""
    images, labels = load_mnist_5k()
    rows = []
    for i in np.concatenate([np.flatnonzero(labels == c)[:60] for c in range(10)]):
        out = io.BytesIO()
        Image.fromarray(images[i]).save(out, "PNG")
        hashed, flips = phashes(decode(out.getvalue()))
        rows.append({"path": f"{labels[i]}/{i:05d}.png", "label": str(labels[i]),
                     "sha256": hashlib.sha256(out.getvalue()).hexdigest(), "phash": hashed,
                     "phash_flips": flips})
    return pd.DataFrame(rows)


def test_adding_distinct_images_never_moves_an_existing_one(digits: pd.DataFrame) -> None:
    """40 random data sets of small classes (1 to 8 images each, where a rule that tops up a
    split would act), each grown by 1 to 12 new digits, some in new classes."""
    for trial in range(40):
        rng = np.random.default_rng(trial)
        order = digits.sample(frac=1.0, random_state=trial)
        classes = rng.choice(10, size=rng.integers(3, 7), replace=False)
        sizes = {str(c): int(rng.integers(1, 9)) for c in classes}
        before = pd.concat([order[order["label"] == c].head(n) for c, n in sizes.items()])
        unused = order[~order["path"].isin(before["path"])]
        added = unused.sample(n=int(rng.integers(1, 13)), random_state=trial)
        cfg = PreprocessConfig(seed=int(rng.integers(1000)))
        old = split_manifest(before, cfg).set_index("path")["split"]
        new = split_manifest(pd.concat([before, added]), cfg).set_index("path")["split"]
        moved = old[new[old.index] != old]
        assert moved.empty, f"trial {trial}: {moved.to_dict()} moved to {new[moved.index].to_dict()}"
