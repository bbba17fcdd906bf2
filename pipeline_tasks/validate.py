"""Validation gate: an image manifest (pandas) checked by a Great Expectations suite.

``build_manifest`` reads every file once (decode + sha256) and never writes to the data
folder. ``validate_manifest`` runs the GX suite and returns a JSON-able report; a failed
report stops the pipeline before anything trains.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from pipeline_tasks.config import ValidateConfig

MANIFEST_COLUMNS = [
    "path", "label", "format", "mode", "width", "height", "bytes", "sha256", "decodes", "error",
]
MAX_OFFENDERS = 10


class DataError(ValueError):
    """The data folder is missing, empty or fails validation; the message says what to do."""


@dataclass(frozen=True)
class ValidationRecord:
    """What the validate stage hands on: small, hashable, paths only."""

    data_dir: str
    manifest_path: str
    report_path: str
    data_digest: str  # sha256 over (path, sha256) of every image: the data version
    n_images: int
    n_classes: int


def _describe_file(path: Path, root: Path, label: str) -> dict[str, Any]:
    raw = path.read_bytes()
    row: dict[str, Any] = {
        "path": path.relative_to(root).as_posix(), "label": label, "format": None, "mode": None,
        "width": 0, "height": 0, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
        "decodes": False, "error": "",
    }
    try:
        with Image.open(path) as im:
            row.update(format=im.format, mode=im.mode, width=im.width, height=im.height)
            im.load()  # decodes the pixels: catches truncated files that open() accepts
        row["decodes"] = True
    except Exception as exc:  # PIL raises many types for bad files; record, don't crash
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def list_images(data_dir: str | Path) -> list[tuple[str, Path]]:
    """``(label, file)`` for every file under ``data_dir/<class>/``; reads no file contents.

    Raises ``DataError`` when the folder is missing or holds no files: the cheap check the
    CLI runs before starting anything.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(
            f"{root}: data folder not found. Create it with `pretrainflow data builtin mnist-5k`, "
            "or pass --data-dir PATH to a folder laid out as <class>/<image>."
        )
    files = [
        (class_dir.name, f)
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for f in sorted(class_dir.rglob("*"))
        if f.is_file() and not f.name.startswith(".")
    ]
    if not files:
        raise DataError(
            f"{root}: no images found (expected <class>/<image> files). Put one folder per class "
            "with images inside, or run `pretrainflow data builtin mnist-5k`."
        )
    return files


def build_manifest(data_dir: str | Path) -> pd.DataFrame:
    """One row per file under ``data_dir/<class>/``; columns ``MANIFEST_COLUMNS``."""
    root = Path(data_dir)
    rows = [_describe_file(f, root, label) for label, f in list_images(root)]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def data_digest(manifest: pd.DataFrame) -> str:
    """A content hash of the data set: changes when any file, name or label changes."""
    h = hashlib.sha256()
    for path, label, sha in manifest[["path", "label", "sha256"]].itertuples(index=False):
        h.update(f"{path}\0{label}\0{sha}\n".encode())
    return h.hexdigest()


# Expectation -> what the user should do about the offending rows.
_HINTS = {
    "decodes": "these files do not decode as images: replace or remove them from the data folder",
    "label": "too few classes: add at least one folder per class, each holding images",
    "class_count": "too few images in these classes: add images or lower validate.min_images_per_class",
}


def _suite(cfg: ValidateConfig) -> list[Any]:
    import great_expectations as gx  # noqa: PLC0415 - GX costs ~3 s to import; only here

    return [
        gx.expectations.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
        gx.expectations.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=cfg.min_classes),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="class_count", min_value=cfg.min_images_per_class
        ),
    ]


