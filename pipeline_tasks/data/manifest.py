"""The image manifest: one row per file, decoded once per content, cached by what proves a file
unchanged.

Rows are computed in a thread pool (Pillow's decoders and hashlib release the GIL), two threads
per usable core, and cached in a CSV keyed by path and stat key (size, mtime, inode, ctime:
``listing.stat_key``), so re-validating 70,000 unchanged images reads no image, and a rewritten
file is read again even when its size and mtime are the same. A file whose stat key changed but
whose bytes did not (``dvc checkout --relink`` gives every file a new inode and ctime; so do a
copy or a restore) is read and hashed, never decoded again: a row is a function of the path,
the label and the bytes. Each file is decoded by ``data.decode`` (the one decode path), a JPEG
at the smallest DCT scale that still holds the pHash's 64x64 input, and hashed by
``data.nearcopy`` (the one near-copy rule).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline_tasks.data.cores import usable_cores
from pipeline_tasks.data.decode import REFUSED_FIX, normalise, open_file, refused_format
from pipeline_tasks.data.listing import BAD_NAME, CACHE_VERSION, list_images, list_pool
from pipeline_tasks.data.nearcopy import PHASH_INPUT, phashes

MANIFEST_COLUMNS = [
    "path", "label", "format", "mode", "width", "height", "frames", "bytes", "sha256", "phash",
    "phash_flips", "decodes", "error", "refused_link", "bad_name", "stat_key",
]
LINK_ERRORS = {False: "symlink to a path outside the data folder (not followed)",
               True: "symlink in a DVC-tracked data folder (`dvc add` would replace it with a copy of its "
                     "target)"}


def _row(rel: str, label: str, **values: Any) -> dict[str, Any]:
    return {"path": rel, "label": label, "format": "", "mode": "", "width": 0, "height": 0, "frames": 0,
            "bytes": 0, "sha256": "", "phash": "", "phash_flips": "", "decodes": False, "error": "",
            "refused_link": False, "bad_name": False, "stat_key": "", **values}


def describe_file(path: Path, rel: str, label: str, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """One manifest row: format, original mode and size, frame count; the pixels decoded (catches
    truncation: a JPEG's entropy-coded data is read in full even at a reduced DCT scale); the
    bytes' sha256 and the decoded image's pHashes, upright and flipped (``nearcopy.phashes``).
    ``known``: an earlier row of this path, returned as it is, without decoding, when the bytes'
    sha256 and the label are still its own."""
    row = _row(rel, label)
    try:
        raw = path.read_bytes()
        row.update(bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
        if known is not None and (known["sha256"], known["label"]) == (row["sha256"], label):
            return dict(known)
        if (kind := refused_format(path.name, raw[:16])) is not None:
            return {**row, "format": kind, "error": f"{kind} is not supported; {REFUSED_FIX}"}
        with open_file(raw, rel) as im:
            row.update(format=im.format or "", mode=im.mode, width=im.width, height=im.height,
                       frames=int(getattr(im, "n_frames", 1)))
            hashed, flips = phashes(normalise(im, PHASH_INPUT))
            row.update(phash=hashed, phash_flips=flips, decodes=True)
    except Exception as exc:  # PIL raises many types for bad files: record, never crash
        row["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return row


def _load_cache(cache_file: Path | None) -> pd.DataFrame | None:
    if cache_file is None or not cache_file.is_file():
        return None
    try:
        cached = read_manifest(cache_file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        return None  # a damaged cache is only a slower run
    # size keys carry CACHE_VERSION, so rows of an older layout never match
    return cached if list(cached.columns) == MANIFEST_COLUMNS else None


def build_manifest(data_dir: str | Path, cache_file: str | Path | None = None,
                   workers: int | None = None, pool: bool = False,
                   refuse_links: bool = False) -> pd.DataFrame:
    """One row per file under ``data_dir/<class>/`` (or, with ``pool``, anywhere under
    ``data_dir``, label ``""``), sorted by path; columns ``MANIFEST_COLUMNS``.

    ``cache_file``: a CSV of earlier rows, reused for files whose stat key is unchanged, and
    rewritten when anything changed (it lives outside the data folder). ``workers``: threads.
    ``refuse_links``: refuse every symlink (a DVC-tracked folder), not only those leading out.
    """
    root = Path(data_dir)
    listing = list_pool(root, refuse_links) if pool else list_images(root, refuse_links)
    cache = _load_cache(Path(cache_file) if cache_file else None)
    hit = pd.Series(False, index=listing.index)
    if cache is not None:
        known = cache.drop_duplicates("path").set_index("path")["stat_key"]
        hit = listing["path"].map(known).eq(listing["stat_key"]) & listing["stat_key"].notna()
    bad = listing["stat_key"].eq(BAD_NAME)
    links = listing[listing["stat_key"].isna()]
    todo = listing[~hit & listing["stat_key"].notna() & ~bad]
    fresh = _describe_all(root, todo, cache, workers or 2 * usable_cores())
    fresh += [_row(path, label, refused_link=True, error=LINK_ERRORS[refuse_links])
              for label, path in links[["label", "path"]].itertuples(index=False, name=None)]
    fresh += [_row(path, label, bad_name=True,
                   error="the file name is not valid UTF-8 (shown with its bytes escaped)")
              for label, path in listing.loc[bad, ["label", "path"]].itertuples(index=False, name=None)]
    parts = [pd.DataFrame(fresh, columns=MANIFEST_COLUMNS)] if fresh else []
    if cache is not None and hit.any():
        parts.insert(0, cache[cache["path"].isin(listing.loc[hit, "path"])])
    manifest = pd.concat(parts, ignore_index=True).sort_values("path", ignore_index=True)
    if cache_file and (fresh or cache is None or len(cache) != len(manifest)):
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{cache_file}.tmp")
        manifest.to_csv(tmp, index=False)
        os.replace(tmp, cache_file)
    return manifest


def _describe_all(root: Path, todo: pd.DataFrame, cache: pd.DataFrame | None,
                  workers: int) -> list[dict[str, Any]]:
    """Rows of ``todo`` (label, path, stat key) on ``workers`` threads, each handed its cached row
    of this code's ``CACHE_VERSION`` (if any) to reuse when its bytes are unchanged."""
    known: dict[str, dict[str, Any]] = {}
    if cache is not None:
        ours = cache["stat_key"].str.startswith(f"v{CACHE_VERSION}:")
        current = cache[cache["path"].isin(todo["path"]) & ours]
        known = {r["path"]: r for r in current.drop_duplicates("path").to_dict("records")}
    with ThreadPoolExecutor(max_workers=workers) as executor:
        return list(executor.map(
            lambda r: {**describe_file(root / r[1], r[1], r[0], known.get(r[1])), "stat_key": r[2]},
            todo.itertuples(index=False, name=None)))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest CSV with its text columns as text (a label "007" stays "007")."""
    text = ("label", "phash", "phash_flips", "error", "path", "stat_key", "sha256", "format", "mode")
    return pd.read_csv(path, dtype=dict.fromkeys(text, str), keep_default_na=False)


def data_digest(manifest: pd.DataFrame) -> str:
    """A content hash of the data set: changes when any file, name or label changes."""
    h = hashlib.sha256()
    for path, label, sha in manifest[["path", "label", "sha256"]].itertuples(index=False):
        h.update(f"{path}\0{label}\0{sha}\n".encode())
    return h.hexdigest()
