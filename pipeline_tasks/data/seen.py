"""``seen_images.txt``: every image a model trained on a cache may have seen (its train, val and
pool images), one line each, ``sha256 phash phash_flips`` (``-`` for a hash an image has not).
The preprocess stage writes it; every registered classifier carries it, so that it is never
scored on an image it saw, nor on a near copy of one (``nearcopy.copies_of``). A file of an
older version holds the sha256 alone, and is read as such (exact copies only).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SEEN = "seen_images.txt"
COLUMNS = ["sha256", "phash", "phash_flips"]


def write_seen(path: str | Path, *frames: pd.DataFrame) -> None:
    """The images of ``frames`` (manifest rows: ``sha256``, ``phash``, ``phash_flips`` when
    present), each content once, sorted by sha256."""
    rows = pd.concat([f.reindex(columns=COLUMNS) for f in frames], ignore_index=True).fillna("")
    rows = rows[rows["sha256"].astype(bool)].drop_duplicates("sha256").sort_values("sha256")
    lines = (" ".join(str(v) or "-" for v in row) for row in rows.itertuples(index=False))
    Path(path).write_text("".join(f"{line}\n" for line in lines))


def read_seen(path: str | Path) -> pd.DataFrame:
    """The images ``path`` lists, as ``COLUMNS`` (``""`` where a line has no hash)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        fields = [("" if f == "-" else f) for f in line.split()]
        if fields:
            rows.append((fields + ["", ""])[:3])
    return pd.DataFrame(rows, columns=COLUMNS, dtype=str)
