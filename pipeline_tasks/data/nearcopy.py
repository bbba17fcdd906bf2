"""Near copies: the one rule that says when two images are copies of each other, used by the
gate (label conflicts), the splits (a group never straddles two splits) and the pool (copies of
labeled images are removed from it).

Two images are copies when their bytes are equal (the same sha256) or the 256-bit perceptual
hash of one is within ``NEAR_BITS`` of the other's in any of its 8 orientations: as stored,
turned by a quarter, half or three-quarter turn, mirrored, or mirrored and turned. So a copy
that is resized, re-encoded, turned by quarter turns or mirrored is caught; a cropped copy is
not (the hash is of the whole frame, and a crop changes its scale). The hash is imagehash's
pHash at 16x16 (the signs of the 16x16 lowest frequencies of a 64x64 DCT against their median)
of the decoded image, so EXIF orientation and bit depth are normalised first (``data.decode``).
It is computed here (``phashes``; a test holds it equal to ``imagehash.phash``) because the
flipped orientations come from the same DCT, and the turned ones from those (``orientations``).

Measured by ``bench/near_copies.py`` on the 5,000 mnist-5k digits (copies written as files and
decoded), largest distance to the original in any orientation: a 2x resize 8 bits, a JPEG at
quality 75 28 (99.9% within 16), a 20 px thumbnail 26 (99.4% within 16), a quarter turn 12, a
half turn or a mirror 0, a quarter turn re-encoded at quality 75 26 (99.8% within 16); a crop of
one pixel 96 (99th percentile 86: none caught). Distinct digits: no pair within 19 bits upright
or turned (one pair at 20, none of different classes within 32), so at ``NEAR_BITS`` the rule
groups none of them: a 6 turned over is not a 9. On 23 photographs: every turn and mirror within
10 bits; crops keeping 99% of each side caught for 87% of them, 98% for 43%, 95% for none. pHash
rather than dHash: on small mostly-dark images dHash cannot tell copies from look-alikes (a 2x
resize of a digit moves its 256-bit dHash by up to 20 bits while 4,378 pairs of distinct digits
are within 24 bits). An image with too little information (its thumbnail spans fewer than
``MIN_RANGE`` grey levels: blank, flat, a black first GIF frame) gets no hash and never groups
by it: flat images all hash alike and would be "copies" of each other (37 of 39 distinct 16-bit
scans became one group).

Hamming search is exact: faiss's multi-hash index (``_index``), which finds every pair within
``NEAR_BITS`` by the pigeonhole principle and checks each candidate on all 256 bits; groups are
the connected components of the pairs found (scipy).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import faiss
import numpy as np
import pandas as pd
import scipy.fftpack
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_SIZE = 16  # 16x16 = 256 bits
CODE_BYTES = HASH_SIZE * HASH_SIZE // 8
# imagehash's pHash reads a 64x64 grey thumbnail (hash size x its highfreq_factor 4): a decode for
# the hash needs no more (``decode.normalise``). Measured on 30 photo-like 1024x768 JPEGs: a hash
# of the 1/8-scale decode is within 4 bits of the full decode's (0 for 22 of them), 6x faster.
PHASH_INPUT = (HASH_SIZE * 4, HASH_SIZE * 4)
# Of the 256 bits, in any of the 8 orientations (bench/near_copies.py, on mnist-5k): copies of a
# digit move its hash by at most 8 bits resized 2x or turned, 26-28 for the worst JPEG re-encodes
# and thumbnails (99.4% or more within 16); distinct digits are 20 bits or more apart. A missed
# copy leaks a test image; a false one merges two pictures into one split.
NEAR_BITS = 16
MIN_RANGE = 8  # grey levels a thumbnail must span to carry a hash
COPY_COLUMNS = ["path", "copy_of", "match", "distance_bits"]
# A mirrored row's DCT-II is the row's with its odd frequencies negated (exactly), so one DCT of
# the thumbnail gives the pHashes of it mirrored left-right, flipped top-bottom and turned 180
# degrees; each of the four transposed gives the other four orientations (quarter turns and the
# two diagonal mirrors).
_ODD = (-1.0) ** np.arange(HASH_SIZE)
_FLIPS = (np.ones((HASH_SIZE, HASH_SIZE)), np.outer(np.ones(HASH_SIZE), _ODD),
          np.outer(_ODD, np.ones(HASH_SIZE)), np.outer(_ODD, _ODD))
# A fixed shuffle of the 256 bit positions for the multi-hash index: a pHash's bits are ordered
# by frequency and neighbours agree across many images, so unshuffled 15-bit chunks would all
# collide (70,000 digit-like hashes x 8 orientations: 29 s a search unshuffled, 5.8 s shuffled).
_SHUFFLE = np.random.default_rng(0).permutation(HASH_SIZE * HASH_SIZE)


def phashes(im: Image.Image) -> tuple[str, str]:
    """``(phash, flips)`` of a decoded (8-bit L or RGB) image: its 256-bit pHash (imagehash's
    definition, 64 hex digits) and the pHashes of its thumbnail mirrored left-right, flipped
    top-bottom and turned 180 degrees (3 x 64 hex digits); ``("", "")`` when the image has too
    little information to tell copies apart. One thumbnail and one DCT serve all four: 0.3 ms
    an image where four imagehash calls took 0.7."""
    gray = im.convert("L")
    small = np.asarray(gray.resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BOX))
    if int(small.max()) - int(small.min()) < MIN_RANGE:
        return "", ""
    thumb = np.asarray(gray.resize(PHASH_INPUT, Image.Resampling.LANCZOS))  # as imagehash.phash resizes
    low = scipy.fftpack.dct(scipy.fftpack.dct(thumb, axis=0), axis=1)[:HASH_SIZE, :HASH_SIZE]
    found = [np.packbits(block > np.median(block)).tobytes().hex() for block in (low * f for f in _FLIPS)]
    return found[0], "".join(found[1:])


def phash(im: Image.Image) -> str:
    """The 256-bit pHash of a decoded image as 64 hex digits (``""``: too little information)."""
    return phashes(im)[0]


def _codes(hashes: Iterable[str]) -> np.ndarray:
    """Hex hashes -> ``uint8 [N, 32]`` codes for faiss."""
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    return np.frombuffer(raw, np.uint8).reshape(-1, CODE_BYTES)


def orientations(phash_hex: str, flips: str) -> np.ndarray:
    """``uint8 [8, 32]``: an image's pHash in its 8 orientations (the 4 flips and each
    transposed: a transposed thumbnail has the transposed DCT, so its hash is the transposed bit
    matrix, exactly), or ``[1, 32]``, upright only, without ``flips``."""
    four = _codes([phash_hex, *(flips[i:i + 2 * CODE_BYTES] for i in range(0, len(flips), 2 * CODE_BYTES))])
    if len(four) == 1:
        return four
    bits = np.unpackbits(four, axis=1).reshape(-1, HASH_SIZE, HASH_SIZE)
    both = np.concatenate([bits, bits.transpose(0, 2, 1)]).reshape(-1, HASH_SIZE * HASH_SIZE)
    return np.packbits(both, axis=1)


def _shuffled(codes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.packbits(np.unpackbits(codes, axis=1)[:, _SHUFFLE], axis=1))


def _index(codes: np.ndarray, max_bits: int) -> Any:
    """An exact Hamming range index over (shuffled) ``codes``: faiss's multi-hash index with
    ``max_bits + 1`` disjoint chunks, of which two codes within ``max_bits`` share at least one
    exactly (pigeonhole), so every candidate is found and then checked on all 256 bits; faiss's
    flat index (a full scan) where the chunks would be too short to narrow anything."""
    chunk = HASH_SIZE * HASH_SIZE // (max_bits + 1)
    index: Any = faiss.IndexBinaryFlat(HASH_SIZE * HASH_SIZE)
    if chunk >= 8:
        index = faiss.IndexBinaryMultiHash(HASH_SIZE * HASH_SIZE, max_bits + 1, chunk)
        index.nflip = 0  # exact chunk matches only: enough by the pigeonhole principle
    index.add(codes)
    return index


Hashes = Sequence[tuple[str, str]]  # (phash, phash_flips) per image; "" for none


def hashes(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """``(phash, phash_flips)`` of each row of a manifest (flips ``""`` without that column)."""
    flips = frame["phash_flips"] if "phash_flips" in frame else pd.Series("", index=frame.index)
    return list(zip(frame["phash"].fillna("").astype(str), flips.fillna("").astype(str), strict=True))


def _hashed(items: Hashes, turned: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(item of each code, codes)``: every hashed item's upright code, or with ``turned`` its
    8 orientations (upright only for an item without flips)."""
    rows, codes = [], []
    for i, (h, f) in enumerate(items):
        if h:
            found = orientations(h, f if turned else "")
            rows += [i] * len(found)
            codes.append(found)
    if not codes:
        return np.empty(0, np.int64), np.empty((0, CODE_BYTES), np.uint8)
    return np.asarray(rows, np.int64), _shuffled(np.concatenate(codes))


