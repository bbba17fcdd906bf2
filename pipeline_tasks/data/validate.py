"""Validation gate: the image manifest checked by Great Expectations before anything trains.

Two suites run in one GX checkpoint each: ``image-files`` (one row per file: decodes, format,
size, links, conflicting duplicates) and ``image-classes`` (one row per class folder: count,
imbalance, expected label set). Results go to ``report.json`` and a GX Data Docs site.
The data folder is only ever read.
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
from pipeline_tasks.data.listing import class_folders
from pipeline_tasks.data.manifest import build_manifest, data_digest
from pipeline_tasks.data.nearcopy import groups, label_conflicts, pool_copies

MAX_OFFENDERS = 10
POOL_PREFIX = "unlabeled pool: "  # how skipped pool files are named in the report
FILE_COLUMNS = ("refused_link", "bad_name", "decodes", "format", "width", "height", "label_conflict")

# What to do about the rows each expectation flags, by column.
_FIXES = {
    "refused_link": "replace these links with copies of the files, or remove them (the data folder was "
                    "not modified)",
    "bad_name": "rename these files (or folders) to UTF-8 names, e.g. `convmv -f latin1 -t utf8 -r --notest "
                "DIR`; the data folder was not modified",
    "decodes": "these files are not readable images: replace them or move them out of the data folder",
    "format": "convert these files to an allowed format or extend validate.allowed_formats",
    "width": "these images are too small: remove them or lower validate.min_width",
    "height": "these images are too small: remove them or lower validate.min_height",
    "label_conflict": "the same picture (an exact or near copy: resized, re-encoded, rotated) is filed under "
                      "two classes: keep only the copy in the right class",
    "n_images": "add images to these classes, remove the folders, or lower validate.min_images_per_class",
    "imbalance": "add images to the small classes or raise validate.max_imbalance_ratio",
    "label": "make the class folders match validate.expected_classes (or set it to null)",
    None: "add class folders (one per class, each holding images) or lower validate.min_classes",
}


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


def file_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest as GX sees it: size and format are null for files that do not decode
    (GX skips nulls, so a broken file is reported once, under ``decodes``)."""
    ok = manifest["decodes"].astype(bool)
    refused = manifest["refused_link"].astype(bool) | manifest["bad_name"].astype(bool)
    return manifest.assign(
        decodes=manifest["decodes"].astype(object).where(~refused),  # never read: reported once
        format=manifest["format"].where(ok), width=manifest["width"].where(ok),
        height=manifest["height"].where(ok),
        label_conflict=label_conflicts(manifest) if len(manifest) else False,
    )


