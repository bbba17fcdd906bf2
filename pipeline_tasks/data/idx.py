"""The idx importer: MNIST-format files (images idx3, labels idx1, gzipped or not; e.g.
Debian's ``/usr/share/datasets/fashion-mnist/``) to the ImageFolder layout ``<out>/<class>/<image>``,
written atomically; nothing is downloaded."""

from __future__ import annotations

import gzip
import math
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline_tasks.data.datasets import write_labeled_and_pool
from pipeline_tasks.data.errors import DatasetError
from pipeline_tasks.data.importers import ImportSummary

# idx type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


_GZIP_MAGIC = b"\x1f\x8b"


_IDX_IMAGES = re.compile(r"^(?P<prefix>.+)-images-idx3-ubyte(?:\.gz)?$")


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic ``1f 8b`` (whatever the name)."""
    if not path.is_file():
        raise DatasetError(f"{path}: idx file not found (or not a regular file); check the path")
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"{path}: corrupt or truncated gzip data ({exc}); download or copy the file again"
        ) from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (raw or gzipped) as an array of shape ``dims`` in native byte order.

    Images files (idx3) give ``uint8 [N, H, W]``, labels files (idx1) ``uint8 [N]``.
    Raises ``DatasetError`` naming the file when it is missing, is not idx, or is truncated.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    hint = "expected 2 zero bytes, a type code (0x08-0x0E) and a dimension count"
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path}: not an idx file: bad magic {data[:4].hex(' ')!r} ({hint})")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DatasetError(f"{path}: not an idx file: unknown type code 0x{code:02X} ({hint})")
    if ndim == 0:
        raise DatasetError(f"{path}: not an idx file: dimension count is 0 ({hint})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"{path}: truncated: expected {header} header bytes, found {len(data)}; copy the file again"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected, found = math.prod(dims) * dtype.itemsize, len(data) - header
    if found < expected:
        raise DatasetError(
            f"{path}: truncated: expected {expected} bytes, found {found} "
            f"(dims {dims}, {dtype.name}); copy or download the file again"
        )
    if found > expected:
        raise DatasetError(
            f"{path}: not an idx file: expected {expected} data bytes for dims {dims}, found {found} "
            "(trailing data); check that this is an unmodified idx file"
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header)
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def _load_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, H, W], labels int64 [N])`` from one idx pair, checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    both = f"{images_path} + {labels_path}"
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{both}: images must be 3-D uint8 [N, H, W], found {images.dtype.name} {images.shape}; "
            "pass each pair as (images idx3 file, labels idx1 file)"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"{both}: labels must be 1-D integers [N], found {labels.dtype.name} {labels.shape}; "
            "pass each pair as (images idx3 file, labels idx1 file)"
        )
    if len(images) != len(labels):
        raise DatasetError(
            f"{both}: {len(images)} images but {len(labels)} labels; these files do not belong together"
        )
    if len(labels) and labels.min() < 0:
        raise DatasetError(f"{labels_path}: negative label {int(labels.min())}; labels must be >= 0")
    return images, labels.astype(np.int64)


def _check_class_names(class_names: Sequence[str], max_label: int, where: str) -> None:
    """Each name must be a usable, visible, unique folder name, and cover labels ``0..max_label``."""
    if max_label >= len(class_names):
        raise DatasetError(
            f"{where}: label {max_label} has no class name ({len(class_names)} names given, "
            f"labels need {max_label + 1}); pass one name per label 0..{max_label}"
        )
    for name in class_names:
        if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
            raise DatasetError(
                f"class name {name!r} is not a usable folder name (empty, hidden or with a slash); rename it"
            )
    duplicates = sorted({n for n in class_names if class_names.count(n) > 1})
    if duplicates:
        raise DatasetError(f"class names {duplicates} appear twice; they would merge two classes")


def import_idx(
    pairs: Sequence[tuple[str | Path, str | Path]],
    out: Path,
    limit_per_class: int | None = None,
    class_names: Sequence[str] | None = None,
    labeled_per_class: int | None = None,
    pool_out: Path | None = None,
) -> ImportSummary:
    """Write idx ``(images, labels)`` pairs, concatenated in order, as ``out/<class>/<index:05d>.png``.

    ``<index>`` runs over all pairs; ``<class>`` is ``class_names[label]`` or ``str(label)``.
    With ``labeled_per_class``, only that many per class keep their label; the rest go to
    ``pool_out`` as an unlabeled pool. All files are read and checked before anything is
    written; the output is byte-deterministic.
    """
    if not pairs:
        raise DatasetError("no idx files given; pass at least one (images idx3, labels idx1) pair")
    loaded = [_load_pair(Path(images), Path(labels)) for images, labels in pairs]
    first_hw = loaded[0][0].shape[1:]
    for (images_path, _), (images, _) in zip(pairs, loaded, strict=True):
        if images.shape[1:] != first_hw:
            raise DatasetError(
                f"{images_path}: images are {images.shape[1:]} but {pairs[0][0]} has {first_hw}; "
                "import pairs of one data set only"
            )
    labels = np.concatenate([lab for _, lab in loaded])
    if class_names is not None and len(labels):
        _check_class_names(list(class_names), int(labels.max()), ", ".join(str(p[1]) for p in pairs))
    names = [str(label) for label in labels.tolist()]
    if class_names is not None:
        names = [class_names[label] for label in labels.tolist()]
    images = np.concatenate([images for images, _ in loaded])
    return ImportSummary(counts=write_labeled_and_pool(images, names, out, limit_per_class,
                                                       labeled_per_class, pool_out))


def _single(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``; ``DatasetError`` when both exist (ambiguous)."""
    found = [p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()]
    if len(found) > 1:
        raise DatasetError(
            f"{found[0]} and {found[1]}: both exist and hold the same data set; remove one of them"
        )
    return found[0] if found else None


def find_idx_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """Every ``<prefix>-images-idx3-ubyte[.gz]`` in ``folder`` with its ``<prefix>-labels-idx1-ubyte[.gz]``.

    Sorted by prefix descending, so ``train`` comes before ``t10k`` (and before ``test``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: idx folder not found; pass the folder holding the *-idx3-ubyte files")
    matches = (_IDX_IMAGES.match(p.name) for p in folder.iterdir() if not p.name.startswith("."))
    prefixes = sorted({m["prefix"] for m in matches if m}, reverse=True)
    if not prefixes:
        raise DatasetError(
            f"{folder}: no *-images-idx3-ubyte[.gz] files found; pass the folder of an idx data set "
            "such as /usr/share/datasets/fashion-mnist"
        )
    pairs = []
    for prefix in prefixes:
        images = _single(folder, f"{prefix}-images-idx3-ubyte")
        labels = _single(folder, f"{prefix}-labels-idx1-ubyte")
        if images is None:
            continue  # a directory that happens to match the pattern
        if labels is None:
            raise DatasetError(
                f"{images}: no labels file {prefix}-labels-idx1-ubyte[.gz] next to it; copy it into {folder}"
            )
        pairs.append((images, labels))
    if not pairs:
        raise DatasetError(f"{folder}: no *-images-idx3-ubyte[.gz] files found (only folders of that name)")
    return pairs
