"""Which images to label: k-means on the encoder's embeddings, the most typical point of each
cluster, and `pretrainflow data suggest-labels` end to end on tiny synthetic images."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli.main import main
from pipeline_tasks.finetune.suggest import pick_typical
from pipeline_tasks.models.encoders import Encoder, EncoderSpec
from tests.conftest import PARAMS

SIZES = [40, 3, 17, 8, 25]  # unequal on purpose: random picks land twice in the big groups


def _mixture(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised points ``[sum(SIZES), 16]`` around ``len(SIZES)`` far-apart centres, and
    each point's group."""
    rng = np.random.default_rng(seed)
    centres = 3 * np.eye(16)[: len(SIZES)]
    x = np.concatenate([c + 0.1 * rng.normal(size=(n, 16)) for c, n in zip(centres, SIZES, strict=True)])
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(len(SIZES)), SIZES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_pick_per_cluster_each_its_most_typical_point(seed: int) -> None:
    x, group = _mixture(seed)
    picks = pick_typical(x, len(SIZES), seed)
    assert sorted(group[picks.index]) == list(range(len(SIZES)))  # every group once
    assert list(picks.cluster_size) == sorted(SIZES, reverse=True)  # ranked biggest first
    for i, d in zip(picks.index, picks.distance, strict=True):
        members = x[group == group[i]]
        to_mean = np.linalg.norm(members - members.mean(0), axis=1)
        assert np.isclose(np.linalg.norm(x[i] - members.mean(0)), to_mean.min())  # closest to the centre
        assert np.isclose(d, to_mean.min())


def test_duplicated_points_still_give_distinct_picks() -> None:
    x, _ = _mixture()
    dupes = np.repeat(x[:3], 4, axis=0)  # 3 distinct points, asked for 5
    picks = pick_typical(dupes, 5)
    assert len(set(picks.index.tolist())) == 5


@pytest.mark.parametrize(("n", "message"), [(0, "at least 1"), (200, "only 93 images")])
def test_a_budget_out_of_range_is_a_clear_error(n: int, message: str) -> None:
    x, _ = _mixture()
    with pytest.raises(ValueError, match=message):
        pick_typical(x, n)


# -- the command, end to end ------------------------------------------------------------------

