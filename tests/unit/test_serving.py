"""The registered model on untrusted input: no file paths unless the operator opts in (and no
file-existence oracle), a pixel limit checked from the header before decoding, an answer for
every row with a one-line reason for a bad one, and `pretrainflow predict` in batches that
predicts the good files of a folder and names the bad ones.

The model is a random-weight classifier: loaded straight from its class, or saved as the
registry logs it (``flows.registry.models.model_parts``) without a tracking store (~10 s saved).
"""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import flows.cli.commands
import flows.registry.predict
from flows.cli.main import main
from flows.registry.models import model_parts, output_schema
from flows.registry.pyfunc_model import ImageModel
from pipeline_tasks.data.cache import save_split
from pipeline_tasks.data.inputs import InputPolicy
from pipeline_tasks.models.classifier import save_classifier
from pipeline_tasks.models.encoders import Classifier, Encoder, EncoderSpec
from tests.conftest import REPO

CLASSES = ("cat", "dog", "owl")
RECIPE = {"image_size": 28, "channels": 1, "resize": "crop"}
HUGE = 13_000  # a side: 169 MP, over the 50 MP default; decoded it would take 169 MB as P, 507 MB as RGB
PROBS = [f"prob_{c}" for c in CLASSES]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "classifier.pt"
    save_classifier(Classifier(Encoder(EncoderSpec(1, 4)), len(CLASSES)).eval(), CLASSES, RECIPE, path)
    return path


