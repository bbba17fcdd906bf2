"""The image manifest: one row per file, read once, cached by (size, mtime).

Rows are computed in a thread pool (Pillow's decoders and hashlib release the GIL) and cached
in a CSV keyed by path, size and mtime, so re-validating 70,000 unchanged images reads no image.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from pipeline_tasks.data.listing import BAD_NAME, list_images, list_pool
from pipeline_tasks.data.nearcopy import dhash

MANIFEST_COLUMNS = [
    "path", "label", "format", "mode", "width", "height", "bytes", "sha256", "phash",
    "decodes", "error", "symlink_outside", "bad_name", "size_key",
]


def _row(rel: str, label: str, **values: Any) -> dict[str, Any]:
    return {"path": rel, "label": label, "format": "", "mode": "", "width": 0, "height": 0,
            "bytes": 0, "sha256": "", "phash": "", "decodes": False, "error": "",
            "symlink_outside": False, "bad_name": False, "size_key": "", **values}


def describe_file(path: Path, rel: str, label: str) -> dict[str, Any]:
    """One manifest row: decode the pixels (catches truncation), hash bytes and content."""
    row = _row(rel, label)
    try:
        raw = path.read_bytes()
        row.update(bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
        with Image.open(path) as im:
            row.update(format=im.format or "", mode=im.mode, width=im.width, height=im.height)
            im.load()
            row.update(phash=dhash(im), decodes=True)
    except Exception as exc:  # PIL raises many types for bad files: record, never crash
        row["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return row


def _load_cache(cache_file: Path | None) -> pd.DataFrame | None:
    if cache_file is None or not cache_file.is_file():
        return None
    try:
        cached = pd.read_csv(cache_file, dtype={"label": str, "phash": str, "error": str, "path": str,
                                                "size_key": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        return None  # a damaged cache is only a slower run
    # size keys carry CACHE_VERSION, so rows of an older layout never match
    return cached if list(cached.columns) == MANIFEST_COLUMNS else None


def build_manifest(data_dir: str | Path, cache_file: str | Path | None = None,
                   workers: int | None = None, pool: bool = False) -> pd.DataFrame:
    """One row per file under ``data_dir/<class>/`` (or, with ``pool``, anywhere under
    ``data_dir``, label ``""``), sorted by path; columns ``MANIFEST_COLUMNS``.

    ``cache_file``: a CSV of earlier rows, reused for files whose size and mtime are unchanged,
    and rewritten when anything changed (it lives outside the data folder). ``workers``: threads.
    """
    root = Path(data_dir)
    listing = list_pool(root) if pool else list_images(root)
    cache = _load_cache(Path(cache_file) if cache_file else None)
    hit = pd.Series(False, index=listing.index)
    if cache is not None:
        known = cache.drop_duplicates("path").set_index("path")["size_key"]
        hit = listing["path"].map(known).eq(listing["size_key"]) & listing["size_key"].notna()
    bad = listing["size_key"].eq(BAD_NAME)
    links = listing[listing["size_key"].isna()]
    todo = listing[~hit & listing["size_key"].notna() & ~bad]
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as executor:
        fresh = list(executor.map(lambda r: {**describe_file(root / r[1], r[1], r[0]), "size_key": r[2]},
                              todo.itertuples(index=False, name=None)))
    fresh += [_row(path, label, symlink_outside=True,
                   error="symlink to a path outside the data folder (not followed)")
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


def data_digest(manifest: pd.DataFrame) -> str:
    """A content hash of the data set: changes when any file, name or label changes."""
    h = hashlib.sha256()
    for path, label, sha in manifest[["path", "label", "sha256"]].itertuples(index=False):
        h.update(f"{path}\0{label}\0{sha}\n".encode())
    return h.hexdigest()
