"""The preprocess stage: stratified splits and a uint8 image cache, images decoded once (on
every core), never per epoch.

The labeled images become ``{train,val,test}_images.npy`` and ``*_labels.npy``; the unlabeled
pool, when there is one, becomes ``pool_images.npy``, which only pretraining reads. With
``data.cache_size`` over ``data.image_size``, the train and pool images are also decoded at
``cache_size`` (``*_images_large.npy``), from the same files by the same decode path: the
source of the training views (``data.cache``). What is decoded is what the gate validated:
each file's bytes are read once and checked against the sha256 in the manifest, and a file
rewritten since is refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_tasks.config import DataConfig, PreprocessConfig
from pipeline_tasks.data.cache import decode_into, images_file, labels_file, large_images_file, save_atomic
from pipeline_tasks.data.errors import DataError
from pipeline_tasks.data.manifest import read_manifest
from pipeline_tasks.data.seen import SEEN, write_seen
from pipeline_tasks.data.splits import SPLITS, classes_without, split_fingerprint, split_manifest

VIEW_SPLITS = ("train", "pool")  # the splits training views are cut from
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessRecord:
    out_dir: str
    classes: tuple[str, ...]
    n_train: int
    n_val: int
    n_test: int
    image_size: int
    channels: int
    n_pool: int = 0
    test_split_sha256: str = ""  # sha256 over the test images' sorted sha256:label lines
    resize: str = "crop"
    cache_size: int = 0  # side of the training views' source (= image_size without a larger cache)


def _read_manifest(path: str | Path) -> pd.DataFrame:
    return read_manifest(path)


def _check_classes(splits: pd.DataFrame) -> dict[str, list[str]]:
    """``classes_without`` of the splits, said out loud. ``DataError`` for a class without a
    training image (fine-tuning would see 0 labels of it); a class without a validation or test
    image is only logged (it is not selected on, or not scored) and recorded in ``splits.json``."""
    missing = classes_without(splits)
    if missing["train"]:
        names = ", ".join(f"'{c}'" for c in missing["train"])
        raise DataError(
            f"class(es) {names}: no training image. Each copy group (a picture and its near copies) "
            "goes to one split by its content, and all of these classes' groups fell in val or test: "
            "add more different pictures of them (validate.min_distinct_per_class asks for at least "
            "3), or remove their folders; nothing was written")
    for name in ("val", "test"):
        if missing[name]:
            log.warning("classes without a %s image: %s (add different pictures of them)", name,
                        ", ".join(missing[name]))
    return missing


def _decode(out: Path, split: str, files: list[Path], sha256: list[str], data: DataConfig) -> None:
    """The split at ``image_size``; train and pool also at a larger ``cache_size``. Each file's
    bytes must still have the sha256 the gate recorded (``decode_into``)."""
    decode_into(images_file(out, split), files, data.image_size, data.channels, data.resize, sha256=sha256)
    large = large_images_file(out, split)
    large.unlink(missing_ok=True)  # never a stale copy from an earlier cache_size
    if split in VIEW_SPLITS and (data.cache_size or data.image_size) > data.image_size:
        decode_into(large, files, int(data.cache_size or 0), data.channels, data.resize, sha256=sha256)


def preprocess_data(
    manifest_path: str | Path, data_dir: str | Path, data: DataConfig, cfg: PreprocessConfig,
    out_dir: str | Path, pool: tuple[str | Path, str | Path] | None = None,
) -> PreprocessRecord:
    """Write under ``out_dir``: ``{train,val,test}_images.npy`` (uint8 ``[N,C,H,W]``) and
    ``*_labels.npy`` (int64 ``[N]``), ``pool_images.npy`` (of ``pool`` = (pool manifest, pool
    folder); empty without one), ``splits.csv``, ``classes.json``, ``splits.json`` (sizes, the
    test split's fingerprint, and ``classes_without``: ``{"val": [...], "test": [...]}``, the
    classes with no image there) and ``seen_images.txt`` (``data.seen``): every image a model
    trained on this cache may see (train, val and pool), which its registered version keeps."""
    out, root = Path(out_dir), Path(data_dir)
    splits = split_manifest(_read_manifest(manifest_path), cfg, data.limit_per_class)
    missing = _check_classes(splits)
    out.mkdir(parents=True, exist_ok=True)
    classes = tuple(sorted(splits["label"].unique()))
    index = {c: i for i, c in enumerate(classes)}
    sizes = {}
    for name in SPLITS:
        rows = splits[splits["split"] == name]
        save_atomic(labels_file(out, name), np.array([index[c] for c in rows["label"]], dtype=np.int64))
        _decode(out, name, [root / r for r in rows["path"]], list(rows["sha256"]), data)
        sizes[name] = len(rows)
    pool_manifest = _read_manifest(pool[0]) if pool else pd.DataFrame({"path": [], "sha256": []}, dtype=str)
    pool_rows = pool_manifest["path"]
    pool_root = Path(pool[1]) if pool else root
    _decode(out, "pool", [pool_root / r for r in pool_rows], list(pool_manifest["sha256"]), data)
    write_seen(out / SEEN, splits[splits["split"] != "test"], pool_manifest)
    splits.to_csv(out / "splits.csv", index=False)
    (out / "classes.json").write_text(json.dumps(list(classes)))
    record = PreprocessRecord(
        out_dir=str(out), classes=classes, n_train=sizes["train"], n_val=sizes["val"],
        n_test=sizes["test"], image_size=data.image_size, channels=data.channels, n_pool=len(pool_rows),
        test_split_sha256=split_fingerprint(splits), resize=data.resize,
        cache_size=data.cache_size or data.image_size,
    )
    described = {**dataclasses.asdict(record), "classes_without": {k: missing[k] for k in ("val", "test")}}
    (out / "splits.json").write_text(json.dumps(described, indent=2) + "\n")
    return record
