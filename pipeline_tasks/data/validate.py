"""The validation gate: the image manifests checked by Great Expectations (``data.expectations``)
before anything trains; the verdict and its reasons go to ``report.json`` (``data.report``) and
a GX Data Docs site. The data folder is only ever read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline_tasks.config import ValidateConfig
from pipeline_tasks.data.errors import DataError
from pipeline_tasks.data.expectations import bad_files, class_table, file_table, run_suites
from pipeline_tasks.data.listing import class_folders, find_litter
from pipeline_tasks.data.manifest import build_manifest, data_digest
from pipeline_tasks.data.nearcopy import pool_copies
from pipeline_tasks.data.report import MAX_OFFENDERS, build_report, describe_failure, format_failures

POOL_PREFIX = "unlabeled pool: "  # how skipped pool files are named in the report


@dataclass(frozen=True)
class ValidationRecord:
    """What the validate stage hands on: small, hashable, paths only."""

    data_dir: str
    manifest_path: str
    report_path: str
    data_digest: str  # sha256 over (path, label, sha256) of every kept image: the data version
    n_images: int
    n_classes: int
    n_skipped: int
    pool_manifest_path: str | None = None  # kept pool images, copies of labeled images removed
    n_pool: int = 0


def validate_manifest(manifest: pd.DataFrame, classes: list[str], cfg: ValidateConfig,
                      docs_dir: Path | None = None, pool: pd.DataFrame | None = None,
                      ) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame | None]:
    """Run the suites (``pool-files`` too when an unlabeled ``pool`` manifest is given); with
    ``on_error=skip_bad_files`` drop flagged files and run again. Pool images that are exact or
    near copies of a labeled image are then removed from the pool, so no evaluated image is
    ever seen in pretraining.

    Returns ``(report, kept manifest, kept pool)``; ``report["success"]`` says whether the gate
    opens.
    """
    skipped: dict[str, str] = {}
    kept, kept_pool = manifest, pool
    while True:
        tables = {"image-files": file_table(kept), "image-classes": class_table(kept, classes)}
        if kept_pool is not None:
            tables["pool-files"] = file_table(kept_pool)
        results = run_suites(tables, cfg, docs_dir)
        bad = bad_files(results["image-files"])
        bad_pool = bad_files(results.get("pool-files", []))
        if cfg.on_error == "fail" or not (bad or bad_pool):
            break
        skipped.update(bad)  # second pass on the good files only: class counts change too
        skipped.update({f"{POOL_PREFIX}{p}": c for p, c in bad_pool.items()})
        kept = kept[~kept["path"].isin(bad)]
        kept_pool = None if kept_pool is None else kept_pool[~kept_pool["path"].isin(bad_pool)]
    failures = [{**describe_failure(r, tables[name]), "suite": name}
                for name, rs in results.items() for r in rs if not r.success]
    report = build_report(kept, classes, results, failures, skipped)
    if kept_pool is not None and pool is not None:
        kept_pool = _without_copies(report, pool, kept_pool, kept)
    return report, kept, kept_pool


def _without_copies(report: dict[str, Any], pool: pd.DataFrame, kept_pool: pd.DataFrame,
                    labeled: pd.DataFrame) -> pd.DataFrame:
    """The pool minus copies of labeled images, said in ``report["pool"]``. A pool the user set
    of which nothing remains closes the gate: pretraining would silently use no pool at all."""
    copies = pool_copies(kept_pool, labeled)
    kept_pool = kept_pool[~kept_pool["path"].isin(copies["path"])]
    report["pool"] = {"n_images": len(pool), "n_kept": len(kept_pool),
                      "n_skipped": len(pool) - len(kept_pool) - len(copies),
                      "removed_copies": copies.to_dict("records")}
    if kept_pool.empty:
        report["failures"].append({
            "suite": "pool-files", "expectation": "pool_keeps_images", "column": None, "kwargs": {},
            "observed": f"0 of {len(pool)} images kept ({len(copies)} copies of labeled images, "
                        f"{report['pool']['n_skipped']} skipped as bad files)",
            "n_offending": 0, "offending": [],
            "fix": "add images that are not copies of the labeled ones to the unlabeled pool "
                   "(data.unlabeled_dir), or set data.unlabeled_dir: null to pretrain without one"})
        report["success"] = False
    return kept_pool


def validate_data(data_dir: str | Path, cfg: ValidateConfig, out_dir: str | Path,
                  cache_file: str | Path | None = None, pool_dir: str | Path | None = None,
                  pool_cache_file: str | Path | None = None, refuse_links: bool = False) -> ValidationRecord:
    """Build the manifests, run the gate, write ``report.json`` and ``data_docs/`` and, when the
    gate opens, ``manifest.csv`` (kept files) and ``pool_manifest.csv`` (with ``pool_dir``).
    Raises ``DataError`` (after writing the report) when the gate closes. Stale outputs of an
    earlier run are removed first, so what is on disk is always this run's. ``refuse_links``:
    every symlink fails the gate (a DVC-tracked folder: ``dvc add`` would replace it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path, pool_path = out / "manifest.csv", out / "pool_manifest.csv"
    report_path = out / "report.json"
    for stale in (manifest_path, pool_path, report_path):
        stale.unlink(missing_ok=True)
    manifest = build_manifest(data_dir, cache_file, refuse_links=refuse_links)
    pool = (build_manifest(pool_dir, pool_cache_file, pool=True, refuse_links=refuse_links)
            if pool_dir is not None else None)
    classes = class_folders(Path(data_dir))
    report, kept, kept_pool = validate_manifest(manifest, classes, cfg, out / "data_docs", pool)
    digest = data_digest(kept)
    if kept_pool is not None:
        report["pool"]["dir"] = str(Path(str(pool_dir)).resolve())
        digest = hashlib.sha256(f"{digest}\0pool\0{data_digest(kept_pool)}".encode()).hexdigest()
    pool_litter = find_litter(pool_dir) if pool_dir else []
    litter = find_litter(data_dir) + [f"{POOL_PREFIX}{p}" for p in pool_litter]
    report["ignored_litter"] = {"n": len(litter), "paths": litter[:MAX_OFFENDERS]}
    report["data_digest"] = digest
    report_path.write_text(json.dumps(report, indent=2, default=str))
    if not report["success"]:
        raise DataError(format_failures(report, report_path))
    kept.drop(columns=["stat_key"]).to_csv(manifest_path, index=False)
    if kept_pool is not None:
        kept_pool.drop(columns=["stat_key"]).to_csv(pool_path, index=False)
    return ValidationRecord(
        data_dir=str(Path(data_dir).resolve()), manifest_path=str(manifest_path),
        report_path=str(report_path), data_digest=digest, n_images=report["n_images"],
        n_classes=report["n_classes"], n_skipped=report["n_skipped"],
        pool_manifest_path=str(pool_path) if kept_pool is not None else None,
        n_pool=0 if kept_pool is None else len(kept_pool),
    )