def validate_manifest(manifest: pd.DataFrame, cfg: ValidateConfig) -> dict[str, Any]:
    """Run the GX suite on ``manifest``; returns a report dict (``report["success"]``)."""
    import great_expectations as gx  # noqa: PLC0415

    frame = manifest.assign(class_count=manifest.groupby("label")["path"].transform("count"))
    from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: PLC0415

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (
        context.data_sources.add_pandas("manifest")
        .add_dataframe_asset("images")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="image-manifest", expectations=_suite(cfg)))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="image-manifest", data=batch_def, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["path"]},
    )
    checks = [(_expectation(r), r) for r in result.results]
    failures = [_describe_failure(conf, r.result, frame) for conf, r in checks if not r.success]
    counts = manifest["label"].value_counts().sort_index()
    return {
        "success": bool(result.success),
        "n_images": int(len(manifest)),
        "n_classes": int(counts.size),
        "images_per_class": {str(k): int(v) for k, v in counts.items()},
        "modes": {str(k): int(v) for k, v in manifest["mode"].value_counts().items()},
        "sizes": {f"{w}x{h}": int(n) for (w, h), n in manifest.groupby(["width", "height"]).size().items()},
        "expectations": [
            {"expectation": conf.type, "column": conf.kwargs.get("column"), "success": bool(r.success)}
            for conf, r in checks
        ],
        "failures": failures,
    }


def _expectation(res: Any) -> Any:
    conf = res.expectation_config
    if conf is None:  # GX always fills it for suite runs; guard the Optional in its typing
        raise RuntimeError("Great Expectations returned a result without its expectation")
    return conf


def _describe_failure(conf: Any, result: dict[str, Any], frame: pd.DataFrame) -> dict[str, Any]:
    """One failed expectation as the report shows it: what, observed, up to 10 offenders, fix."""
    column = conf.kwargs.get("column")
    rows = frame.set_index("path")
    paths = [r["path"] for r in (result.get("unexpected_index_list") or [])]
    if column == "decodes":
        offenders = [f"{p}: {rows.at[p, 'error']}" for p in paths]
    elif column == "class_count":
        counts = frame.loc[frame["path"].isin(paths)].groupby("label").size()
        offenders = [f"class '{label}': {n} images" for label, n in counts.items()]
    else:
        offenders = [f"{p} ({column}={rows.at[p, column]!r})" for p in paths]
    return {
        "expectation": conf.type, "column": column,
        "kwargs": {k: v for k, v in conf.kwargs.items() if k not in ("column", "batch_id")},
        "observed": result.get("observed_value", result.get("unexpected_count")),
        "offending_files": offenders[:MAX_OFFENDERS], "fix": _HINTS.get(str(column), "see the report"),
    }


def format_failures(report: dict[str, Any], report_path: str | Path) -> str:
    """The message a user sees when the gate closes."""
    lines = [f"data validation failed ({len(report['failures'])} expectation(s)); report: {report_path}"]
    for f in report["failures"]:
        lines.append(f"  - {f['expectation']} on '{f['column']}' {f['kwargs']}: observed {f['observed']}")
        lines += [f"      {o}" for o in f["offending_files"]]
        lines.append(f"      fix: {f['fix']}")
    return "\n".join(lines)


def validate_data(data_dir: str | Path, cfg: ValidateConfig, out_dir: str | Path) -> ValidationRecord:
    """Build the manifest, run the suite, write ``manifest.csv`` and ``report.json``.

    Raises ``DataError`` (after writing the report) when an expectation fails.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(data_dir)
    report = validate_manifest(manifest, cfg)
    manifest_path, report_path = out / "manifest.csv", out / "report.json"
    manifest.to_csv(manifest_path, index=False)
    report_path.write_text(json.dumps(report, indent=2))
    if not report["success"]:
        raise DataError(format_failures(report, report_path))
    return ValidationRecord(
        data_dir=str(Path(data_dir).resolve()), manifest_path=str(manifest_path),
        report_path=str(report_path), data_digest=data_digest(manifest),
        n_images=report["n_images"], n_classes=report["n_classes"],
    )
