"""Importers: idx files (raw and gzipped) and class-per-folder trees, on tiny synthetic data."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline_tasks.data.errors import DatasetError
from pipeline_tasks.data.idx import find_idx_pairs, import_idx, read_idx
from pipeline_tasks.data.importers import ImportSummary, import_folder

FASHION = Path("/usr/share/datasets/fashion-mnist")
_CODES = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B,
          np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, _CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def _pair(folder: Path, prefix: str, labels: list[int], seed: int, gz: bool = True) -> tuple[Path, Path]:
    """An idx pair of ``len(labels)`` random 4x5 uint8 images."""
    images = np.random.default_rng(seed).integers(0, 256, size=(len(labels), 4, 5), dtype=np.uint8)
    ext = ".gz" if gz else ""
    return (_write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, gz),
            _write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", np.array(labels, np.uint8), gz))


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (symlinks listed by target, never followed)."""
    out: dict[str, str] = {}
    for dirpath, _, files in os.walk(root, followlinks=False):
        for name in files:
            p = Path(dirpath) / name
            digest = f"-> {os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
            out[p.relative_to(root).as_posix()] = digest
    return dict(sorted(out.items()))


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ read_idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_read_idx_round_trips(tmp_path: Path, gz: bool, dtype: str) -> None:
    array = (np.arange(2 * 3 * 4).reshape(2, 3, 4) - 5).astype(dtype)
    got = read_idx(_write_idx(tmp_path / "x.idx", array, gz))  # no .gz in the name: detected by magic
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope-idx1-ubyte.*not found"):
        read_idx(tmp_path / "nope-idx1-ubyte")


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated(tmp_path: Path, gz: bool) -> None:
    data = _idx_bytes(np.zeros((3, 4, 5), np.uint8))[:-7]
    path = tmp_path / "cut-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetError, match=r"cut-images-idx3-ubyte: truncated: expected 60 bytes, found 53"):
        read_idx(path)


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "h.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 2]))
    with pytest.raises(DatasetError, match=r"h\.idx: truncated: expected 16 header bytes, found 8"):
        read_idx(path)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "bad magic"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "bad magic"),
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 9]), "unknown type code 0x07"),
        (bytes([0, 0, 0x08, 0]), "dimension count is 0"),
        (bytes([0, 0, 0x08, 1, 0, 0, 0, 1, 9, 9]), "trailing data"),
    ],
)
def test_read_idx_garbage(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=rf"garbage\.bin: not an idx file: .*{why}"):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros((50, 4, 5), np.uint8)))[:30])
    with pytest.raises(DatasetError, match=r"bad\.gz: corrupt or truncated gzip"):
        read_idx(path)


# ---------------------------------------------------------------------------------------- import_idx


def test_import_idx_concatenates_pairs_in_order(tmp_path: Path) -> None:
    train = _pair(tmp_path, "train", [0, 1, 1, 2], seed=1)
    test = _pair(tmp_path, "t10k", [2, 0], seed=2, gz=False)
    summary = import_idx([train, test], tmp_path / "out")
    assert summary == ImportSummary({"0": 2, "1": 2, "2": 2}, [], [])
    assert _files(tmp_path / "out") == [
        "0/00000.png", "0/00005.png", "1/00001.png", "1/00002.png", "2/00003.png", "2/00004.png",
    ]
    second = np.asarray(Image.open(tmp_path / "out/2/00004.png"))
    np.testing.assert_array_equal(second, read_idx(test[0])[0])  # index 4 is test's first image


def test_import_idx_class_names_and_limit(tmp_path: Path) -> None:
    pair = _pair(tmp_path, "train", [0, 1, 1, 1, 0, 2], seed=3)
    names = ["T-shirt", "Trouser", "Bag"]
    summary = import_idx([pair], tmp_path / "out", limit_per_class=2, class_names=names)
    assert summary.counts == {"Bag": 1, "T-shirt": 2, "Trouser": 2}
    assert _files(tmp_path / "out") == [
        "Bag/00005.png", "T-shirt/00000.png", "T-shirt/00004.png", "Trouser/00001.png", "Trouser/00002.png",
    ]