def near_pairs(queries: Hashes, reference: Hashes | None = None,
               max_bits: int = NEAR_BITS) -> list[tuple[int, int, int]]:
    """``(query index, reference index, Hamming distance)`` for every pair where the query's
    upright pHash is within ``max_bits`` of the reference's in any of its 8 orientations (the
    smallest such distance). ``reference`` defaults to ``queries``: then each unordered pair
    once, no self pairs. Unhashed images never pair."""
    same = reference is None
    q_rows, q_codes = _hashed(queries, turned=False)
    r_rows, r_codes = _hashed(queries if reference is None else reference, turned=True)
    if not len(q_rows) or not len(r_rows):
        return []
    lims, dist, found = _index(r_codes, max_bits).range_search(q_codes, max_bits + 1)
    best: dict[tuple[int, int], int] = {}
    for row, qi in enumerate(q_rows.tolist()):
        for k in range(int(lims[row]), int(lims[row + 1])):
            ri = int(r_rows[int(found[k])])
            if same and qi == ri:
                continue
            key = (min(qi, ri), max(qi, ri)) if same else (qi, ri)
            best[key] = min(best.get(key, max_bits + 1), int(dist[k]))
    return [(a, b, d) for (a, b), d in sorted(best.items())]


def group_ids(sha256s: Sequence[str], hashed: Hashes, max_bits: int = NEAR_BITS) -> np.ndarray:
    """Group id per image (the smallest index of its group): images with the same sha256 or
    near pHashes (``near_pairs``) share a group, transitively: the connected components of the
    graph of copies (``scipy.sparse.csgraph.connected_components``)."""
    n = len(sha256s)
    first: dict[str, int] = {}
    edges = [(i, first.setdefault(sha, i)) for i, sha in enumerate(sha256s) if isinstance(sha, str) and sha]
    edges += [(a, b) for a, b, _ in near_pairs(hashed, max_bits=max_bits)]
    rows, cols = (np.array(side, dtype=np.int64) for side in zip(*edges, strict=True)) if edges else \
        (np.empty(0, np.int64), np.empty(0, np.int64))
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    smallest = np.full(component.max(initial=-1) + 1, n, dtype=np.int64)
    np.minimum.at(smallest, component, np.arange(n))
    return smallest[component]


