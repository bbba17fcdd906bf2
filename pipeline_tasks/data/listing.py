"""Listing a data folder without reading any image: ``<class>/<image>`` for labeled data, any
layout for the unlabeled pool.

Listing never writes to the data folder and never follows a symlink out of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pipeline_tasks.data.errors import DataError

CACHE_VERSION = "5"  # bump when a column's meaning changes: old caches are then ignored (5: flipped pHashes)


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


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


# What operating systems and tools leave in folders people zip and share: never images, never
# classes. Anything hidden (a leading dot, which covers AppleDouble ._* files) counts too.
LITTER_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints",
                          "$RECYCLE.BIN", "System Volume Information"})


def is_litter(name: str) -> bool:
    """True for OS and tool litter: ``__MACOSX``, AppleDouble ``._*`` files, ``.DS_Store``,
    ``Thumbs.db``, ``desktop.ini``, ``.ipynb_checkpoints`` and any other hidden entry."""
    return name in LITTER_NAMES or name.startswith(".")


def find_litter(root: str | Path) -> list[str]:
    """The litter under ``root`` (relative paths, sorted; a litter folder once, not its contents):
    what listing and the importers leave out, for the report to name once."""
    found = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        found += [str(rel / d) for d in dirs if is_litter(d)]
        found += [str(rel / f) for f in files if is_litter(f)]
        dirs[:] = [d for d in dirs if not is_litter(d)]
    return sorted(printable(f) for f in found)


def stat_key(st: os.stat_result) -> str:
    """What proves a file unchanged since it was read: size, mtime, inode and ctime (files
    unpacked from one archive share an mtime, and BMP, PGM or raw TIFF files of one shape share a
    size; a rewrite in place still changes the ctime, a replacement the inode)."""
    return f"v{CACHE_VERSION}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"


def _scan(class_dir: Path, root: Path, refuse_links: bool = False) -> Iterator[tuple[str, str | None]]:
    """``(relative path, stat key)`` for files under ``class_dir``, from one scandir pass.

    A symlink that leads out of ``root`` (any symlink, with ``refuse_links``) is yielded with
    ``None`` (refused, never followed); symlinked folders inside ``root`` are not entered.
    """
    prefix = len(str(root)) + 1
    stack = [class_dir]
    while stack:
        with os.scandir(stack.pop()) as it:
            entries = [e for e in it if not is_litter(e.name)]
        for e in entries:
            if e.is_symlink():
                if refuse_links or not _inside(Path(e.path), root):
                    yield e.path[prefix:], None
                    continue
                if not e.is_file():
                    continue
            elif e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
                continue
            yield e.path[prefix:], stat_key(e.stat())


def _folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not is_litter(p.name))


def class_folders(root: Path) -> list[str]:
    """Names of the class folders (hidden ones skipped, others escaped to valid UTF-8), sorted:
    empty ones included."""
    return [printable(name) for name in _folders(root)]


def _listed(label: str, rel: str, key: str | None) -> tuple[str, str, str | None]:
    """A listing row; a name that is not valid UTF-8 is escaped and marked, never read."""
    if _valid_utf8(label) and _valid_utf8(rel):
        return label, rel, key
    return printable(label), printable(rel), BAD_NAME


def list_images(data_dir: str | Path, refuse_links: bool = False) -> pd.DataFrame:
    """Every file as ``label, path, stat_key`` (``stat_key`` None for a refused symlink),
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
        if (root / label).is_symlink() and (refuse_links or not _inside(root / label, root)):
            rows.append(_listed(label, label, None))
        else:
            rows += [_listed(label, rel, key) for rel, key in _scan(root / label, root, refuse_links)]
    if not rows:
        raise DataError(
            f"{root}: no images found (expected <class>/<image> files). Put one folder per class "
            "with images inside, or run `pretrainflow data builtin mnist-5k`."
        )
    listing = pd.DataFrame(rows, columns=["label", "path", "stat_key"])
    return listing.sort_values("path", ignore_index=True)


def list_pool(pool_dir: str | Path, refuse_links: bool = False) -> pd.DataFrame:
    """Every file of an unlabeled pool, in any folder layout, as ``list_images`` gives them
    (label ``""``). Raises ``DataError`` when the folder is missing or holds no files."""
    root = Path(pool_dir)
    if not root.is_dir():
        raise DataError(
            f"{root}: unlabeled pool folder not found (data.unlabeled_dir). Fill it with "
            "`pretrainflow data import-unlabeled PATH`, or set data.unlabeled_dir: null to "
            "pretrain on the labeled training images only."
        )
    rows = [_listed("", rel, key) for rel, key in _scan(root, root, refuse_links)]
    if not rows:
        raise DataError(f"{root}: the unlabeled pool (data.unlabeled_dir) holds no files; add images "
                        "or set data.unlabeled_dir: null")
    return pd.DataFrame(rows, columns=["label", "path", "stat_key"]).sort_values("path", ignore_index=True)
