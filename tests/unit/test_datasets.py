import hashlib
from pathlib import Path

import pytest

from pipeline_tasks.data.datasets import load_mnist_5k, write_builtin
from pipeline_tasks.data.errors import DatasetError


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_mnist_5k_is_the_real_balanced_sample() -> None:
    images, labels = load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype.name == "uint8"
    assert sorted(set(labels.tolist())) == list(range(10))
    assert (labels == 3).sum() == 500
    assert 30 < images.mean() < 37  # MNIST's mean pixel is 0.1307 * 255 = 33.3


def test_builtin_is_deterministic(tmp_path: Path) -> None:
    a = write_builtin("mnist-5k", tmp_path / "a", limit_per_class=3)
    b = write_builtin("mnist-5k", tmp_path / "b", limit_per_class=3)
    assert a == b == {str(c): 3 for c in range(10)}
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert len(_digests(tmp_path / "a")) == 30


def test_builtin_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "data"
    (out / "cats").mkdir(parents=True)
    (out / "cats" / "mine.png").write_bytes(b"user data")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        write_builtin("mnist-5k", out, limit_per_class=1)
    assert (out / "cats" / "mine.png").read_bytes() == b"user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp folder left


def test_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown built-in dataset 'cifar'"):
        write_builtin("cifar", tmp_path / "x")
