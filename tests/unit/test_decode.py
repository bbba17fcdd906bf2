"""One decode path: every kind of image reaches the training cache and the served model's input
(from a path, from base64 and from an array) as the same pixels, and those are the pixels the
documented rules say (trust issue: 16-bit scans were black as files and grey as arrays)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

from pipeline_tasks.data.cache import decode_into
from pipeline_tasks.data.decode import DecodeError, decode, normalise, prepare_image, to_uint8
from pipeline_tasks.data.inputs import prepare_batch
from pipeline_tasks.data.manifest import describe_file
from pipeline_tasks.data.nearcopy import phash

S = 32  # square and unresized: the cache holds exactly the decoded pixels
CMYK_ICC = Path("/usr/share/color/icc/ghostscript/default_cmyk.icc")  # Debian's libgs-common
YY, XX = np.mgrid[0:S, 0:S]


@dataclass
class Case:
    write: Callable[[Path], None]  # writes the file
    expected: np.ndarray  # uint8 [S, S] or [S, S, 3]
    array: Any = None  # the same picture as a pixel array, where a user would hold one
    suffix: str = ".png"
    mode: str = ""  # the file's Pillow mode, checked: the case really is what its name says


def _gray() -> np.ndarray:
    return ((XX * 7 + YY * 3) % 256).astype(np.uint8)


def _rgb() -> np.ndarray:
    return np.stack([(XX * 8) % 256, (YY * 8) % 256, ((XX + YY) * 4) % 256], -1).astype(np.uint8)


def _save(array: np.ndarray, mode: str | None = None, fmt: str = "PNG", **kw: Any) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        Image.fromarray(array, mode).save(path, fmt, **kw)
    return write


def _levels(max_value: int, dtype: Any) -> np.ndarray:
    return (np.linspace(0, max_value, S * S).reshape(S, S)).round().astype(dtype)


def _scaled(values: np.ndarray, bits: int) -> np.ndarray:
    return (values.astype(np.float64) / (2**bits - 1) * 255).round().astype(np.uint8)


def _high_depth() -> dict[str, Case]:
    full, twelve, dark = _levels(65535, np.uint16), _levels(4095, np.uint16), _levels(1000, np.uint16)
    int32 = _levels(2**31 - 1, np.int32)
    floats = np.linspace(0, 1, S * S, dtype=np.float32).reshape(S, S)
    return {
        "16-bit full range": Case(_save(full), _scaled(full, 16), full, mode="I;16"),
        "16-bit holding 12-bit data": Case(_save(twelve), _scaled(twelve, 16), twelve, mode="I;16"),
        "16-bit dark": Case(_save(dark), _scaled(dark, 16), dark, mode="I;16"),
        "32-bit integer": Case(_save(int32, fmt="TIFF"), _scaled(int32, 31), int32, ".tif", "I"),
        "float32 in [0, 1]": Case(_save(floats, fmt="TIFF"), (floats * 255).round().astype(np.uint8), floats,
                                  ".tif", "F"),
    }


def _cmyk(icc: bool) -> Case:
    cmyk = Image.fromarray(_rgb()).convert("CMYK")
    profile = CMYK_ICC.read_bytes() if icc else None
    if icc:
        expected = ImageCms.profileToProfile(cmyk, ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                             ImageCms.createProfile("sRGB"), outputMode="RGB")
    else:
        expected = cmyk.convert("RGB")

    def write(path: Path) -> None:
        cmyk.save(path, "TIFF", **({"icc_profile": profile} if profile else {}))
    return Case(write, np.asarray(expected), suffix=".tif", mode="CMYK")


# What the camera stored -> what is upright, per EXIF orientation (TIFF/EXIF 2.3, tag 0x0112).
ORIENT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
          5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
          7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}


def _oriented(orientation: int) -> Case:
    stored = _rgb()
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright = np.ascontiguousarray(ORIENT[orientation](stored))
    return Case(_save(stored, exif=exif.tobytes()), upright, upright)


def _transparent() -> dict[str, Case]:
    gray, alpha = _gray(), ((XX * 9) % 256).astype(np.uint8)
    la = np.stack([gray, alpha], -1)
    flat_la = (gray * (alpha / 255) + 255 * (1 - alpha / 255)).round().astype(np.uint8)
    palette = Image.fromarray((XX // 8 + 4 * (YY // 8)).astype(np.uint8), "P")
    palette.putpalette([v for i in range(256) for v in ((i * 40) % 256, (i * 70) % 256, (i * 90) % 256)])
    index = np.asarray(palette)
    colours = np.array(palette.getpalette()[:768], np.uint8).reshape(256, 3)
    flat_p = np.where((index == 5)[..., None], 255, colours[index]).astype(np.uint8)

    def write_p(path: Path) -> None:
        palette.save(path, "PNG", transparency=5)
    return {"LA": Case(_save(la, "LA"), flat_la, la, mode="LA"),
            "P with transparency": Case(write_p, flat_p, mode="P")}


def _gif() -> Case:
    first, second = _gray(), (255 - _gray())

    def write(path: Path) -> None:
        frames = [Image.fromarray(first), Image.fromarray(second)]
        frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return Case(write, first, first, ".gif")


CASES: dict[str, Case] = {
    "8-bit L": Case(_save(_gray()), _gray(), _gray()),
    "8-bit RGB": Case(_save(_rgb()), _rgb(), _rgb()),
    **_high_depth(),
    "CMYK without ICC profile": _cmyk(False),
    **({"CMYK with ICC profile": _cmyk(True)} if CMYK_ICC.is_file() else {}),
    **{f"EXIF orientation {o}": _oriented(o) for o in range(1, 9)},
    **_transparent(),
    "2-frame GIF": _gif(),
}


def _file(case: Case, tmp: Path) -> Path:
    path = tmp / f"image{case.suffix}"
    case.write(path)
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_container_gives_the_expected_pixels(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    path = _file(case, tmp_path)
    if case.mode:
        with Image.open(path) as im:
            assert im.mode == case.mode
    channels = 3 if case.expected.ndim == 3 else 1
    want = case.expected.astype(int) if channels == 3 else case.expected.astype(int)[..., None]
    decode_into(tmp_path / "cache.npy", [path], S, channels, "crop", workers=1)
    inputs = {"training cache": np.load(tmp_path / "cache.npy")[0],
              "served from a path": prepare_batch([str(path)], S, channels, "crop")[0],
              "served from base64": prepare_batch([base64.b64encode(path.read_bytes()).decode()], S, channels,
                                                  "crop")[0]}
    if case.array is not None:
        inputs["served from an array"] = prepare_batch([case.array], S, channels, "crop")[0]
    for where, got in inputs.items():
        diff = np.abs(got.transpose(1, 2, 0).astype(int) - want)
        assert diff.max() <= 1, f"{name}, {where}: off by up to {diff.max()} grey levels"


def test_the_cmyk_profile_is_applied() -> None:
    if not CMYK_ICC.is_file():
        pytest.skip(f"{CMYK_ICC} missing: install Debian's libgs-common (.ci/run does)")
    assert np.abs(CASES["CMYK with ICC profile"].expected.astype(int)
                  - CASES["CMYK without ICC profile"].expected.astype(int)).max() > 10


def test_the_manifest_records_frames_and_hashes_the_first(tmp_path: Path) -> None:
    path = _file(CASES["2-frame GIF"], tmp_path)
    row = describe_file(path, "a/image.gif", "a")
    assert row["frames"] == 2 and row["decodes"] and len(row["phash"]) == 64
    flat = tmp_path / "flat.png"
    Image.new("L", (S, S), 0).save(flat)
    assert describe_file(flat, "a/flat.png", "a")["phash"] == ""  # no information: never groups


def test_heic_is_refused_by_name(tmp_path: Path) -> None:
    heic = tmp_path / "photo.heic"
    heic.write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
    row = describe_file(heic, "a/photo.heic", "a")
    assert not row["decodes"] and row["format"] == "HEIC" and "convert it to JPEG" in row["error"]
    with pytest.raises(DecodeError, match="HEIC is not supported"):
        decode(heic.read_bytes())


def test_bit_depth_rule_on_arrays() -> None:
    assert to_uint8(np.array([0, 4095], np.uint16)).tolist() == [0, 16]  # 16-bit: by 65535
    assert to_uint8(np.array([0, 65535], np.uint16)).tolist() == [0, 255]
    assert to_uint8(np.array([-5, 16384, 32767], np.int16)).tolist() == [0, 128, 255]  # negatives: 0
    assert to_uint8(np.array([-1.0, 2.0])).tolist() == [0, 255]  # floats outside [0, 1]: clipped
    assert to_uint8(np.array([np.nan, 0.5, np.inf])).tolist() == [0, 128, 0]


# ------------------------------------------------------------------------- JPEG draft (issue 15)
def _photo(path: Path, orientation: int) -> None:
    """A 1024x768 photo-like JPEG: smooth texture, noise, sharp shapes, an EXIF orientation."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:768, 0:1024]
    waves = np.stack([128 + 90 * np.sin(xx / (23 + 9 * c)) * np.cos(yy / (31 + 5 * c)) for c in range(3)], -1)
    pixels = (waves + rng.normal(0, 6, waves.shape)).clip(0, 255).astype(np.uint8)
    for _ in range(20):  # edges, where a scaled decode and a full one differ most
        x, y = rng.integers(0, 900), rng.integers(0, 650)
        dx, dy = rng.integers(10, 120, 2)
        pixels[y:y + dy, x:x + dx] = rng.integers(0, 256, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, "JPEG", quality=90, exif=exif.tobytes())


