"""The image manifest: one row per file, read once, cached by (size, mtime).

Reading never writes to the data folder and never follows a symlink out of it. Rows are
computed in a thread pool (Pillow's decoders and hashlib release the GIL) and cached in a CSV
keyed by path, size and mtime, so re-validating 70,000 unchanged images reads no image.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

MANIFEST_COLUMNS = [
    "path", "label", "format", "mode", "width", "height", "bytes", "sha256", "phash",
    "decodes", "error", "symlink_outside", "bad_name", "size_key",
]
CACHE_VERSION = "2"  # bump when a column's meaning changes: old caches are then ignored
BAD_NAME = "bad-name"  # the listing's size key for a file whose name is not valid UTF-8


def printable(name: str) -> str:
    """``name`` as valid UTF-8: a file name in another encoding (os gives its bytes back as
    surrogates) shows its bytes escaped, e.g. ``caf\\xe9.png``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _valid_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class DataError(ValueError):
    """The data folder is missing, empty or fails validation; the message says what to do."""


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _scan(class_dir: Path, root: Path) -> Iterator[tuple[str, str | None]]:
    """``(relative path, "size:mtime")`` for files under ``class_dir``, from one scandir pass.

    A symlink that leads out of ``root`` is yielded with ``None`` (refused, never followed);
    symlinked folders inside ``root`` are not entered (no loops, no double counting).
    """
    prefix = len(str(root)) + 1
    stack = [class_dir]
    while stack:
        with os.scandir(stack.pop()) as it:
            entries = [e for e in it if not e.name.startswith(".")]
        for e in entries:
            if e.is_symlink():
                if not _inside(Path(e.path), root):
                    yield e.path[prefix:], None
                    continue
                if not e.is_file():
                    continue
            elif e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
                continue
            st = e.stat()
            yield e.path[prefix:], f"v{CACHE_VERSION}:{st.st_size}:{st.st_mtime_ns}"


def _folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_folders(root: Path) -> list[str]:
    """Names of the class folders (hidden ones skipped, others escaped to valid UTF-8), sorted:
    empty ones included."""
    return [printable(name) for name in _folders(root)]


def _listed(label: str, rel: str, key: str | None) -> tuple[str, str, str | None]:
    """A listing row; a name that is not valid UTF-8 is escaped and marked, never read."""
    if _valid_utf8(label) and _valid_utf8(rel):
        return label, rel, key
    return printable(label), printable(rel), BAD_NAME


def list_images(data_dir: str | Path) -> pd.DataFrame:
    """Every file as ``label, path, size_key`` (``size_key`` None for a refused symlink),
    sorted by path, without reading any file.

    Raises ``DataError`` when the folder is missing or holds no files: the cheap check the
    CLI runs before starting anything.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(
            f"{root}: data folder not found. Create it with `pretrainflow data builtin mnist-5k`, "
            "or pass --data-dir PATH to a folder laid out as <class>/<image>."
        )
    rows: list[tuple[str, str, str | None]] = []
    for label in _folders(root):
        if (root / label).is_symlink() and not _inside(root / label, root):
            rows.append(_listed(label, label, None))
        else:
            rows += [_listed(label, rel, key) for rel, key in _scan(root / label, root)]
    if not rows:
        raise DataError(
            f"{root}: no images found (expected <class>/<image> files). Put one folder per class "
            "with images inside, or run `pretrainflow data builtin mnist-5k`."
        )
    listing = pd.DataFrame(rows, columns=["label", "path", "size_key"])
    return listing.sort_values("path", ignore_index=True)


def list_pool(pool_dir: str | Path) -> pd.DataFrame:
    """Every file of an unlabeled pool, in any folder layout, as ``list_images`` gives them
    (label ``""``). Raises ``DataError`` when the folder is missing or holds no files."""
    root = Path(pool_dir)
    if not root.is_dir():
        raise DataError(
            f"{root}: unlabeled pool folder not found (data.unlabeled_dir). Fill it with "
            "`pretrainflow data import-unlabeled PATH`, or set data.unlabeled_dir: null to "
            "pretrain on the labeled training images only."
        )
    rows = [_listed("", rel, key) for rel, key in _scan(root, root)]
    if not rows:
        raise DataError(f"{root}: the unlabeled pool (data.unlabeled_dir) holds no files; add images "
                        "or set data.unlabeled_dir: null")
    return pd.DataFrame(rows, columns=["label", "path", "size_key"]).sort_values("path", ignore_index=True)


def dhash(im: Image.Image, size: int = 16) -> str:
    """256-bit difference hash (hex) of a Lanczos thumbnail. Equal hashes mark near-duplicates
    (re-encoded copies); 16x16 rather than the usual 8x8 because small images such as digits
    collide at 8x8 (362 false pairs in mnist-5k at 8x8 bilinear, 2 at 16x16 Lanczos)."""
    small = np.asarray(im.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), np.int16)
    return np.packbits(small[:, 1:] > small[:, :-1]).tobytes().hex()


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
