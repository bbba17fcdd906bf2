"""The unlabeled pool: written by importers, checked by the gate, cleaned of labeled copies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli.main import main
from pipeline_tasks.config import PipelineConfig, ValidateConfig
from pipeline_tasks.data.cache import open_images
from pipeline_tasks.data.datasets import labeled_mask, write_labeled_and_pool
from pipeline_tasks.data.errors import DataError, DatasetError
from pipeline_tasks.data.importers import import_unlabeled
from pipeline_tasks.data.manifest import build_manifest
from pipeline_tasks.data.nearcopy import pool_copies
from pipeline_tasks.data.preprocess import preprocess_data
from pipeline_tasks.data.validate import validate_data
from pipeline_tasks.ssl.trainer import pretrain_encoder

CFG = ValidateConfig(min_images_per_class=5)


@pytest.fixture
def pool(tiny_data: Path, tmp_path: Path) -> Path:
    """20 digits that are not in tiny_data, in nested folders, no labels anywhere."""
    from pipeline_tasks.data.datasets import write_builtin

    more = tmp_path / "more"
    write_builtin("mnist-5k", more, limit_per_class=14)  # the 13th and 14th of each class are new
    out = tmp_path / "pool"
    for i, f in enumerate(sorted(more.glob("*/*.png"))):
        if f.name not in {p.name for p in (tiny_data / f.parent.name).iterdir()}:
            (out / f"part{i % 2}" / "deeper").mkdir(parents=True, exist_ok=True)
            shutil.copy(f, out / f"part{i % 2}" / "deeper" / f"{i}.png")
    return out


def test_copies_of_labeled_images_are_found_exact_and_near(tiny_data: Path, pool: Path) -> None:
    labeled = sorted(tiny_data.glob("*/*.png"))
    shutil.copy(labeled[5], pool / "exact.png")
    Image.open(labeled[40]).resize((56, 56)).save(pool / "bigger.png")
    Image.open(labeled[70]).convert("RGB").save(pool / "rgb.bmp")
    copies = pool_copies(build_manifest(pool, pool=True), build_manifest(tiny_data))
    found = {r.path: (r.copy_of, r.match) for r in copies.itertuples()}
    rel = [str(f.relative_to(tiny_data)) for f in labeled]
    assert found == {"exact.png": (rel[5], "exact"), "bigger.png": (rel[40], "near"),
                     "rgb.bmp": (rel[70], "near")}  # the 20 other digits are kept


def test_gate_checks_the_pool_and_removes_copies(tiny_data: Path, pool: Path, tmp_path: Path) -> None:
    shutil.copy(sorted(tiny_data.glob("3/*.png"))[0], pool / "part0" / "copy.png")
    record = validate_data(tiny_data, CFG, tmp_path / "v", pool_dir=pool)
    report = json.loads(Path(record.report_path).read_text())
    assert record.n_pool == 20 and report["pool"]["n_images"] == 21 and report["pool"]["n_kept"] == 20
    assert [c["path"] for c in report["pool"]["removed_copies"]] == ["part0/copy.png"]
    assert any(e["suite"] == "pool-files" for e in report["expectations"])
    kept = Path(str(record.pool_manifest_path)).read_text()
    assert "copy.png" not in kept and kept.count("\n") == 21  # header + 20 rows


def test_a_broken_pool_file_closes_the_gate_and_is_named(tiny_data: Path, pool: Path,
                                                         tmp_path: Path) -> None:
    (pool / "part1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    before = sorted(p.name for p in pool.rglob("*"))
    with pytest.raises(DataError) as err:
        validate_data(tiny_data, CFG, tmp_path / "v", pool_dir=pool)
    assert "unlabeled pool" in str(err.value) and "part1/broken.png" in str(err.value)
    assert sorted(p.name for p in pool.rglob("*")) == before  # the pool is only read
    skip = CFG.model_copy(update={"on_error": "skip_bad_files"})
    record = validate_data(tiny_data, skip, tmp_path / "v2", pool_dir=pool)
    assert record.n_pool == 20 and record.n_skipped == 1


def test_pretraining_uses_pool_plus_labeled_training_images(tiny_data: Path, pool: Path,
                                                            tiny_cfg: PipelineConfig, tmp_path: Path) -> None:
    record = validate_data(tiny_data, CFG, tmp_path / "v", pool_dir=pool)
    pre = preprocess_data(record.manifest_path, tiny_data, tiny_cfg.data, tiny_cfg.preprocess,
                          tmp_path / "pre", (str(record.pool_manifest_path), pool))
    assert pre.n_pool == 20 and open_images(pre.out_dir, "pool").shape == (20, 1, 28, 28)
    pretrained = pretrain_encoder(pre.out_dir, tiny_cfg.pretrain, tmp_path / "pt")
    assert (pretrained.n_images, pretrained.n_pool) == (20 + pre.n_train, 20)


def test_labeled_per_class_keeps_n_labels_and_pools_the_rest(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(3), 10)
    images = np.arange(30, dtype=np.uint8).reshape(30, 1, 1).repeat(8, 1).repeat(8, 2)
    counts = write_labeled_and_pool(images, labels, tmp_path / "data", labeled_per_class=4,
                                    pool_out=tmp_path / "unlabeled")
    assert counts == {"0": 4, "1": 4, "2": 4, "(unlabeled)": 18}
    pooled = sorted((tmp_path / "unlabeled").iterdir())
    assert len(pooled) == 18 and all(p.suffix == ".png" for p in pooled)  # flat: no label folders
    kept = {int(np.asarray(Image.open(p))[0, 0]) for p in (tmp_path / "data").rglob("*.png")}
    pooled_values = {int(np.asarray(Image.open(p))[0, 0]) for p in pooled}
    assert not kept & pooled_values and len(kept | pooled_values) == 30
    mask = labeled_mask(labels, 4)  # seeded: the same call keeps the same labels, another seed others
    assert np.bincount(labels[mask]).tolist() == [4, 4, 4]
    assert mask.tolist() == labeled_mask(labels, 4).tolist()
    assert mask.tolist() != labeled_mask(labels, 4, seed=1).tolist()
    with pytest.raises(DatasetError, match="already exists"):
        write_labeled_and_pool(images, labels, tmp_path / "new", labeled_per_class=4,
                               pool_out=tmp_path / "unlabeled")


def test_import_unlabeled_copies_any_layout(pool: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (pool / "notes.txt").write_text("not an image")
    summary = import_unlabeled(pool, tmp_path / "unlabeled")
    assert summary.counts == {"(unlabeled)": 20} and summary.skipped == ["notes.txt"]
    assert (tmp_path / "unlabeled" / "part0" / "deeper").is_dir()
    assert main(["data", "import-unlabeled", str(tmp_path / "nope"), "--out", str(tmp_path / "u2")]) == 1
    assert "source folder not found" in capsys.readouterr().err and not (tmp_path / "u2").exists()


def test_builtin_with_labeled_per_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "builtin", "mnist-5k", "--out", str(tmp_path / "data"), "--labeled-per-class", "3",
                 "--unlabeled-out", str(tmp_path / "pool")]) == 0
    out = capsys.readouterr().out
    assert "wrote 30 labeled images in 10 classes" in out and "wrote 4970 unlabeled images" in out
    assert "data.unlabeled_dir" in out
    assert torch.tensor([len(list((tmp_path / "data" / str(c)).iterdir())) for c in range(10)]).eq(3).all()
    with pytest.raises(SystemExit) as exit_:
        main(["data", "builtin", "mnist-5k", "--labeled-per-class", "0"])
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err