def class_table(manifest: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per class folder, empty ones included."""
    counts = manifest.groupby("label").size().reindex(classes, fill_value=0)
    biggest = max(int(counts.max()), 1)
    return pd.DataFrame({"label": classes, "n_images": counts.to_numpy(),
                         "imbalance": biggest / counts.clip(lower=1).to_numpy()})


def _suites(cfg: ValidateConfig) -> dict[str, list[Any]]:
    import great_expectations as gx  # noqa: PLC0415 - GX costs ~3 s to import; only here

    e = gx.expectations
    classes = [
        e.ExpectTableRowCountToBeBetween(min_value=cfg.min_classes),
        e.ExpectColumnValuesToBeBetween(column="n_images", min_value=cfg.min_images_per_class),
        e.ExpectColumnValuesToBeBetween(column="imbalance", max_value=cfg.max_imbalance_ratio),
    ]
    if cfg.expected_classes is not None:
        classes.append(e.ExpectColumnDistinctValuesToEqualSet(
            column="label", value_set=list(cfg.expected_classes)))
    def files() -> list[Any]:  # a fresh list per suite: GX binds expectations to their suite
        return [
            e.ExpectColumnValuesToBeInSet(column="refused_link", value_set=[False]),
            e.ExpectColumnValuesToBeInSet(column="bad_name", value_set=[False]),
            e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
            e.ExpectColumnValuesToBeInSet(column="format", value_set=list(cfg.allowed_formats)),
            e.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_width),
            e.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_height),
        ]

    return {
        "image-files": [*files(), e.ExpectColumnValuesToBeInSet(column="label_conflict", value_set=[False])],
        "image-classes": classes,
        "pool-files": files(),  # the unlabeled pool: same file checks, no labels
    }


def run_suites(tables: dict[str, pd.DataFrame], cfg: ValidateConfig,
               docs_dir: Path | None) -> dict[str, list[Any]]:
    """Run each suite on its table in one ephemeral GX context; Data Docs to ``docs_dir``."""
    import great_expectations as gx  # noqa: PLC0415
    from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: PLC0415
    from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: PLC0415

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions: list[Any] = []
    if docs_dir is not None:
        context.add_data_docs_site(site_name="pretrainflow", site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir.resolve())}})
        actions = [UpdateDataDocsAction(name="data-docs", site_names=["pretrainflow"])]
    source = context.data_sources.add_pandas("manifest")
    results = {}
    suites = _suites(cfg)
    for name in tables:
        expectations = suites[name]
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite))
        index = "label" if name == "image-classes" else "path"
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[definition], actions=actions,
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [index]}))
        run = checkpoint.run(batch_parameters={"dataframe": tables[name]})
        results[name] = [r for v in run.run_results.values() for r in v.results]
    return results


def _describe(res: Any, table: pd.DataFrame) -> dict[str, Any]:
    """One failed expectation as the report shows it: what, observed, up to 10 offenders, fix."""
    conf = res.expectation_config
    column = conf.kwargs.get("column")
    found = res.result.get("unexpected_index_list") or []
    if "label" in table.columns and "n_images" in table.columns:
        counts = table.set_index("label")["n_images"]
        offenders = [f"class '{r['label']}': {counts[r['label']]} images" for r in found]
        if column in (None, "label"):
            offenders = [f"classes found: {sorted(table['label'])}"]
    else:
        rows = table.set_index("path")
        detail = "error" if column in ("decodes", "refused_link", "bad_name") else column
        offenders = [f"{r['path']} ({detail}: {rows.at[r['path'], detail]})" for r in found]
    return {
        "expectation": conf.type, "column": column,
        "kwargs": {k: v for k, v in conf.kwargs.items() if k not in ("column", "batch_id")},
        "observed": res.result.get("observed_value", res.result.get("unexpected_count")),
        "n_offending": len(found), "offending": offenders[:MAX_OFFENDERS], "fix": _FIXES[column],
    }


def bad_files(results: list[Any]) -> dict[str, str]:
    """``{path: failed column}`` for every file a file-level expectation flagged."""
    return {r["path"]: res.expectation_config.kwargs["column"] for res in results if not res.success
            for r in res.result.get("unexpected_index_list") or []}


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
    failures = [{**_describe(r, tables[name]), "suite": name}
                for name, rs in results.items() for r in rs if not r.success]
    report = _report(kept, classes, results, failures, skipped)
    if kept_pool is not None and pool is not None:
        copies = pool_copies(kept_pool, kept)
        kept_pool = kept_pool[~kept_pool["path"].isin(copies["path"])]
        report["pool"] = {"n_images": len(pool), "n_kept": len(kept_pool),
                          "n_skipped": len(pool) - len(kept_pool) - len(copies),
                          "removed_copies": copies.to_dict("records")}
    return report, kept, kept_pool


def _report(kept: pd.DataFrame, classes: list[str], results: dict[str, list[Any]],
            failures: list[dict[str, Any]], skipped: dict[str, str]) -> dict[str, Any]:
    counts = kept.groupby("label").size().reindex(classes, fill_value=0)
    good = kept[kept["decodes"].astype(bool)]
    return {
        "success": not failures,
        "n_images": int(len(kept)), "n_classes": len(classes), "n_skipped": len(skipped),
        "images_per_class": {str(k): int(v) for k, v in counts.items()},
        "formats": {str(k): int(v) for k, v in good["format"].value_counts().items()},
        "modes": {str(k): int(v) for k, v in good["mode"].value_counts().items()},
        "width": _span(good["width"]), "height": _span(good["height"]),
        **copy_summary(good),
        "expectations": [{"suite": name, "expectation": r.expectation_config.type,
                          "column": r.expectation_config.kwargs.get("column"), "success": bool(r.success)}
                         for name, rs in results.items() for r in rs],
        "failures": failures,
        "skipped_files": [{"path": p, "check": c} for p, c in sorted(skipped.items())],
    }


def copy_summary(good: pd.DataFrame) -> dict[str, Any]:
    """Copies among the readable files (by ``data.nearcopy``'s rule), multi-frame files (their
    first frame is used) and images with too little detail to be hashed (never grouped)."""
    group = pd.Series(groups(good), index=good.index) if len(good) else pd.Series(dtype=int)
    sizes = group.value_counts()
    frames = good[good["frames"].astype(int) > 1] if "frames" in good else good.iloc[:0]
    return {"exact_duplicates": int(good["sha256"].duplicated().sum()),
            "copy_groups": int((sizes > 1).sum()), "images_in_copy_groups": int(sizes[sizes > 1].sum()),
            "largest_copy_group": int(sizes.max()) if len(sizes) else 0,
            "unhashed_images": int((good["phash"] == "").sum()),
            "multi_frame_files": {"n": len(frames),
                                  "first_frame_used": sorted(frames["path"])[:MAX_OFFENDERS]}}


def _span(values: pd.Series) -> dict[str, int]:
    return {"min": int(values.min()), "max": int(values.max())} if len(values) else {}


def format_failures(report: dict[str, Any], report_path: str | Path) -> str:
    """The message a user sees when the gate closes."""
    lines = [f"data validation failed: {len(report['failures'])} expectation(s) not met "
             f"(report: {report_path}); the data folder was not modified"]
    for f in report["failures"]:
        on = f"column '{f['column']}'" if f["column"] else "the class table"
        where = " of the unlabeled pool (data.unlabeled_dir)" if f["suite"] == "pool-files" else ""
        lines.append(f"  - {f['expectation']} on {on}{where} {f['kwargs']}: observed {f['observed']}")
        lines += [f"      {o}" for o in f["offending"]]
        if f["n_offending"] > len(f["offending"]):
            lines.append(f"      ... and {f['n_offending'] - len(f['offending'])} more in the report")
        lines.append(f"      fix: {f['fix']}")
    return "\n".join(lines)


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
