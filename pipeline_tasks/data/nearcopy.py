"""Near copies: the one rule that says when two images are copies of each other, used by the
gate (label conflicts), the splits (a group never straddles two splits) and the pool (copies of
labeled images are removed from it).

Two images are copies when their bytes are equal (the same sha256) or their 256-bit perceptual
hashes are within ``NEAR_BITS``. The hash is imagehash's pHash at 16x16 (the signs of the 16x16
lowest frequencies of a 64x64 DCT against their median) of the decoded image, so EXIF
orientation and bit depth are normalised first (``data.decode``). pHash rather than dHash: on
small mostly-dark images dHash cannot tell copies from look-alikes (in mnist-5k a 2x resize of a
digit moves its 256-bit dHash by up to 20 bits while 4,378 pairs of distinct digits, 10 of them
of different classes, are within 24 bits and chain into a group of 439 ones); pHash moves by at
most 6 bits for a 2x resize, 12 for a JPEG re-encode at quality 75 and 16 for a 20 px thumbnail,
and no two distinct digits are within 19 bits. An image with too little information (its
thumbnail spans fewer than ``MIN_RANGE`` grey levels: blank, flat, a black first GIF frame) gets
no hash and never groups by it: flat images all hash alike and would be "copies" of each other
(trust issue: 37 of 39 distinct 16-bit scans became one group).

Hamming search is faiss's exact binary index (``IndexBinaryFlat``), which scans a million
256-bit codes per query in milliseconds; grouping is a union-find over the pairs found.
"""

from __future__ import annotations

from collections.abc import Iterable

import faiss
import imagehash
import numpy as np
import pandas as pd
from PIL import Image

HASH_SIZE = 16  # 16x16 = 256 bits
# imagehash's pHash reads a 64x64 grey thumbnail (hash size x its highfreq_factor 4): a decode for
# the hash needs no more (``decode.normalise``). Measured on 30 photo-like 1024x768 JPEGs: a hash
# of the 1/8-scale decode is within 4 bits of the full decode's (0 for 22 of them), 6x faster.
PHASH_INPUT = (HASH_SIZE * 4, HASH_SIZE * 4)
# Of the 256 bits (measured on mnist-5k, bench/near_copies.py): copies move the hash by at most
# 16 bits (a 20 px thumbnail; a 2x resize 6, JPEG quality 75 12), distinct digits are 20 bits
# or more apart (1% of them within 32). A missed copy leaks a test image.
NEAR_BITS = 16
MIN_RANGE = 8  # grey levels a thumbnail must span to carry a hash
COPY_COLUMNS = ["path", "copy_of", "match", "distance_bits"]


def phash(im: Image.Image) -> str:
    """The 256-bit pHash of a decoded (8-bit L or RGB) image as 64 hex digits, or ``""`` when
    the image has too little information to tell copies apart."""
    gray = im.convert("L")
    thumb = np.asarray(gray.resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BOX))
    if int(thumb.max()) - int(thumb.min()) < MIN_RANGE:
        return ""
    return str(imagehash.phash(gray, hash_size=HASH_SIZE))


def _codes(hashes: Iterable[str]) -> np.ndarray:
    """Hex hashes -> ``uint8 [N, 32]`` codes for faiss."""
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    return np.frombuffer(raw, np.uint8).reshape(-1, HASH_SIZE * HASH_SIZE // 8)


def near_pairs(queries: list[str], reference: list[str] | None = None,
               max_bits: int = NEAR_BITS) -> list[tuple[int, int, int]]:
    """``(query index, reference index, Hamming distance)`` for every pair within ``max_bits``
    (``reference`` defaults to ``queries``; then each unordered pair once, no self pairs).
    Empty hashes never pair."""
    same = reference is None
    ref = queries if reference is None else reference
    q_idx = [i for i, h in enumerate(queries) if h]
    r_idx = [i for i, h in enumerate(ref) if h]
    if not q_idx or not r_idx:
        return []
    index = faiss.IndexBinaryFlat(HASH_SIZE * HASH_SIZE)
    index.add(_codes(ref[i] for i in r_idx))
    lims, dist, found = index.range_search(_codes(queries[i] for i in q_idx), max_bits + 1)
    pairs = []
    for row, qi in enumerate(q_idx):
        for k in range(lims[row], lims[row + 1]):
            ri = r_idx[int(found[k])]
            if not same or qi < ri:
                pairs.append((qi, ri, int(dist[k])))
    return pairs


def groups(manifest: pd.DataFrame, max_bits: int = NEAR_BITS) -> np.ndarray:
    """Group id per row (the smallest row index of its group): rows with the same sha256 or
    near pHashes share a group, transitively. Columns ``sha256`` and ``phash``."""
    parent = list(range(len(manifest)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)

    first: dict[str, int] = {}
    for i, sha in enumerate(manifest["sha256"]):
        if isinstance(sha, str) and sha:
            union(i, first.setdefault(sha, i))
    for a, b, _ in near_pairs(list(manifest["phash"].fillna(""))):
        union(a, b)
    return np.array([find(i) for i in range(len(manifest))], dtype=np.int64)


def label_conflicts(manifest: pd.DataFrame) -> pd.Series:
    """True for rows whose copy group (exact or near) holds more than one label: the same
    picture filed under two classes."""
    group = pd.Series(groups(manifest), index=manifest.index)
    labels_per_group = manifest["label"].groupby(group).nunique()
    return group.map(labels_per_group).gt(1)


def pool_copies(pool: pd.DataFrame, labeled: pd.DataFrame, max_bits: int = NEAR_BITS) -> pd.DataFrame:
    """Pool rows that copy a labeled image: ``path`` (in the pool), ``copy_of`` (labeled path),
    ``match`` (``exact`` or ``near``) and ``distance_bits``, sorted by path."""
    by_sha = labeled[labeled["sha256"].astype(bool)].drop_duplicates("sha256").set_index("sha256")["path"]
    exact = pool[pool["sha256"].isin(by_sha.index) & pool["sha256"].astype(bool)]
    rows = [(p, str(by_sha[s]), "exact", 0) for p, s in exact[["path", "sha256"]].itertuples(index=False)]
    rest = pool[~pool["path"].isin(exact["path"])]
    nearest: dict[int, tuple[int, int]] = {}
    for q, r, d in near_pairs(list(rest["phash"].fillna("")), list(labeled["phash"].fillna("")), max_bits):
        if q not in nearest or d < nearest[q][1]:
            nearest[q] = (r, d)
    rows += [(rest["path"].iloc[q], labeled["path"].iloc[r], "near", d) for q, (r, d) in nearest.items()]
    return pd.DataFrame(sorted(rows), columns=COPY_COLUMNS)