def copies_of(queries: pd.DataFrame, reference: pd.DataFrame, max_bits: int = NEAR_BITS) -> np.ndarray:
    """bool ``[len(queries)]``: True for a query row that is an exact (sha256) or near copy of
    any ``reference`` row, by the one rule. Columns ``sha256``, ``phash`` (``phash_flips``
    when present); a reference without hashes is matched by sha256 alone."""
    shas = set(reference["sha256"].dropna()) - {""}
    found = np.array(queries["sha256"].isin(shas), dtype=bool)
    if "phash" in reference and "phash" in queries:
        for q, _, _ in near_pairs(hashes(queries), hashes(reference), max_bits):
            found[q] = True
    return found


def groups(manifest: pd.DataFrame, max_bits: int = NEAR_BITS) -> np.ndarray:
    """``group_ids`` of a manifest's rows (by position): columns ``sha256``, ``phash`` and,
    when present, ``phash_flips``. The gate asks for the groups of one manifest three times
    (label conflicts, distinct pictures per class, the report): the last few answers are kept."""
    return _groups_of(tuple(manifest["sha256"]), tuple(hashes(manifest)), max_bits).copy()


@functools.lru_cache(maxsize=4)
def _groups_of(sha256s: tuple[str, ...], hashed: tuple[tuple[str, str], ...], max_bits: int) -> np.ndarray:
    return group_ids(sha256s, hashed, max_bits)


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
    for q, r, d in near_pairs(hashes(rest), hashes(labeled), max_bits):
        if q not in nearest or d < nearest[q][1]:
            nearest[q] = (r, d)
    rows += [(rest["path"].iloc[q], labeled["path"].iloc[r], "near", d) for q, (r, d) in nearest.items()]
    return pd.DataFrame(sorted(rows), columns=COPY_COLUMNS)