def test_import_idx_is_deterministic(tmp_path: Path) -> None:
    pairs = [_pair(tmp_path, "train", [0, 1, 2, 1], seed=4), _pair(tmp_path, "t10k", [1, 0], seed=5)]
    a = import_idx(pairs, tmp_path / "a")
    b = import_idx(pairs, tmp_path / "b")
    assert a == b
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b") and len(_digests(tmp_path / "a")) == 6


def test_import_idx_class_names_must_cover_labels(tmp_path: Path) -> None:
    pair = _pair(tmp_path, "train", [0, 3], seed=6)
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz: label 3 has no class name"):
        import_idx([pair], tmp_path / "out", class_names=["a", "b", "c"])
    with pytest.raises(DatasetError, match="appear twice"):
        import_idx([pair], tmp_path / "out", class_names=["a", "b", "a", "d"])
    with pytest.raises(DatasetError, match="not a usable folder name"):
        import_idx([pair], tmp_path / "out", class_names=["a", "b/c", "d", "e"])
    assert not (tmp_path / "out").exists()


def test_import_idx_rejects_mismatched_pairs(tmp_path: Path) -> None:
    images, labels = _pair(tmp_path, "train", [0, 1, 2], seed=7)
    short = _write_idx(tmp_path / "short-labels-idx1-ubyte", np.array([0, 1], np.uint8))
    both = r"train-images-idx3-ubyte\.gz \+ .*short-labels-idx1-ubyte"
    with pytest.raises(DatasetError, match=rf"{both}: 3 images but 2 labels"):
        import_idx([(images, short)], tmp_path / "out")
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz \+ .*images must be 3-D uint8"):
        import_idx([(labels, images)], tmp_path / "out")  # swapped
    assert not (tmp_path / "out").exists()


def test_import_idx_refuses_non_empty_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        import_idx([_pair(tmp_path, "train", [0], seed=8)], out)


def test_find_idx_pairs_orders_train_first(tmp_path: Path) -> None:
    test = _pair(tmp_path, "t10k", [0], seed=9)
    train = _pair(tmp_path, "train", [0], seed=10, gz=False)
    (tmp_path / "README").write_text("not idx")
    assert find_idx_pairs(tmp_path) == [train, test]


def test_find_idx_pairs_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no \\*-images-idx3-ubyte"):
        find_idx_pairs(tmp_path)
    with pytest.raises(DatasetError, match="idx folder not found"):
        find_idx_pairs(tmp_path / "missing")
    images, labels = _pair(tmp_path, "train", [0], seed=11)
    labels.unlink()
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: no labels file train-labels"):
        find_idx_pairs(tmp_path)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's fashion-mnist data package is not installed")
def test_real_fashion_mnist_test_labels() -> None:
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1_000] * 10
    assert [p[0].name for p in find_idx_pairs(FASHION)] == ["train-images-idx3-ubyte.gz",
                                                             "t10k-images-idx3-ubyte.gz"]


# ------------------------------------------------------------------------------------- import_folder


def _tree(root: Path, outside: Path) -> Path:
    """A source tree with images of several formats, non-images, hidden files and symlinks."""
    src = root / "src"
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    files = {
        "cat/a.png": "PNG", "cat/b.JPG": "JPEG", "cat/deep/er/c.bmp": "BMP", "cat/café 1.png": "PNG",
        "dog/d.gif": "GIF", "dog/e.tiff": "TIFF", "dog/f.webp": "WEBP", "dog/g.jpeg": "JPEG",
    }
    for rel, fmt in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(src / rel, format=fmt)
    (src / "empty").mkdir()
    (src / "cat/notes.txt").write_text("not an image")
    (src / "cat/.hidden.png").write_bytes((src / "cat/a.png").read_bytes())
    (src / ".git").mkdir()
    (src / ".git/x.png").write_bytes(b"hidden dir")
    (src / "stray.png").write_bytes((src / "cat/a.png").read_bytes())  # not inside a class folder
    outside.mkdir()
    (outside / "secret.png").write_bytes((src / "cat/a.png").read_bytes())
    (src / "dog/link.png").symlink_to(outside / "secret.png")
    (src / "dog/linkdir").symlink_to(outside, target_is_directory=True)
    (src / "linkclass").symlink_to(outside, target_is_directory=True)
    return src


