"""The ``validate`` stage: the Great Expectations gate on the labeled images and the pool, before
anything touches or records the data; with ``ctx.record_data`` the DVC-tracked folders are
recorded with ``dvc add`` only once the gate has opened."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

from flows.stages.artifacts import ArtifactPaths, RunContext
from flows.tracking.dvc import DvcError, record_data_version, tracks
from flows.tracking.runs import lineage_tags, log_dataset, stage_run
from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.errors import DataError

if TYPE_CHECKING:
    from pipeline_tasks.data.validate import ValidationRecord

MANIFEST_CACHE_DIR = Path(".cache")


def manifest_cache(data_dir: str | Path) -> Path:
    """Per data folder, outside it and outside artifacts/ (which DVC clears before a stage)."""
    key = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    return MANIFEST_CACHE_DIR / f"manifest-{key}.csv"


def run_validate(cfg: PipelineConfig, paths: ArtifactPaths, ctx: RunContext) -> ValidationRecord:
    """The gate: symlinks in a DVC-tracked folder are refused (``dvc add`` would replace them
    with copies); the report goes to MLflow whether the gate opens or not."""
    from pipeline_tasks.data.validate import validate_data  # noqa: PLC0415

    pool = cfg.data.unlabeled_dir
    folders = [f for f in (cfg.data.dir, pool) if f]
    with stage_run("validate", ctx, cfg, cfg.section("validate")):
        try:
            record = validate_data(cfg.data.dir, cfg.validate_, paths.validation,
                                   manifest_cache(cfg.data.dir), pool,
                                   manifest_cache(pool) if pool else None,
                                   refuse_links=any(tracks(f) for f in folders))
        finally:
            if (paths.validation / "report.json").exists():
                mlflow.log_artifacts(str(paths.validation), "validation")
        if ctx.record_data:
            _record(folders)
        _log_validation(record, cfg, ctx)
        return record


def _record(folders: list[str]) -> None:
    """``dvc add`` the tracked folders, so the run points at a version ``dvc checkout`` restores."""
    try:
        for folder in folders:
            if tracks(folder):
                record_data_version(folder)
    except DvcError as exc:
        raise DataError(f"{exc}. The data passed the gate but could not be recorded: fix the DVC "
                        "repository (`dvc doctor`) and rerun") from exc


def _log_validation(record: ValidationRecord, cfg: PipelineConfig, ctx: RunContext) -> None:
    """Counts, the data version (read after recording) and the MLflow dataset input."""
    lineage = lineage_tags(cfg.data.dir, cfg.data.unlabeled_dir)
    versions = {k: v for k, v in lineage.items() if k.endswith("_dvc_md5")}
    mlflow.log_metrics({"n_images": record.n_images, "n_classes": record.n_classes,
                        "n_skipped": record.n_skipped, "n_pool": record.n_pool})
    mlflow.set_tags({"data_digest": record.data_digest, "data_images": str(record.n_images), **versions})
    md5 = versions["data_dvc_md5"]
    log_dataset(record.manifest_path, cfg.data.dir, md5 if md5 != "untracked" else record.data_digest[:32],
                ctx.parent_run_id)
    if ctx.parent_run_id:  # the data version on the flow's run too
        client = mlflow.MlflowClient()
        for key, value in {"data_images": str(record.n_images), **versions}.items():
            client.set_tag(ctx.parent_run_id, key, value)