def load(classifier: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> ImageModel:
    """The model as ``mlflow models serve`` loads it, in an environment with only ``env`` set."""
    for name in ("PRETRAINFLOW_ALLOW_PATHS", "PRETRAINFLOW_MAX_PIXELS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    model = ImageModel()
    model.load_context(SimpleNamespace(artifacts={"classifier": str(classifier)}))
    return model


def predict(model: ImageModel, cells: list[Any], params: dict[str, Any] | None = None) -> pd.DataFrame:
    return model.predict(None, pd.DataFrame({"image": cells}), params)


def png(size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    """A noisy grey PNG (noise: it does not compress, so a cut-off copy is truncated pixel data)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def palette_png(side: int) -> bytes:
    """A black ``side x side`` 8-bit palette PNG, compressed row block by row block: the file
    is written without ever holding its pixels (a 13,000-pixel side: 0.16 MB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, rows = zlib.compressobj(9), b"\0" * (side + 1) * 1000  # filter byte + one index per pixel
    body = b"".join(z.compress(rows) for _ in range(side // 1000))
    body += z.compress(b"\0" * (side + 1) * (side % 1000)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 3, 0, 0, 0)  # 8-bit, colour type 3: palette
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", bytes(6))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return palette_png(HUGE)


@pytest.fixture(scope="module")
def saved(classifier: Path) -> Path:
    """The classifier saved as the registry logs it (signature, input example, model code)."""
    pre = classifier.parent / "pre"
    pre.mkdir()
    save_split(pre, "test", np.zeros((2, 1, 28, 28), np.uint8), None)  # the logged input example
    mlflow.pyfunc.save_model(str(classifier.parent / "saved"), **model_parts(
        {"classifier": str(classifier)}, output_schema(list(CLASSES)), pre))
    return classifier.parent / "saved"


def _status_mb(key: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
    return int(line.split()[1]) / 1024


def peak_growth(call: Callable[[], Any]) -> tuple[Any, float, float]:
    """``call()``'s result, seconds and peak memory growth in MB: VmHWM (the peak RSS) after it
    minus VmRSS before, the peak first reset to the current RSS (``/proc/self/clear_refs``), so
    an earlier test's peak cannot hide this one's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("the peak RSS cannot be reset here (Linux /proc/self/clear_refs)")
    before, start = _status_mb("VmRSS"), time.perf_counter()
    result = call()
    return result, time.perf_counter() - start, _status_mb("VmHWM") - before


def assert_refused_row(out: pd.DataFrame, i: int) -> str:
    """Row ``i`` is a bad row: neutral predictions and a one-line reason naming it, with no
    stack trace and no path of this machine; returns the reason."""
    row = out.iloc[i]
    assert row["label"] == -1 and row["class_name"] == "" and row["confidence"] == 0.0
    assert (row[PROBS] == 0.0).all()
    error = str(row["error"])
    assert error.startswith(f"row {i}: ") and "\n" not in error and len(error) <= 310
    for leak in ("Traceback", 'File "', str(REPO), "site-packages", str(Path.home())):
        assert leak not in error, error
    return error


# ---- paths ------------------------------------------------------------------------------------

def test_a_server_path_is_refused_the_same_whether_or_not_the_file_exists(
        classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load(classifier, monkeypatch)
    monkeypatch.chdir(tmp_path)
    photo = tmp_path / "photo.png"
    cells: list[Any] = [str(photo), "photo.png", photo, "~/photo.png"]
    missing = predict(model, cells)
    photo.write_bytes(png())
    (tmp_path / "~").mkdir()
    (tmp_path / "~" / "photo.png").write_bytes(png())
    present = predict(model, cells)
    pd.testing.assert_frame_equal(missing, present)  # no oracle: existence changes nothing
    for i in range(len(cells)):
        assert "file paths are refused" in assert_refused_row(present, i)
        assert "photo" not in present["error"][i]  # the cell is not echoed back
    # nothing in a request turns paths on
    asked = predict(model, cells, params={"allow_paths": True, "PRETRAINFLOW_ALLOW_PATHS": "1"})
    pd.testing.assert_frame_equal(asked, present)


def test_paths_are_read_with_the_operators_opt_in(classifier: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(seed=3))
    by_bytes = predict(load(classifier, monkeypatch), [b64(photo.read_bytes())])
    opted = load(classifier, monkeypatch, PRETRAINFLOW_ALLOW_PATHS="1")
    by_path = predict(opted, [str(photo), photo, str(tmp_path / "missing.png")])
    assert list(by_path["error"][:2]) == ["", ""]
    pd.testing.assert_frame_equal(by_path.iloc[:1], by_bytes)
    assert by_path["error"][2].startswith("row 2: ") and by_path["label"][2] == -1  # local use: it may say


def test_the_settings_are_checked_when_the_model_loads(classifier: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert InputPolicy.parse("", "") == InputPolicy(False, 50_000_000)
    assert InputPolicy.parse("yes", "1_000_000") == InputPolicy(True, 1_000_000)
    with pytest.raises(ValueError, match="PRETRAINFLOW_MAX_PIXELS='lots': expected a positive number"):
        load(classifier, monkeypatch, PRETRAINFLOW_MAX_PIXELS="lots")
    with pytest.raises(ValueError, match="PRETRAINFLOW_ALLOW_PATHS='please'"):
        load(classifier, monkeypatch, PRETRAINFLOW_ALLOW_PATHS="please")


# ---- the pixel limit --------------------------------------------------------------------------

def test_an_image_over_the_pixel_limit_is_refused_before_decoding(
        classifier: Path, huge_png: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(huge_png) < 300_000  # 169 MP in a fraction of a MB
    model = load(classifier, monkeypatch)
    cells = [b64(huge_png), b64(png())]
    predict(model, cells[1:])  # first-call costs (torch) out of the measurement
    out, seconds, grew = peak_growth(lambda: predict(model, cells))
    assert assert_refused_row(out, 0) == (
        f"row 0: {HUGE} x {HUGE} pixels is over the limit of 50,000,000 (PRETRAINFLOW_MAX_PIXELS)")
    assert out["error"][1] == "" and out["label"][1] >= 0
    assert grew < 200, f"memory grew by {grew:.0f} MB: the image was decoded"
    assert seconds < 1.5, f"{seconds:.2f} s: the image was decoded"


def test_pixel_arrays_and_pillows_own_limit(classifier: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load(classifier, monkeypatch)
    big = np.zeros((HUGE, HUGE), np.uint8)  # pages never touched: no memory until converted
    out, _, grew = peak_growth(lambda: predict(model, [big, np.zeros((28, 28, 3))]))
    assert "13000 x 13000 pixels is over the limit" in assert_refused_row(out, 0) and out["error"][1] == ""
    assert grew < 100
    small = load(classifier, monkeypatch, PRETRAINFLOW_MAX_PIXELS="1000")
    out = predict(small, [b64(png((40, 30))), np.zeros((30, 30))])
    assert assert_refused_row(out, 0) == (
        "row 0: 40 x 30 pixels is over the limit of 1,000 (PRETRAINFLOW_MAX_PIXELS)")
    assert out["error"][1] == ""
    # Pillow's decompression-bomb error (over twice Image.MAX_IMAGE_PIXELS) is a refused row too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    out = predict(load(classifier, monkeypatch, PRETRAINFLOW_MAX_PIXELS="10_000_000"), [b64(png((40, 30)))])
    assert "over Pillow's decompression-bomb limit" in assert_refused_row(out, 0)


# ---- per-row errors ---------------------------------------------------------------------------

def test_a_bad_row_is_one_line_and_the_good_rows_are_predicted(
        classifier: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load(classifier, monkeypatch)
    good = [b64(png(seed=1)), np.full((28, 28), 200, np.uint8), png((50, 50), seed=2)]
    truncated = png((64, 64), seed=4)[:600]  # a PNG header, then pixel data cut off
    cells = [good[0], b64(b"hello, not an image"), good[1], b64(truncated), None, good[2], [[1, 2], [3]],
             "not base64 !"]
    out = predict(model, cells)
    alone = predict(model, good)
    kept = out.iloc[[0, 2, 5]].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, alone)  # the bad rows changed nothing for the good ones
    assert (alone["error"] == "").all() and (alone["label"] >= 0).all()
    reasons = {i: assert_refused_row(out, i) for i in (1, 3, 4, 6, 7)}
    assert reasons[1].startswith("row 1: base64 text is not an image (")
    assert reasons[3].startswith("row 3: base64 text: its pixels do not decode (")
    assert reasons[4].startswith("row 4: a cell of type NoneType: expected base64 text")
    assert reasons[7].startswith("row 7: text that is not base64")


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_the_rest_server_answers_every_row(saved: Path, classifier: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own scoring app (what `mlflow models serve` runs), in process, on the model as
    the registry logs it: 200 with a row per input row, where a raised exception would be a 400
    carrying a stack trace."""
    from mlflow.pyfunc import scoring_server
    from starlette.testclient import TestClient

    for name in ("PRETRAINFLOW_ALLOW_PATHS", "PRETRAINFLOW_MAX_PIXELS"):
        monkeypatch.delenv(name, raising=False)
    model = mlflow.pyfunc.load_model(str(saved))
    assert model.metadata.get_output_schema().input_names() == [
        "label", "class_name", "confidence", *PROBS, "error"]
    rows = [[b64(png())], [b64(b"not an image")], [str(classifier)], [np.zeros((4, 4)).tolist()]]
    response = TestClient(scoring_server.init(model)).post(
        "/invocations", json={"dataframe_split": {"columns": ["image"], "data": rows}})
    assert response.status_code == 200, response.text[:500]
    assert "Traceback" not in response.text and "stack_trace" not in response.text
    served = pd.DataFrame(response.json()["predictions"])
    assert served["error"][0] == "" and served["error"][3] == ""
    assert served["error"][1].startswith("row 1: base64 text is not an image")
    assert "file paths are refused" in assert_refused_row(served, 2)


# ---- pretrainflow predict ---------------------------------------------------------------------

def test_predict_streams_a_folder_and_names_the_bad_files(
        saved: Path, huge_png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Five good files, a text file and a 13k x 13k PNG, 3 files a batch: every good file is
    predicted, each bad one named on stderr and in the CSV, exit status 1."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for i in range(5):
        (folder / ("more" if i % 2 else ".") / f"good{i}.png").write_bytes(png(seed=i))
    (folder / "broken.png").write_text("not an image")
    (folder / "huge.png").write_bytes(huge_png)
    # a model saved on disk needs no tracking store (creating an sqlite one costs ~10 s)
    monkeypatch.setattr(flows.cli.commands, "setup_tracking", lambda experiment: "0")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as setup_tracking sets it
    for name in ("PRETRAINFLOW_ALLOW_PATHS", "PRETRAINFLOW_MAX_PIXELS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(flows.registry.predict, "BATCH", 3)
    sizes: list[int] = []
    read = flows.registry.predict._read
    monkeypatch.setattr(flows.registry.predict, "_read",
                        lambda files: (sizes.append(len(files)), read(files))[1])
    out = tmp_path / "preds.csv"
    code = main(["predict", str(folder), "--model-uri", str(saved), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and sizes == [3, 3, 1] and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"{folder / 'broken.png'}: the file is not an image")
    assert lines[1] == f"{folder / 'huge.png'}: {HUGE} x {HUGE} pixels is over the limit of 50,000,000 " \
                       "(PRETRAINFLOW_MAX_PIXELS)"
    assert len(lines) == 3
    assert lines[2].startswith("pretrainflow predict: error: 2 of 7 files could not be predicted")
    preds = pd.read_csv(out, keep_default_na=False)
    assert list(preds.columns) == ["path", "label", "class_name", "confidence", *PROBS, "error"]
    good = preds[preds["path"].str.contains("good")]
    assert len(good) == 5 and (good["error"] == "").all() and good["class_name"].isin(CLASSES).all()
    bad = sorted(preds.loc[preds["error"] != "", "path"])
    assert bad == [str(folder / "broken.png"), str(folder / "huge.png")]


def test_predict_with_a_model_that_raises_for_a_bad_row(tmp_path: Path) -> None:
    """A model registered before per-row errors fails the whole batch on one bad file; the
    batch is then predicted file by file, so the good files are still predicted."""
    class Old:
        metadata = None

        def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
            if any(cell == b"bad" for cell in frame["image"]):
                raise ValueError("image 1: does not decode as an image\nTraceback ...")
            return pd.DataFrame({"label": [len(cell) for cell in frame["image"]]})

    files = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    for f, data in zip(files, (b"good", b"bad", b"fine!"), strict=True):
        f.write_bytes(data)
    out = flows.registry.predict.predict_files(Old(), files)
    assert list(out["path"]) == [str(f) for f in files] and list(out["label"][[0, 2]]) == [4, 5]
    assert list(out["error"]) == ["", "image 1: does not decode as an image", ""]
