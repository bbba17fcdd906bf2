"""``pretrainflow predict``: a registered model over image files, ``BATCH`` files at a time.

The model gets each file's bytes, never its path (a served model refuses paths unless its
operator opts in), and a batch is read only when the one before it is written: memory holds
one batch, whatever the size of the folder. Every good file is predicted; a bad one (not an
image, over the pixel limit, unreadable) is a row whose ``error`` says why, and one line on
stderr. A model registered before per-row errors raises for a whole batch instead; that batch
is then predicted file by file, so its good files are still predicted.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

BATCH = 256  # files read and predicted together


@dataclass
class PredictCounts:
    rows: int = 0
    bad: int = 0


def _batches(files: list[Path]) -> Iterator[list[Path]]:
    for start in range(0, len(files), BATCH):
        yield files[start:start + BATCH]


def _read(files: list[Path]) -> tuple[list[bytes], dict[int, str]]:
    """The files' bytes (``b""`` for one that cannot be read) and, by position, why not."""
    cells, unreadable = [], {}
    for i, f in enumerate(files):
        try:
            cells.append(f.read_bytes())
        except OSError as exc:
            cells.append(b"")
            unreadable[i] = f"cannot be read ({exc.strerror or type(exc).__name__})"
    return cells, unreadable


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _one_by_one(model: Any, cells: list[bytes]) -> pd.DataFrame:
    """Rows for ``cells`` from a model that raises for a bad row: each predicted alone."""
    frames = []
    for i, cell in enumerate(cells):
        try:
            frame = model.predict(pd.DataFrame({"image": [cell]})).assign(error="")
        except Exception as exc:  # whatever the old model raised: it names this file only
            frame = pd.DataFrame({"error": [f"row {i}: {_one_line(exc)}"]})
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def predict_files(model: Any, files: list[Path]) -> pd.DataFrame:
    """One batch: ``path``, the model's columns and ``error`` (the reason without the model's
    ``row I:`` prefix, ``""`` for a good file), one row per file in order."""
    cells, unreadable = _read(files)
    try:
        frame = model.predict(pd.DataFrame({"image": cells}))
    except Exception:  # a model without per-row errors failed the whole batch
        frame = _one_by_one(model, cells)
    frame = frame.reset_index(drop=True)
    errors = list(frame["error"]) if "error" in frame.columns else [""] * len(files)
    for i, text in enumerate(errors):
        prefix = f"row {i}: "
        errors[i] = unreadable.get(i) or (text[len(prefix):] if str(text).startswith(prefix) else text)
    frame["error"] = ["" if pd.isna(e) else str(e) for e in errors]
    frame.insert(0, "path", [str(f) for f in files])
    return frame


def _columns(model: Any, first: pd.DataFrame) -> list[str]:
    """``path``, the model's output columns (its signature's, else the first batch's), ``error``."""
    schema = model.metadata.get_output_schema() if getattr(model, "metadata", None) else None
    names = schema.input_names() if schema is not None else list(first.columns)
    return ["path", *[str(c) for c in names if c not in ("path", "error")], "error"]


def predict_to_csv(model: Any, files: list[Path], out: TextIO, err: TextIO | None = None) -> PredictCounts:
    """Predict ``files`` batch by batch into CSV ``out`` (one header); each bad file is one
    line ``PATH: reason`` on ``err`` (stderr by default)."""
    counts, columns, err = PredictCounts(), None, err or sys.stderr
    for batch in _batches(files):
        frame = predict_files(model, batch)
        columns = columns or _columns(model, frame)
        frame.reindex(columns=columns).to_csv(out, index=False, header=counts.rows == 0)
        for path, reason in zip(frame["path"], frame["error"], strict=True):
            if reason:
                print(f"{path}: {reason}", file=err)
                counts.bad += 1
        counts.rows += len(frame)
    return counts
