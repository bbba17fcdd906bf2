"""Importers that turn a user's folders into the ImageFolder layout ``<out>/<class>/<image>``
(``import_folder``) or an unlabeled pool (``import_unlabeled``); idx files are ``data.idx``.

Every importer writes into a temporary folder next to ``out`` and renames it at the end, so an
error never leaves a half-written ``out``, and refuses a non-empty ``out``. Nothing here
downloads anything.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_tasks.data.datasets import UNLABELED, atomic_folder, refuse_non_empty
from pipeline_tasks.data.decode import SUFFIXES, refused_format
from pipeline_tasks.data.errors import DatasetError
from pipeline_tasks.data.listing import is_litter

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(SUFFIXES)


@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote and what it left out.

    ``counts``: images written per class folder, sorted by class name (0 for an empty class).
    ``skipped``: source paths (relative to the source folder) that were not images or were hidden.
    ``refused_symlinks``: source paths (relative) that are symlinks; never followed, never copied.
    ``refused_formats``: source paths (relative) of images in a format that cannot be read
    (HEIC/HEIF), never copied. ``litter``: what operating systems leave (``listing.is_litter``).
    """

    counts: dict[str, int]
    skipped: list[str] = field(default_factory=list)
    refused_symlinks: list[str] = field(default_factory=list)
    refused_formats: list[str] = field(default_factory=list)
    litter: list[str] = field(default_factory=list)  # __MACOSX/, ._*, .DS_Store, ...: ignored, named once

    @property
    def total(self) -> int:
        """Images written over all classes."""
        return sum(self.counts.values())


def _check_src_out(src: Path, out: Path) -> None:
    """``src`` must be a folder (itself may be a symlink); neither ``src`` nor ``out`` may hold the other."""
    if not src.is_dir():
        what = "not found" if not src.exists() else "is not a folder"
        raise DatasetError(f"{src}: source folder {what}; pass a folder laid out as <class>/<image>")
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or out_r.is_relative_to(src_r) or src_r.is_relative_to(out_r):
        raise DatasetError(
            f"{out}: output is {'the source' if out_r == src_r else 'inside or around the source'} {src}; "
            "choose an --out outside the source folder"
        )


def _walk(folder: Path) -> Iterator[tuple[str, Path]]:
    """``(kind, path)`` for each entry under ``folder``, sorted, never following symlinks.

    ``kind``: ``"image"``, ``"litter"`` (``listing.is_litter``: ``__MACOSX``, ``._*``,
    ``.DS_Store``, ...), ``"skipped"`` (not an image, not a regular file), ``"symlink"`` or
    ``"refused"`` (an image format that cannot be read: HEIC/HEIF). Litter folders and symlinked
    folders are reported once and not entered.
    """
    for entry in sorted(folder.iterdir()):
        if is_litter(entry.name):
            yield "litter", entry
        elif entry.is_symlink():
            yield "symlink", entry
        elif entry.is_dir():
            yield from _walk(entry)
        elif entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
            yield "image", entry
        elif entry.is_file() and refused_format(entry.name):
            yield "refused", entry
        else:
            yield "skipped", entry


def _copy_tree(src: Path, dest: Path, classes: list[str], limit_per_class: int | None) -> ImportSummary:
    """Copy the images under ``src/<class>/`` (the first ``limit_per_class`` of each, in path
    order, when given) to ``dest/<class>/``; ``dest`` exists and is empty."""
    counts = dict.fromkeys(classes, 0)
    left: dict[str, list[str]] = {"skipped": [], "symlink": [], "refused": [], "litter": []}
    for cls in classes:
        (dest / cls).mkdir()
    for kind, entry in _walk(src):
        rel = entry.relative_to(src)
        if kind == "image" and len(rel.parts) == 1:
            kind = "skipped"  # an image outside any class folder
        if kind != "image":
            left[kind].append(rel.as_posix())
        elif limit_per_class is None or counts[rel.parts[0]] < limit_per_class:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(entry, dest / rel, follow_symlinks=False)
            counts[rel.parts[0]] += 1
    return ImportSummary(counts, left["skipped"], left["symlink"], left["refused"], left["litter"])


def import_folder(src: Path, out: Path, limit_per_class: int | None = None) -> ImportSummary:
    """Copy a class-per-folder tree ``src/<class>/**/<image>`` to ``out/<class>/...``, atomically.

    Only image suffixes (``IMAGE_SUFFIXES``, any case) are copied, keeping relative paths and file
    times (``shutil.copy2``); ``src`` is only read. OS litter (``__MACOSX``, ``._*``,
    ``.DS_Store``, ...) is never a class and never copied; non-images are skipped and symlinks
    refused (all listed in the summary, relative to ``src``). Class folders left empty are still
    created, so the validation gate can name them. ``counts`` is sorted by class name.
    """
    src, out = Path(src), Path(out)
    _check_src_out(src, out)
    refuse_non_empty(out)
    classes = [p.name for p in sorted(src.iterdir())
               if p.is_dir() and not p.is_symlink() and not is_litter(p.name)]
    if not classes:
        raise DatasetError(f"{src}: no class folders found; lay the images out as {src}/<class>/<image>")
    with atomic_folder(out) as tmp:
        summary = _copy_tree(src, tmp, classes, limit_per_class)
    if summary.skipped or summary.refused_symlinks:
        log.warning(
            "%s: copied %d images; skipped %d hidden/non-image entries %s; refused %d symlinks %s",
            src, summary.total, len(summary.skipped), summary.skipped[:5],
            len(summary.refused_symlinks), summary.refused_symlinks[:5],
        )
    return summary


def import_unlabeled(src: Path, out: Path) -> ImportSummary:
    """Copy every image under ``src``, in any folder layout, to ``out`` (the unlabeled pool),
    keeping relative paths and file times; ``src`` is only read, symlinks are refused and
    hidden or non-image entries skipped (both listed). ``counts`` is ``{"(unlabeled)": N}``."""
    src, out = Path(src), Path(out)
    if src.is_dir():
        _check_src_out(src, out)
    else:
        raise DatasetError(f"{src}: source folder {'not found' if not src.exists() else 'is not a folder'}; "
                           "pass a folder of images (any layout)")
    refuse_non_empty(out)
    left: dict[str, list[str]] = {"skipped": [], "symlink": [], "refused": [], "litter": []}
    n = 0
    with atomic_folder(out) as tmp:
        for kind, entry in _walk(src):
            rel = entry.relative_to(src)
            if kind == "image":
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(entry, tmp / rel, follow_symlinks=False)
                n += 1
            else:
                left[kind].append(rel.as_posix())
        if n == 0:
            raise DatasetError(f"{src}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found; "
                               "nothing imported")
    return ImportSummary({UNLABELED: n}, left["skipped"], left["symlink"], left["refused"], left["litter"])