@pytest.mark.parametrize(("size", "resize", "asked", "decoded"), [
    (32, "crop", (32, 32), (128, 96)),     # 1/8: the shorter side 96 >= 32
    (160, "crop", (160, 160), (256, 192)),  # 1/4: the shorter side 192 >= 160 (1/8 would be 96)
    (160, "pad", (160, 120), (256, 192)),   # 1/4: the longer side 256 >= 160
    (300, "pad", (300, 225), (512, 384)),   # 1/2: the longer side 512 >= 300 (1/4 would be 256)
])
def test_a_jpeg_decodes_at_the_dct_scale_its_input_size_needs(
        size: int, resize: str, asked: tuple[int, int], decoded: tuple[int, int],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache's pixels of a drafted decode are those of a full decode and the same resize
    (measured: mean difference 0.3-0.6 grey levels, 99th percentile 2-5, up to 16 at a sharp
    edge; a draft one scale too small, 128x96 for 160 px crop, gives 1.4 and 19), and the draft
    is asked in the stored orientation (EXIF 6: the upright image is 768x1024)."""
    path = tmp_path / "photo.jpg"
    _photo(path, orientation=6)
    drafts: list[tuple[tuple[int, int], tuple[int, int]]] = []
    real_draft = JpegImageFile.draft

    def spy(self: JpegImageFile, mode: str | None, want: tuple[int, int] | None) -> Any:
        found = real_draft(self, mode, want)
        drafts.append((want or (0, 0), self.size))
        return found

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    decode_into(tmp_path / "cache.npy", [path], size, 3, resize, workers=1)
    got = np.load(tmp_path / "cache.npy")[0].astype(int)
    assert drafts == [(asked, decoded)]
    with Image.open(path) as im:
        full = prepare_image(ImageOps.exif_transpose(im).convert("RGB"), size, 3, resize).astype(int)
    diff = np.abs(got - full)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8, (diff.mean(), np.percentile(diff, 99))
    served = prepare_batch([base64.b64encode(path.read_bytes()).decode()], size, 3, resize)[0]
    assert np.array_equal(served, got)  # the served model drafts exactly as training did


def test_the_manifest_hashes_a_jpeg_from_its_draft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate decodes a photo at 1/8 scale, what the 64x64 pHash input needs, and records its
    size from the header; the hash stays within a few bits of a full decode's (16 make a copy)."""
    path = tmp_path / "photo.jpg"
    _photo(path, orientation=6)
    drafted: list[tuple[int, int]] = []
    real_draft = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, mode, want: (
        drafted.append(want), real_draft(self, mode, want))[1])
    row = describe_file(path, "a/photo.jpg", "a")
    assert drafted == [(64, 64)] and (row["width"], row["height"], row["decodes"]) == (1024, 768, True)
    with Image.open(path) as im:
        full = phash(normalise(im))
    assert bin(int(row["phash"], 16) ^ int(full, 16)).count("1") <= 4
