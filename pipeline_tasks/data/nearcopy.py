"""Near copies: the difference hash of an image and the one rule that says when two images
are copies of each other (exact: same sha256; near: hashes within ``NEAR_BITS``).

The gate, the splits and the pool all use this module.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image


def dhash(im: Image.Image, size: int = 16) -> str:
    """256-bit difference hash (hex) of a Lanczos thumbnail. Equal hashes mark near-duplicates
    (re-encoded copies); 16x16 rather than the usual 8x8 because small images such as digits
    collide at 8x8 (362 false pairs in mnist-5k at 8x8 bilinear, 2 at 16x16 Lanczos)."""
    small = np.asarray(im.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), np.int16)
    return np.packbits(small[:, 1:] > small[:, :-1]).tobytes().hex()


def duplicate_groups(manifest: pd.DataFrame) -> np.ndarray:
    """Group id per row: rows sharing a sha256 (exact copy) or a perceptual hash (near copy,
    e.g. resized or recompressed) share a group, transitively (union-find)."""
    parent = list(range(len(manifest)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in ("sha256", "phash"):
        if column not in manifest:
            continue
        first: dict[str, int] = {}
        for i, value in enumerate(manifest[column]):
            if isinstance(value, str) and value:
                parent[find(i)] = find(first.setdefault(value, i))
    return np.array([find(i) for i in range(len(manifest))], dtype=np.int64)


COPY_COLUMNS = ["path", "copy_of", "match", "distance_bits"]


# Of the 256-bit difference hash (manifest.dhash). Measured on mnist-5k digits: a 2x resize
# moves it by at most 18 bits, a 20 px thumbnail by at most 30 (95% within 23); two different
# digits differ by 53 bits or more in 99% of pairs. 24 catches resized and re-saved copies; the
# rare look-alike it also removes costs one pool image, a missed copy would leak a test image.
NEAR_BITS = 24


_CHUNK = 4096  # pool rows per matrix product: 4096 x 5,000 labeled images is 80 MB


def _signs(hashes: pd.Series) -> np.ndarray:
    """Hex hashes -> ``[N, 256]`` float32 of +1/-1, so that ``a @ b = 256 - 2 * hamming``."""
    raw = np.frombuffer(bytes.fromhex("".join(hashes)), np.uint8).reshape(len(hashes), -1)
    return np.unpackbits(raw, axis=1).astype(np.float32) * 2 - 1


def _near(pool: pd.DataFrame, labeled: pd.DataFrame, max_bits: int) -> list[tuple[str, str, int]]:
    pool = pool[pool["phash"].str.len() == 64]
    labeled = labeled[labeled["phash"].str.len() == 64]
    if pool.empty or labeled.empty:
        return []
    ref, found = _signs(labeled["phash"]), []
    for start in range(0, len(pool), _CHUNK):
        part = pool.iloc[start:start + _CHUNK]
        bits = (ref.shape[1] - _signs(part["phash"]) @ ref.T) / 2
        best = bits.argmin(1)
        dist = bits[np.arange(len(part)), best]
        for row in np.flatnonzero(dist <= max_bits):
            found.append((part["path"].iloc[row], labeled["path"].iloc[best[row]], int(round(dist[row]))))
    return found


def pool_copies(pool: pd.DataFrame, labeled: pd.DataFrame, max_bits: int = NEAR_BITS) -> pd.DataFrame:
    """Pool rows that copy a labeled image: ``path`` (in the pool), ``copy_of`` (labeled path),
    ``match`` (``exact`` or ``near``) and ``distance_bits``, sorted by path."""
    by_sha = labeled[labeled["sha256"].astype(bool)].drop_duplicates("sha256").set_index("sha256")["path"]
    exact = pool[pool["sha256"].isin(by_sha.index) & pool["sha256"].astype(bool)]
    rows = [(p, str(by_sha[s]), "exact", 0) for p, s in exact[["path", "sha256"]].itertuples(index=False)]
    rest = pool[~pool["path"].isin(exact["path"])]
    rows += [(p, c, "near", d) for p, c, d in _near(rest, labeled, max_bits)]
    return pd.DataFrame(sorted(rows), columns=COPY_COLUMNS)