def test_import_folder_copies_and_never_touches_the_source(tmp_path: Path) -> None:
    src = _tree(tmp_path, tmp_path / "outside")
    before = _digests(src)
    summary = import_folder(src, tmp_path / "out")
    assert _digests(src) == before
    assert summary.counts == {"cat": 4, "dog": 4, "empty": 0}
    assert summary.skipped == ["cat/notes.txt", "stray.png"]
    assert summary.litter == [".git", "cat/.hidden.png"]  # hidden entries are litter (listing.is_litter)
    assert summary.refused_symlinks == ["dog/link.png", "dog/linkdir", "linkclass"]
    out = tmp_path / "out"
    assert _files(out) == ["cat/a.png", "cat/b.JPG", "cat/café 1.png", "cat/deep/er/c.bmp",
                           "dog/d.gif", "dog/e.tiff", "dog/f.webp", "dog/g.jpeg"]
    assert all(before[rel] == digest for rel, digest in _digests(out).items())
    assert (out / "empty").is_dir() and not any((out / "empty").iterdir())
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "outside", "src"]  # no temp folder left


def test_import_folder_keeps_file_times(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a/x.png").write_bytes(b"\x89PNG not really")
    os.utime(src / "a/x.png", (1_000_000_000, 1_000_000_000))
    import_folder(src, tmp_path / "out")
    assert (tmp_path / "out/a/x.png").stat().st_mtime == 1_000_000_000


def test_import_folder_into_existing_empty_out(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a/x.png").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    assert import_folder(src, tmp_path / "out").counts == {"a": 1}


def test_import_folder_refusals(tmp_path: Path) -> None:
    src = _tree(tmp_path, tmp_path / "outside")
    before = _digests(src)
    out = tmp_path / "out"
    (out / "cats").mkdir(parents=True)
    (out / "cats/mine.png").write_bytes(b"user data")
    with pytest.raises(DatasetError, match="already exists and is not empty; refusing to overwrite"):
        import_folder(src, out)
    assert (out / "cats/mine.png").read_bytes() == b"user data"
    with pytest.raises(DatasetError, match="inside or around the source"):
        import_folder(src, src / "imported")
    with pytest.raises(DatasetError, match="inside or around the source"):
        import_folder(src / "cat", src)
    with pytest.raises(DatasetError, match="output is the source"):
        import_folder(src, src)
    with pytest.raises(DatasetError, match=r"nope: source folder not found"):
        import_folder(tmp_path / "nope", tmp_path / "out2")
    with pytest.raises(DatasetError, match=r"a\.png: source folder is not a folder"):
        import_folder(src / "cat/a.png", tmp_path / "out2")
    with pytest.raises(DatasetError, match="no class folders found"):
        import_folder(src / "cat/deep/er", tmp_path / "out2")
    assert _digests(src) == before
    assert not (src / "imported").exists() and not (tmp_path / "out2").exists()


def test_import_folder_is_atomic_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _tree(tmp_path, tmp_path / "outside")
    calls: list[Path] = []

    def failing_copy(a: Path, b: Path, follow_symlinks: bool = True) -> None:
        calls.append(a)
        if len(calls) == 3:
            raise OSError("disk full")
        b.write_bytes(a.read_bytes())

    monkeypatch.setattr("pipeline_tasks.data.importers.shutil.copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        import_folder(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "src"]


def test_import_idx_rejects_pairs_of_different_sizes(tmp_path: Path) -> None:
    small = _pair(tmp_path, "train", [0, 1], seed=12)
    big = (_write_idx(tmp_path / "big-images-idx3-ubyte", np.zeros((1, 8, 8), np.uint8)),
           _write_idx(tmp_path / "big-labels-idx1-ubyte", np.array([0], np.uint8)))
    with pytest.raises(DatasetError, match=r"big-images-idx3-ubyte: images are \(8, 8\) but .* has \(4, 5\)"):
        import_idx([small, big], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_find_idx_pairs_refuses_raw_and_gz_side_by_side(tmp_path: Path) -> None:
    images, _ = _pair(tmp_path, "train", [0], seed=13)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(gzip.decompress(images.read_bytes()))
    with pytest.raises(DatasetError, match="both exist and hold the same data set; remove one"):
        find_idx_pairs(tmp_path)
