"""One fixed pixel scale per bit depth (``data.pixels``): a brighter picture never comes out
darker, and a file, its bytes and its array give the model the same pixels (trust issue: each
16-bit image was scaled by its own maximum, so a dim scan came out brighter than a bright one)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline_tasks.data.decode import DecodeError, decode, load_image

YY, XX = np.mgrid[0:32, 0:32]


def _dim_scan() -> np.ndarray:
    """A dim 16-bit picture: a smooth ramp from 100 to 3,000 (12 bits would hold it)."""
    return (100 + (XX * 3 + YY) / (31 * 4) * 2900).round().astype(np.uint16)


def _pixels(source: object) -> np.ndarray:
    return np.asarray(decode(source), dtype=np.uint8)


def test_a_brighter_16bit_image_never_comes_out_darker(tmp_path: Path) -> None:
    dim = _dim_scan()
    bright = dim + 2000  # brighter at every pixel; its maximum needs 13 bits, the dim one's 12
    for name, picture in (("dim", dim), ("bright", bright)):
        Image.fromarray(picture).save(tmp_path / f"{name}.png")
    files = [tmp_path / "dim.png", tmp_path / "bright.png"]
    for got_dim, got_bright in ((_pixels(files[0]), _pixels(files[1])), (_pixels(dim), _pixels(bright)),
                                (load_image(files[0], 32, 1), load_image(files[1], 32, 1))):
        assert (got_bright.astype(int) >= got_dim.astype(int)).all()
        assert got_bright.mean() > got_dim.mean()


@pytest.mark.parametrize(("suffix", "mode"), [(".png", "I;16"), (".tif", "I;16"), (".pgm", "I")])
def test_a_16bit_picture_gives_the_same_pixels_as_file_bytes_and_array(
        suffix: str, mode: str, tmp_path: Path) -> None:
    """Pillow opens a 16-bit PGM as int32 (mode I): still 16-bit, divided by 65535."""
    scan = _dim_scan()
    path = tmp_path / f"scan{suffix}"
    Image.fromarray(scan).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
    want = (scan / 65535 * 255).round().astype(np.uint8)
    raw = path.read_bytes()
    for where, source in (("file", path), ("bytes", raw), ("base64", base64.b64encode(raw).decode()),
                          ("array", scan)):
        assert np.array_equal(_pixels(source), want), where


def test_a_float_image_is_read_as_0_to_1_and_clipped() -> None:
    """A float picture in [0, 1] with the slight overshoot a resize leaves (-0.01, 1.02) gives
    its uint8 version, not a contrast stretch of its own minimum and maximum."""
    floats = ((XX + YY) / 62).astype(np.float32)
    floats[0, 0], floats[-1, -1] = -0.01, 1.02
    as_uint8 = (floats.clip(0, 1) * 255).round().astype(np.uint8)
    assert np.array_equal(_pixels(floats), _pixels(as_uint8))


def test_a_json_list_is_8bit_and_larger_numbers_are_refused() -> None:
    gray = ((XX * 7 + YY) % 256).astype(np.uint8)
    assert np.array_equal(_pixels(gray.tolist()), gray)
    with pytest.raises(DecodeError, match="lists are read as 8-bit values"):
        decode((gray.astype(np.int64) * 200).tolist())