def _pattern(group: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 texture per group (stripes, columns, diagonals, checks, a disc) plus pixel noise:
    textures a random network already tells apart."""
    yy, xx = np.mgrid[:28, :28]
    shapes = [(yy // 3) % 2, (xx // 3) % 2, ((xx + yy) // 4) % 2, (xx // 7 + yy // 7) % 2,
              (xx - 14) ** 2 + (yy - 14) ** 2 < 36]
    return (shapes[group] * 200.0 + 20 + rng.normal(0, 8, (28, 28))).clip(0, 255).astype(np.uint8)


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    """``SIZES`` images per group as PNGs named ``<group>_<i>.png``, spread over two nested
    folders, plus a text file and a broken PNG that must be left out."""
    rng, root = np.random.default_rng(0), tmp_path / "pool"
    for group, n in enumerate(SIZES):
        for i in range(n):
            folder = root / ("a" if i % 2 else "b/c")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_pattern(group, rng)).save(folder / f"{group}_{i}.png")
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


@pytest.fixture
def encoder(tmp_path: Path) -> Path:
    """A seeded, untrained compact encoder saved as pretraining saves one (``{"spec", "state_dict"}``)."""
    torch.manual_seed(0)
    net = Encoder(EncoderSpec(base_width=8))
    path = tmp_path / "encoder.pt"
    torch.save({"spec": net.spec.to_dict(), "state_dict": net.state_dict()}, path)
    return path


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every path under ``root``: its bytes' sha256 (files), mtime and mode."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "",
                                       p.stat().st_mtime_ns, p.stat().st_mode) for p in root.rglob("*")}


def _suggest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: Path, encoder: Path,
             *extra: str) -> int:
    monkeypatch.chdir(tmp_path)  # no artifacts/preprocessed here: the recipe comes from params.yaml
    return main(["data", "suggest-labels", *extra, "--pool", str(pool), "--encoder", str(encoder),
                 "--params", str(PARAMS), "--set", "evaluate.device=cpu"])


def test_suggest_labels_copies_one_typical_image_per_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        pool: Path, encoder: Path) -> None:
    before = _snapshot(pool)
    assert _suggest(tmp_path, monkeypatch, pool, encoder, str(len(SIZES))) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "to_label" / "suggestions.csv")))
    groups = [Path(r["pool_path"]).name.split("_")[0] for r in rows]
    assert sorted(groups) == [str(g) for g in range(len(SIZES))]  # N distinct groups
    assert [int(r["rank"]) for r in rows] == list(range(1, len(SIZES) + 1))
    assert sorted(int(r["cluster_size"]) for r in rows) == sorted(SIZES)
    for r in rows:  # byte-identical copies, named by rank
        copy = tmp_path / "to_label" / r["file"]
        assert r["file"].startswith(f"{r['rank']}_")
        assert copy.read_bytes() == Path(r["pool_path"]).read_bytes()
    assert _snapshot(pool) == before  # the pool is read, never moved or changed
    names = {p.name for p in (tmp_path / "to_label").iterdir()}
    assert names == {r["file"] for r in rows} | {"suggestions.csv", "contact_sheet.png"}
    with Image.open(tmp_path / "to_label" / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 300
    assert f"embedded {sum(SIZES)} images" in out and "left out 2 files" in out
    assert "data/<class>/" in out and "`pretrainflow run`" in out


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_a_missing_encoder_is_one_line_naming_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        pool: Path) -> None:
    missing = tmp_path / "artifacts" / "pretrain" / "encoder.pt"
    assert _suggest(tmp_path, monkeypatch, pool, missing, "3") == 1
    err = _one_line_error(capsys)
    assert str(missing) in err and "pretrainflow run" in err and "pretrainflow stage pretrain" in err
    assert not (tmp_path / "to_label").exists()


def test_a_non_empty_out_folder_is_refused_and_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        pool: Path, encoder: Path) -> None:
    (tmp_path / "to_label").mkdir()
    (tmp_path / "to_label" / "earlier.png").write_bytes(b"mine")
    assert _suggest(tmp_path, monkeypatch, pool, encoder, "3") == 1
    err = _one_line_error(capsys)
    assert "to_label: already exists and is not empty" in err and "--out" in err
    assert [p.name for p in (tmp_path / "to_label").iterdir()] == ["earlier.png"]


def test_an_out_folder_inside_the_pool_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        pool: Path, encoder: Path) -> None:
    before = _snapshot(pool)
    assert _suggest(tmp_path, monkeypatch, pool, encoder, "3", "--out", str(pool / "to_label")) == 1
    assert "inside the pool" in _one_line_error(capsys)
    assert _snapshot(pool) == before


def test_more_suggestions_than_pool_images_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        pool: Path, encoder: Path) -> None:
    assert _suggest(tmp_path, monkeypatch, pool, encoder, "500") == 1
    assert "asked for 500 suggestions" in _one_line_error(capsys)
    assert not (tmp_path / "to_label").exists()


def test_copies_of_labeled_images_are_never_suggested(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        pool: Path, encoder: Path) -> None:
    """An image labelled since the last run (its original still in the pool) and a turned copy
    of a test image: suggested, they would be labelled twice, or leak the test split into
    training. Both are left out and named; the pool is not changed."""
    rng = np.random.default_rng(1)
    for name in ("disc", "checks"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            image = Image.fromarray(_pattern(4 if name == "disc" else 3, rng))
            image.save(tmp_path / "data" / name / f"{i}.png")
    labelled = (tmp_path / "data" / "disc" / "0.png").read_bytes()
    (pool / "a" / "labelled_since.png").write_bytes(labelled)
    Image.open(tmp_path / "data" / "checks" / "1.png").rotate(90).save(pool / "b" / "turned.png")
    before = _snapshot(pool)
    assert _suggest(tmp_path, monkeypatch, pool, encoder, str(sum(SIZES))) == 0
    out = capsys.readouterr().out
    rows = csv.DictReader(open(tmp_path / "to_label" / "suggestions.csv"))
    suggested = {Path(r["pool_path"]).name for r in rows}
    assert "labelled_since.png" not in suggested and "turned.png" not in suggested
    assert len(suggested) == sum(SIZES) and "left out 4 files" in out
    assert "a/labelled_since.png: a copy (exact) of the labeled image disc/0.png" in out
    assert "b/turned.png: a copy (near) of the labeled image checks/1.png" in out
    assert _snapshot(pool) == before
