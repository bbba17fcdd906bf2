"""Every bad input a user can bring: exit 1, a message naming the file and the check, and the
data folder byte-identical afterwards. Runs the real gate through `pretrainflow stage validate`."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.cli.main import main
from tests.conftest import PARAMS


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file (links by their target path: never followed), and every folder."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        key = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[key] = "link:" + os.readlink(p)
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[key] = "dir"
    return out


def _first(d: Path, label: str) -> Path:
    return sorted((d / label).iterdir())[0]


def truncated_png(d: Path) -> tuple[str, str]:
    f = _first(d, "3")
    f.write_bytes(f.read_bytes()[:60])
    return f"3/{f.name}", "decodes"


def text_named_jpg(d: Path) -> tuple[str, str]:
    (d / "4" / "notes.jpg").write_text("these are my notes, not an image\n")
    return "4/notes.jpg", "decodes"


def zero_byte_file(d: Path) -> tuple[str, str]:
    (d / "5" / "empty.png").write_bytes(b"")
    return "5/empty.png", "decodes"


def empty_class_folder(d: Path) -> tuple[str, str]:
    (d / "10").mkdir()
    return "class '10': 0 images", "n_images"


def only_one_class(d: Path) -> tuple[str, str]:
    for sub in d.iterdir():
        if sub.name != "0":
            shutil.rmtree(sub)
    return "classes found: ['0']", "expect_table_row_count_to_be_between"


def too_small(d: Path) -> tuple[str, str]:
    Image.new("L", (4, 30)).save(d / "6" / "tiny.png")
    return "6/tiny.png", "width"


def same_image_two_labels(d: Path) -> tuple[str, str]:
    f = _first(d, "7")
    shutil.copy(f, d / "1" / "copy.png")
    return "1/copy.png", "label_conflict"


def refused_link(d: Path) -> tuple[str, str]:
    secret = d.parent / "outside.png"
    Image.new("L", (28, 28)).save(secret)
    (d / "8" / "link.png").symlink_to(secret)
    return "8/link.png", "refused_link"


def non_utf8_name(d: Path) -> tuple[str, str]:
    """A Latin-1 name, as archives from other systems bring them: a good image, a bad name."""
    with open(os.fsencode(d / "2") + b"/caf\xe9.png", "wb") as f:
        f.write(_first(d, "2").read_bytes())
    return "2/caf\\xe9.png", "bad_name"


def missing_folder(d: Path) -> tuple[str, str]:
    shutil.rmtree(d)
    return str(d), "data folder not found"


def empty_folder(d: Path) -> tuple[str, str]:
    shutil.rmtree(d)
    d.mkdir()
    return str(d), "no images found"


CASES: list[Callable[[Path], tuple[str, str]]] = [
    truncated_png, text_named_jpg, zero_byte_file, empty_class_folder, only_one_class, too_small,
    same_image_two_labels, refused_link, non_utf8_name, missing_folder, empty_folder,
]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


@pytest.mark.parametrize("make_bad", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_refused_and_untouched(make_bad: Callable[[Path], tuple[str, str]], project: Path,
                                            tiny_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(shutil.copytree(tiny_data, project / "data", symlinks=True))
    named, check = make_bad(data)
    before = _snapshot(data)
    code = main(["stage", "validate", "--params", str(PARAMS), "--set", f"data.dir={data}",
                 "--set", "validate.min_images_per_class=5"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert named in err and check in err and "Traceback" not in err
    assert _snapshot(data) == before


def test_skip_bad_files_goes_on_and_lists_them(project: Path, tiny_data: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(shutil.copytree(tiny_data, project / "data"))
    text_named_jpg(data)
    before = _snapshot(data)
    code = main(["stage", "validate", "--params", str(PARAMS), "--set", f"data.dir={data}",
                 "--set", "validate.min_images_per_class=5", "--set", "validate.on_error=skip_bad_files"])
    assert code == 0, capsys.readouterr().err
    report = (project / "artifacts" / "validation" / "report.json").read_text()
    assert '"path": "4/notes.jpg"' in report and '"n_skipped": 1' in report
    manifest = (project / "artifacts" / "validation" / "manifest.csv").read_text()
    assert "notes.jpg" not in manifest
    assert _snapshot(data) == before  # left out, never deleted


def _mixed_folder(root: Path) -> Path:
    """Every mode and format a user brings: L, RGBA, P+transparency, CMYK JPEG, 16-bit PNG,
    8 px to 2,000 px, an EXIF-rotated JPEG, names with spaces and non-ASCII characters."""
    rng = np.random.default_rng(0)
    for c, label in enumerate(["chats noirs", "hunde", "ptáci"]):
        (root / label).mkdir(parents=True)
        for i in range(6):
            size = [8, 33, 64, 300, 2000, 17][i]
            rgb = Image.fromarray(rng.integers(0, 255, (size, max(8, size // 2), 3), dtype=np.uint8))
            name = root / label / f"é {c}-{i}"
            if i == 0:
                rgb.convert("L").save(f"{name}.png")
            elif i == 1:
                rgb.convert("RGBA").save(f"{name}.webp")
            elif i == 2:
                p = rgb.convert("P")
                p.info["transparency"] = 0
                p.save(f"{name}.gif", transparency=0)
            elif i == 3:
                rgb.convert("CMYK").save(f"{name}.jpg")
            elif i == 4:
                Image.fromarray((rng.random((size, size)) * 65535).astype(np.uint16)).save(f"{name}.png")
            else:
                exif = Image.Exif()
                exif[0x0112] = 6  # orientation: rotate 90 on display
                rgb.save(f"{name} rotated.jpg", exif=exif.tobytes())
    return root


def test_mixed_modes_sizes_and_names_validate_and_train(tmp_path: Path) -> None:
    from pipeline_tasks.config import load_config
    from pipeline_tasks.data.cache import load_split
    from pipeline_tasks.data.preprocess import preprocess_data
    from pipeline_tasks.data.validate import validate_data
    from pipeline_tasks.finetune.train import finetune_classifier
    from pipeline_tasks.ssl.trainer import pretrain_encoder

    data = _mixed_folder(tmp_path / "data")
    before = _snapshot(data)
    cfg = load_config(PARAMS, [f"data.dir={data}", "data.channels=3", "data.image_size=32",
                               "validate.min_images_per_class=6", "pretrain.epochs=1",
                               "pretrain.batch_size=8", "pretrain.base_width=4", "finetune.epochs=1",
                               "finetune.label_fraction=1.0"])
    rec = validate_data(data, cfg.validate_, tmp_path / "v")
    assert rec.n_images == 18 and rec.n_classes == 3
    pre = preprocess_data(rec.manifest_path, data, cfg.data, cfg.preprocess, tmp_path / "pre")
    x, _ = load_split(pre.out_dir, "train")
    assert tuple(x.shape[1:]) == (3, 32, 32)
    enc = pretrain_encoder(pre.out_dir, cfg.pretrain, tmp_path / "pt")
    finetune_classifier(pre.out_dir, enc.encoder_path, pre.classes, cfg.finetune, tmp_path / "ft")
    assert _snapshot(data) == before
